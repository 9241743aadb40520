"""The dual-homed lab's plan, pure: the ``tor`` topology (AS per node, eBGP,
the fabric carries pod routes) with two ToRs per rack and two uplinks per
node, BFD on every session between a node and a ToR.

Picture (one node of rack 1; every node of every rack alike)::

                     +-------------------------------+
                     | router (spine) AS 65000, BIRD |
                     +-------------------------------+
          198.51.100.0/30 |                   | 198.51.100.16/30
          +---------------+----+        +-----+--------------+
          | r1-tor-a  AS 65001 |        | r1-tor-b  AS 65011 |
          | BIRD  192.0.2.1    |        | FRR   192.0.2.2    |
          +---------+----------+        +----------+---------+
            p-r1-n1 |                              | p-r1-n1
                    | eth0                    eth1 |
                    +----------- r1-n1 ------------+
                    192.0.2.10/32 on both uplinks, AS 64600

- Every uplink is its own point-to-point link, no shared segment: the node
  keeps one address (its ``ipv4``, ``192.0.2.10``) on both uplinks as a
  /32 with the ToR's address as peer, and each ToR has its one address on
  every node port (``192.0.2.1 peer 192.0.2.10``), as unnumbered fabrics
  do. So each ToR sees the node's address directly connected (single-hop
  eBGP and BFD), the node's sessions all leave from its one address, and
  a blackholed or dead uplink takes exactly one path away.
- Both ToRs send each node every other block with themselves as next hop,
  AS paths of equal length: the node installs them as one ECMP route over
  both uplinks. Cross-rack traffic goes node -> either ToR -> spine ->
  either ToR of the other rack -> node.
- BFD (``BFD_PROFILE``, ``BFD_MS`` x ``BFD_MULTIPLIER``) on both ends of
  every node session: the node's BGPPeers name the BFDProfile, BIRD runs
  its ``bfd`` protocol, FRR its bfdd with the same timers. The spine
  sessions have none (they are not what the lab's failures cut).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import yaml

from bgpd.bird_config import BfdOptions, BgpNeighbor
from lab.frr import FrrBfdProfile, FrrNeighbor, FrrRouter, render_frr
from lab.topology import (
    MAX_RACKS,
    POOL_BLOCK,
    POOL_CIDR,
    ROUTER_AS,
    BridgePlan,
    FrrPlan,
    LabParams,
    LabPlan,
    NamespacePlan,
    NodePlan,
    SpeakerPlan,
    VethPlan,
    _host,
    _lab_neighbor,
    _speaker,
    plan_lab,
    rack_subnet,
    tor_as,
    transit_subnet,
)

BFD_PROFILE = "tor"
BFD_MS = 300
BFD_MULTIPLIER = 3
DETECT_MS = BFD_MS * BFD_MULTIPLIER
UPLINKS = ("eth0", "eth1")  # to ToR a, to ToR b


def tor_b_as(rack: int) -> int:
    return ROUTER_AS + 10 + rack


def tor_label(rack: int, side: str) -> str:
    """The namespace label of rack ``rack``'s ToR ``side`` ("a" or "b")."""
    return f"r{rack}-tor-{side}"


def tor_ip(rack: int, side: str) -> str:
    """ToR a is .1 of the rack's range, ToR b .2; the nodes keep .10 on."""
    return str(rack_subnet(rack)[1 if side == "a" else 2])


def node_port(node: NodePlan) -> str:
    """A node's uplink's name at either ToR."""
    return f"p-{node.ns}"


def _uplink(node: NodePlan, side: str) -> VethPlan:
    tor = tor_ip(node.rack, side)
    return VethPlan(
        node.ns,
        UPLINKS[0 if side == "a" else 1],
        tor_label(node.rack, side),
        node_port(node),
        a_address=f"{node.ip}/32",
        a_peer=f"{tor}/32",
        b_address=f"{tor}/32",
        b_peer=f"{node.ip}/32",
    )


def _pods_range() -> str:
    return f"{POOL_CIDR} ge {POOL_BLOCK} le 32"


def _frr_tor(params: LabParams, rack: int, nodes: list[NodePlan], spine: str) -> FrrRouter:
    racks = range(1, params.racks + 1)
    return FrrRouter(
        hostname=tor_label(rack, "b"),
        router_id=tor_ip(rack, "b"),
        local_as=tor_b_as(rack),
        neighbors=(
            FrrNeighbor(spine, ROUTER_AS, "fabric"),
            *(
                FrrNeighbor(
                    n.ip,
                    n.as_number,
                    "pods",
                    passive=True,
                    bfd_profile=BFD_PROFILE,
                    password=params.bgp_password,
                    interface=node_port(n),
                )
                for n in nodes
            ),
        ),
        prefix_lists=(
            ("pods", (f"permit {_pods_range()}",)),
            ("fabric", (*(f"permit {rack_subnet(r)}" for r in racks), f"permit {_pods_range()}")),
        ),
        bfd_profiles=(FrrBfdProfile(BFD_PROFILE, BFD_MS, BFD_MS, BFD_MULTIPLIER),),
    )


def plan_dual_homed_resources(params: LabParams, tor_resources: str) -> str:
    """The ``tor`` topology's pool and BGPConfiguration, the BFDProfile, and
    two BGPPeers per rack (one per ToR), both naming the profile."""
    docs: list[dict[str, Any]] = [
        d for d in yaml.safe_load_all(tor_resources) if d["kind"] != "BGPPeer"
    ]
    docs.append(
        {
            "apiVersion": "meshroute.io/v1",
            "kind": "BFDProfile",
            "metadata": {"name": BFD_PROFILE},
            "spec": {
                "receiveInterval": BFD_MS,
                "transmitInterval": BFD_MS,
                "detectMultiplier": BFD_MULTIPLIER,
            },
        }
    )
    password = {"password": params.bgp_password} if params.bgp_password else {}
    for r in range(1, params.racks + 1):
        for side, asn in (("a", tor_as(r)), ("b", tor_b_as(r))):
            docs.append(
                {
                    "apiVersion": "meshroute.io/v1",
                    "kind": "BGPPeer",
                    "metadata": {"name": f"rack{r}-tor-{side}"},
                    "spec": {
                        "nodeSelector": f"rack == 'r{r}'",
                        "peerIP": tor_ip(r, side),
                        "asNumber": asn,
                        "bfdProfile": BFD_PROFILE,
                        **password,
                    },
                }
            )
    return yaml.safe_dump_all(docs, sort_keys=False)


def plan_topology(params: LabParams) -> LabPlan:
    """The plan of any of the lab's topologies (``plan_lab`` plans all but
    this one, which builds on its ``tor`` plan)."""
    return plan_dual_homed(params) if params.topology == "dual-homed" else plan_lab(params)


def plan_dual_homed(params: LabParams) -> LabPlan:
    """The whole dual-homed lab, built on the ``tor`` plan: its nodes, its
    BIRD ToRs (now ToR a, with BFD and no rack segment) and its spine (now
    with the b ToRs as well)."""
    bad = params.problems()  # the tor plan below cannot see what is wrong only here
    if bad:
        raise ValueError("; ".join(bad))
    base = plan_lab(replace(params, topology="tor"))
    run = params.run_dir.rstrip("/")
    bfd = BfdOptions(BFD_MS, BFD_MS, BFD_MULTIPLIER)
    # the management network (netns placement) as the base plan has it
    namespaces = [p for p in base.namespaces if p.role == "mgmt"]
    namespaces.append(NamespacePlan("router", "router", forwarding=True))
    bridges: list[BridgePlan] = [b for b in base.bridges if b.ns == "mgmt"]
    veths: list[VethPlan] = [v for v in base.veths if "mgmt" in (v.a_ns, v.b_ns)]
    speakers: list[SpeakerPlan] = []
    frr: list[FrrPlan] = []
    spine_b: list[BgpNeighbor] = []
    for r in range(1, params.racks + 1):
        nodes = [n for n in base.nodes if n.rack == r]
        ta, tb = transit_subnet(r), transit_subnet(MAX_RACKS + r)
        a, b = tor_label(r, "a"), tor_label(r, "b")
        namespaces.append(NamespacePlan(a, "tor", rack=r, forwarding=True))
        namespaces.append(NamespacePlan(b, "tor", rack=r, forwarding=True))
        namespaces += [NamespacePlan(n.ns, "node", rack=r, forwarding=True) for n in nodes]
        veths.append(VethPlan("router", f"to-r{r}", a, "uplink", _host(ta, 1), _host(ta, 2)))
        veths.append(VethPlan("router", f"to-r{r}b", b, "uplink", _host(tb, 1), _host(tb, 2)))
        veths += [_uplink(n, side) for n in nodes for side in ("a", "b")]
        spine_b.append(
            _lab_neighbor(
                name=f"tor{r}b",
                address=str(tb[2]),
                peer_as=tor_b_as(r),
                local_address=str(tb[1]),
                import_filter="fabric",
                export_filter="fabric",
            )
        )
        tor = next(s.bird for s in base.speakers if s.ns == f"r{r}-tor")
        tor_a = replace(
            tor,
            neighbors=tuple(
                replace(nb, bfd=bfd) if nb.name.startswith("node_") else nb for nb in tor.neighbors
            ),
            direct_interfaces=(),
        )
        speakers.append(_speaker(a, "tor", tor_a, run))
        config = render_frr(_frr_tor(params, r, nodes, str(tb[1])))
        neighbors = (str(tb[1]), *(n.ip for n in nodes))
        frr.append(FrrPlan(b, config, f"{run}/{b}/frr", neighbors))
    router = next(s.bird for s in base.speakers if s.role == "router")
    router = replace(router, neighbors=(*router.neighbors, *spine_b))
    speakers.insert(0, _speaker("router", "router", router, run))
    return LabPlan(
        params=params,
        namespaces=tuple(namespaces),
        bridges=tuple(bridges),
        veths=tuple(veths),
        speakers=tuple(speakers),
        nodes=base.nodes,
        etcd_endpoint=base.etcd_endpoint,
        resources_yaml=plan_dual_homed_resources(params, base.resources_yaml),
        frr=tuple(frr),
    )
