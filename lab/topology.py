"""The lab's plan, pure: from a few parameters (racks, nodes per rack, pods per
node, topology) every namespace, link, address, route, AS number, BIRD
configuration, node config (``node.yaml``) and resource YAML the lab needs.
``lab.build`` applies it; nothing here touches the machine.

Picture (racks=2, nodes_per_rack=2; addresses are documentation ranges and
exist only inside the lab's namespaces)::

                         +-----------------------+
                         |  router   AS 65000    |  BIRD: eBGP to every ToR,
                         |  (spine, forwards)    |  kernel export of BGP routes
                         +-----------------------+
               198.51.100.1/30 |         | 198.51.100.5/30
               198.51.100.2/30 |         | 198.51.100.6/30
             +-----------------+--+   +--+-----------------+
             | r1-tor  AS 65001   |   | r2-tor  AS 65002   |  BIRD; the rack's
             | bridge "rack"      |   | bridge "rack"      |  gateway (.1),
             | 192.0.2.1/26       |   | 192.0.2.65/26      |  forwards
             +---+-------------+--+   +--+-------------+---+
                 |    (rr1)    |         |    (rr2)    |     reflectors: rr mode
              r1-n1         r1-n2      r2-n1         r2-n2   only (.5 of a rack)
           192.0.2.10    192.0.2.11  192.0.2.74    192.0.2.75
              eth0 (default via the ToR)     [netns placement only:]
              mgmt0 203.0.113.x/24 --- mgmt bridge --- etcd on 203.0.113.1:2379

- Underlay: each rack is one L2 segment (a bridge in its ToR's namespace);
  the ToR exports its rack subnet to the router over eBGP and the router
  passes it on to the other ToRs, so nodes reach other racks only while
  BIRD's sessions are up (as in a routed fabric). Pods come from
  10.244.0.0/16 in /26 blocks.
- Where the node processes run (``node_placement``): ``root`` (default):
  in the root namespace, driving their namespace by name (node.yaml
  ``netns``; ExaBGP runs inside it), with etcd on the root loopback.
  ``netns``: inside their namespace; etcd then lives in a ``mgmt``
  namespace on an out-of-band bridge that the nodes reach on ``mgmt0``
  whatever BGP does. Nothing is ever added to the root namespace.
- ``mesh``: nodes in the cluster AS 64512, full iBGP mesh. Cross-rack
  next hops are not on the node's subnet, so the pool tunnels CrossSubnet
  (``encap``: IPIP, or VXLAN on a kernel without the ipip module); the
  fabric only carries node addresses.
- ``tor``: Calico's "AS per compute server" model: every node its own AS
  (64600 + 20 * (rack - 1) + n), eBGP to its rack's ToR (AS 65000 + rack),
  ToRs eBGP to the router. Calico's "AS per rack" puts a rack's nodes in the
  ToR's AS with iBGP; with eBGP to the ToR a shared rack AS would make each
  node drop its rack mates' routes as AS-path loops. The fabric carries pod
  routes, so the pool needs no encapsulation. The ToR is passive towards
  its nodes (the nodes connect; no collisions on restarts).
- ``rr``: nodes in AS 64512 with the mesh off, clients of a pair of
  ``meshroute reflector`` processes (BIRD in a namespace on each of the first
  two racks, one cluster id; they register in etcd, find each other by the
  cluster id and their clients through the ``to-reflectors`` BGPPeer);
  reflectors forward nothing, so as in ``mesh`` the pool tunnels
  CrossSubnet.
- ``dual-homed``: ``tor`` with two ToRs per rack, BIRD and FRR, and two
  uplinks per node, with BFD on every node session (``lab.dual_homed``).
- ``dual_stack`` (not ``dual-homed``): every node, pod, ToR, reflector and
  the router get IPv6 beside IPv4: a /64 per rack from 2001:db8:1::/48 (same host offsets), a
  /64 per ToR-router link from 2001:db8:ff::/48, and pods from a second
  pool, fd00:10:244::/64 in /122 blocks. IPv6 never uses IPIP: where the
  IPv4 pool tunnels, the IPv6 pool uses VXLAN CrossSubnet (over the IPv6
  underlay), else direct routes. The router and the ToRs speak IPv6 on
  IPv6 sessions of their own. Towards the nodes the lab follows
  ``ipv6_transport`` (BGPConfiguration's ``ipv6Transport``): ``IPv6Peers``
  (the default), sessions on the IPv6 addresses too (node-node, node-ToR,
  node-reflector); ``MultiProtocol``, IPv6 on the IPv4 sessions (MP-BGP),
  where a ToR sets its rack address as the IPv6 next hop.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

import yaml
from netaddr import IPAddress, IPNetwork

from bgpd.bird_config import BgpNeighbor, BirdConfig, PrefixFilter, PrefixRange

Topology = Literal["mesh", "tor", "rr", "dual-homed"]
TOPOLOGIES: tuple[Topology, ...] = ("mesh", "tor", "rr", "dual-homed")
DUAL_STACK_TOPOLOGIES: tuple[Topology, ...] = ("mesh", "tor", "rr")
# how pod traffic crosses racks where the fabric does not carry pod routes
Encap = Literal["ipip", "vxlan"]
ENCAP_CHOICES = ("auto", "ipip", "vxlan")
NO_IPIP = "this kernel has no ipip module: VXLAN CrossSubnet instead"
Role = Literal["mgmt", "router", "tor", "reflector", "node"]
# where a node's process runs: in the root namespace, driving its namespace
# by name (node.yaml ``netns``), etcd on the root loopback; or inside its
# namespace (``ip netns exec``), etcd on the management network
Placement = Literal["root", "netns"]
PodMode = Literal["routed", "bridge"]
Ipv6Transport = Literal["IPv6Peers", "MultiProtocol"]
IPV6_TRANSPORTS: tuple[Ipv6Transport, ...] = ("IPv6Peers", "MultiProtocol")

CLUSTER_AS = 64512
ROUTER_AS = 65000
RACK_SPACE = IPNetwork("192.0.2.0/24")  # one /26 per rack
TRANSIT_SPACE = IPNetwork("198.51.100.0/24")  # one /30 per ToR-router link
MGMT_NET = IPNetwork("203.0.113.0/24")
POOL_CIDR = IPNetwork("10.244.0.0/16")
POOL_BLOCK = 26
RACK_SPACE6 = IPNetwork("2001:db8:1::/48")  # one /64 per rack
TRANSIT_SPACE6 = IPNetwork("2001:db8:ff::/48")  # one /64 per ToR-router link
POOL6_CIDR = IPNetwork("fd00:10:244::/64")
POOL6_BLOCK = 122  # 64 addresses, as the IPv4 /26
ETCD_PORT = 2379
RR_CLUSTER_ID = "244.0.0.1"
MAX_RACKS = 4
MAX_NODES_PER_RACK = 19
NODE_HOST_OFFSET = 10
REFLECTOR_HOST_OFFSET = 5
HTTP_BASE_PORT = 19100  # per node; root placement picks free ports at build
RACK_BRIDGE = "rack"
MGMT_BRIDGE = "mgmt"


def tor_as(rack: int) -> int:
    return ROUTER_AS + rack


def node_as(topology: Topology, rack: int, index: int) -> int:
    if topology == "tor":
        return 64600 + 20 * (rack - 1) + index
    return CLUSTER_AS


@dataclass(frozen=True)
class LabParams:
    topology: Topology = "mesh"
    racks: int = 2
    nodes_per_rack: int = 2
    pods_per_node: int = 2
    run_dir: str = "/run/meshroute-lab"
    etcd_prefix: str = "/meshroute"
    bgp_password: str | None = None  # TCP-MD5 on the node-facing sessions
    node_placement: Placement = "root"
    # routed: meshroute-cni (a veth per pod, /32 routes); bridge: Debian's
    # bridge plugin with meshroute-cni-ipam on an L2 segment
    pod_mode: PodMode = "routed"
    encap: Encap = "vxlan"
    dual_stack: bool = False  # the command line's default is True (lab.cli)
    ipv6_transport: Ipv6Transport = "IPv6Peers"

    def problems(self) -> list[str]:
        out = []
        if self.ipv6_transport not in IPV6_TRANSPORTS:
            out.append(f"ipv6_transport {self.ipv6_transport!r}: {' or '.join(IPV6_TRANSPORTS)}")
        elif self.ipv6_transport != "IPv6Peers" and not self.dual_stack:
            out.append(f"ipv6_transport {self.ipv6_transport}: only in a dual-stack lab")
        if self.dual_stack and self.topology not in DUAL_STACK_TOPOLOGIES:
            out.append(f"dual_stack: the {self.topology} topology is IPv4 only")
        if self.encap not in ("ipip", "vxlan"):
            out.append(f"encap {self.encap!r}: ipip or vxlan")
        if self.topology not in TOPOLOGIES:
            out.append(f"topology {self.topology!r} is not one of {', '.join(TOPOLOGIES)}")
        if not 1 <= self.racks <= MAX_RACKS:
            out.append(f"racks {self.racks}: 1..{MAX_RACKS}")
        if not 1 <= self.nodes_per_rack <= MAX_NODES_PER_RACK:
            out.append(f"nodes_per_rack {self.nodes_per_rack}: 1..{MAX_NODES_PER_RACK}")
        if self.node_placement not in ("root", "netns"):
            out.append(f"node_placement {self.node_placement!r}: root or netns")
        if self.pod_mode not in ("routed", "bridge"):
            out.append(f"pod_mode {self.pod_mode!r}: routed or bridge")
        if not 0 <= self.pods_per_node <= 60:
            out.append(f"pods_per_node {self.pods_per_node}: 0..60 (one /26 block)")
        return out


@dataclass(frozen=True)
class NamespacePlan:
    label: str  # the namespace's real name is <prefix><pid>-<n>-<label>
    role: Role
    rack: int | None = None
    forwarding: bool = False
    default_via: str | None = None
    default_via6: str | None = None


@dataclass(frozen=True)
class BridgePlan:
    ns: str  # namespace label
    name: str
    address: str | None  # with prefix length
    address6: str | None = None


@dataclass(frozen=True)
class VethPlan:
    """A veth pair: ``a_if`` in ``a_ns``, ``b_if`` in ``b_ns``; an end with
    a bridge is enslaved to that bridge in its namespace."""

    a_ns: str
    a_if: str
    b_ns: str
    b_if: str
    a_address: str | None = None
    b_address: str | None = None
    a_bridge: str | None = None
    b_bridge: str | None = None
    # a point-to-point address (``ADDR peer PEER``): the end's address,
    # usually a /32, and the one address at the link's other end
    a_peer: str | None = None
    b_peer: str | None = None
    a_address6: str | None = None
    b_address6: str | None = None


@dataclass(frozen=True)
class SpeakerPlan:
    """A BIRD instance (ToR, router or reflector) in namespace ``ns``."""

    ns: str
    role: Role
    bird: BirdConfig
    config_path: str
    socket_path: str
    log_path: str


@dataclass(frozen=True)
class FrrPlan:
    """FRR (``lab.frr.DAEMONS``) in namespace ``ns``, its files in ``dir``."""

    ns: str
    config: str  # frr.conf
    dir: str
    neighbors: tuple[str, ...]  # its BGP neighbours' addresses


@dataclass(frozen=True)
class ReflectorPlan:
    """A ``meshroute reflector`` whose BIRD runs in namespace ``ns``; it
    finds its clients and its partner in etcd."""

    ns: str
    name: str
    address: str  # with prefix length
    cluster_id: str
    run_dir: str
    address6: str | None = None  # dual stack: reflects IPv6 sessions on it too

    @property
    def ip(self) -> str:
        return _ip(self.address)

    @property
    def config_path(self) -> str:
        return f"{self.run_dir}/reflector.yaml"

    @property
    def bird_dir(self) -> str:
        return f"{self.run_dir}/bird"

    @property
    def socket_path(self) -> str:
        return f"{self.bird_dir}/bird.ctl"

    @property
    def log_path(self) -> str:
        return f"{self.run_dir}/reflector.log"


@dataclass(frozen=True)
class PodPlan:
    label: str  # also the pod namespace's label
    container_id: str


@dataclass(frozen=True)
class NodePlan:
    name: str  # the node name, e.g. rack1-node1
    ns: str  # namespace label, e.g. r1-n1
    rack: int
    index: int
    address: str  # underlay, with prefix length
    gateway: str  # the ToR's rack address
    mgmt_address: str | None  # only with node_placement "netns"
    as_number: int
    labels: dict[str, str] = field(hash=False)
    run_dir: str
    pods: tuple[PodPlan, ...]
    http_port: int
    config: dict[str, Any] = field(hash=False)
    address6: str | None = None  # dual stack: underlay IPv6, with prefix length
    gateway6: str | None = None

    @property
    def ip6(self) -> str | None:
        return _ip(self.address6) if self.address6 else None

    @property
    def config_path(self) -> str:
        return f"{self.run_dir}/node.yaml"

    @property
    def log_path(self) -> str:
        return f"{self.run_dir}/node.log"

    @property
    def ipam_socket(self) -> str:
        return str(self.config["ipam"]["socket"])

    @property
    def ip(self) -> str:
        return self.address.split("/")[0]


@dataclass(frozen=True)
class LabPlan:
    params: LabParams
    namespaces: tuple[NamespacePlan, ...]
    bridges: tuple[BridgePlan, ...]
    veths: tuple[VethPlan, ...]
    speakers: tuple[SpeakerPlan, ...]
    nodes: tuple[NodePlan, ...]
    etcd_endpoint: str | None  # None: on the root loopback, port chosen at build
    resources_yaml: str
    reflectors: tuple[ReflectorPlan, ...] = ()  # rr: meshroute reflectors
    frr: tuple[FrrPlan, ...] = ()  # dual-homed: each rack's second ToR

    @property
    def run_dir(self) -> str:
        return self.params.run_dir

    def node(self, name: str) -> NodePlan:
        for n in self.nodes:
            if n.name == name or n.ns == name:
                return n
        raise KeyError(name)


def rack_subnet(rack: int) -> IPNetwork:
    return list(RACK_SPACE.subnet(26))[rack - 1]


def transit_subnet(rack: int) -> IPNetwork:
    return list(TRANSIT_SPACE.subnet(30))[rack - 1]


def _nth64(space: IPNetwork, k: int) -> IPNetwork:
    return IPNetwork(f"{IPAddress(int(space.network) + (k << 64), 6)}/64")


def rack_subnet6(rack: int) -> IPNetwork:
    return _nth64(RACK_SPACE6, rack)


def transit_subnet6(rack: int) -> IPNetwork:
    return _nth64(TRANSIT_SPACE6, rack)


def _host(net: IPNetwork, offset: int) -> str:
    return f"{net[offset]}/{net.prefixlen}"


def _ip(addr: str) -> str:
    return addr.split("/")[0]


def plan_node_config(
    *,
    name: str,
    address: str,
    as_number: int,
    labels: dict[str, str],
    run_dir: str,
    http_port: int,
    etcd_endpoint: str | None,
    etcd_prefix: str,
    l2_segment: bool = False,
    address6: str | None = None,
) -> dict[str, Any]:
    """A ``node.yaml`` as a dict (``meshroute.node.config.NodeConfig`` schema);
    what only the build knows is filled in by ``finish_node_config``."""
    etcd: dict[str, Any] = {"prefix": etcd_prefix}
    if etcd_endpoint is not None:
        etcd["endpoints"] = [etcd_endpoint]
    return {
        "nodeName": name,
        "ipv4": address,
        **({"ipv6": address6} if address6 else {}),
        "asNumber": as_number,
        "labels": dict(labels),
        "etcd": etcd,
        "ipam": {"socket": f"{run_dir}/ipam.sock", "l2Segment": l2_segment},
        "bgp": {"workDir": f"{run_dir}/bgp"},
        "http": {"listen": f"127.0.0.1:{http_port}"},
    }


def finish_node_config(
    node: NodePlan,
    placement: Placement,
    *,
    etcd_endpoint: str,
    netns: str,
    http_port: int | None = None,
) -> dict[str, Any]:
    """The node's config with what the build decided: etcd's endpoint, the
    namespace's real name (when the process runs in the root namespace) and
    a free HTTP port (the root namespace's ports are shared)."""
    cfg = {k: dict(v) if isinstance(v, dict) else v for k, v in node.config.items()}
    cfg["etcd"]["endpoints"] = [etcd_endpoint]
    if placement == "root":
        cfg["netns"] = netns
    if http_port is not None:
        cfg["http"]["listen"] = f"127.0.0.1:{http_port}"
    return cfg


def _filters(params: LabParams) -> tuple[PrefixFilter, PrefixFilter]:
    """``pods``: the pools' blocks and pod routes; ``fabric``: those and the
    racks' subnets (both families in a dual-stack lab)."""
    racks = range(1, params.racks + 1)
    pods = [PrefixRange(str(POOL_CIDR), POOL_BLOCK, 32)]
    subnets = [PrefixRange(str(rack_subnet(r))) for r in racks]
    if params.dual_stack:
        pods.append(PrefixRange(str(POOL6_CIDR), POOL6_BLOCK, 128))
        subnets += [PrefixRange(str(rack_subnet6(r))) for r in racks]
    return PrefixFilter("pods", tuple(pods)), PrefixFilter("fabric", (*subnets, *pods))


def _ipv6_sessions(params: LabParams) -> bool:
    """IPv6 routes between the nodes and their peers travel on sessions
    between IPv6 addresses (else on the IPv4 sessions, or not at all)."""
    return params.dual_stack and params.ipv6_transport == "IPv6Peers"


def _lab_neighbor(**kw: Any) -> BgpNeighbor:
    """The lab restarts peers on purpose: reconnect within seconds, not the
    minutes BIRD waits by default."""
    return BgpNeighbor(**{"connect_delay": 1, "connect_retry": 3, "error_wait": (1, 5), **kw})


def _node_protocol(n: NodePlan) -> str:
    return "node_" + n.ns.replace("-", "_")


def _speaker(ns: str, role: Role, bird: BirdConfig, run_dir: str) -> SpeakerPlan:
    d = f"{run_dir}/{ns}"
    bird = replace(bird, log_file=f"{d}/bird.log")
    return SpeakerPlan(ns, role, bird, f"{d}/bird.conf", f"{d}/bird.ctl", f"{d}/bird.log")


def decide_encap(choice: str, kernel_has_ipip: bool) -> tuple[Encap, str | None]:
    """The lab's encapsulation for ``--encap`` and what to tell the user:
    ``auto`` is the design's IPIP CrossSubnet where the kernel has ipip, else
    VXLAN CrossSubnet, said in one line. Raises ValueError for ``ipip`` on a
    kernel without it (pods across racks could never reach each other)."""
    if choice == "vxlan":
        return "vxlan", None
    if choice not in ("auto", "ipip"):
        raise ValueError(f"encap {choice!r}: one of {', '.join(ENCAP_CHOICES)}")
    if kernel_has_ipip:
        return "ipip", None
    if choice == "ipip":
        raise ValueError("encap ipip: this kernel has no ipip module (use --encap vxlan or auto)")
    return "vxlan", NO_IPIP


def plan_resources(params: LabParams, nodes: tuple[NodePlan, ...], reflectors: list[str]) -> str:
    """The IPPool and BGP resources the lab applies, as multi-document YAML.
    ``tor``: the fabric carries pod routes, nothing is encapsulated. The IPv6
    pool never uses IPIP: VXLAN where the IPv4 pool tunnels."""
    tunnel = "Never" if params.topology == "tor" else "CrossSubnet"
    ipip = tunnel if params.encap == "ipip" else "Never"
    vxlan = tunnel if params.encap == "vxlan" else "Never"
    pools = [("lab-pods", POOL_CIDR, POOL_BLOCK, ipip, vxlan)]
    if params.dual_stack:
        pools.append(("lab-pods6", POOL6_CIDR, POOL6_BLOCK, "Never", tunnel))
    docs: list[dict[str, Any]] = [
        {
            "apiVersion": "meshroute.io/v1",
            "kind": "IPPool",
            "metadata": {"name": name},
            "spec": {
                "cidr": str(cidr),
                "blockSize": block,
                "ipipMode": pool_ipip,
                "vxlanMode": pool_vxlan,
                "nodeSelector": "all()",
            },
        }
        for name, cidr, block, pool_ipip, pool_vxlan in pools
    ]
    docs.append(
        {
            "apiVersion": "meshroute.io/v1",
            "kind": "BGPConfiguration",
            "metadata": {"name": "default"},
            "spec": {
                "asNumber": CLUSTER_AS,
                **({"ipv6Transport": params.ipv6_transport} if params.dual_stack else {}),
                "nodeToNodeMeshEnabled": params.topology == "mesh",
                "nodeASNumbers": (
                    {n.name: n.as_number for n in nodes} if params.topology == "tor" else {}
                ),
            },
        }
    )
    password = {"password": params.bgp_password} if params.bgp_password else {}
    if params.topology == "tor":
        for r in range(1, params.racks + 1):
            tors = [(f"rack{r}-tor", rack_subnet(r)[1])]
            if _ipv6_sessions(params):
                tors.append((f"rack{r}-tor6", rack_subnet6(r)[1]))
            docs += [
                {
                    "apiVersion": "meshroute.io/v1",
                    "kind": "BGPPeer",
                    "metadata": {"name": name},
                    "spec": {
                        "nodeSelector": f"rack == 'r{r}'",
                        "peerIP": str(tor_ip),
                        "asNumber": tor_as(r),
                        **password,
                    },
                }
                for name, tor_ip in tors
            ]
    elif params.topology == "rr" and reflectors:
        # the reflectors register themselves with this label (meshroute reflector)
        docs.append(
            {
                "apiVersion": "meshroute.io/v1",
                "kind": "BGPPeer",
                "metadata": {"name": "to-reflectors"},
                "spec": {
                    "nodeSelector": "!has(route-reflector)",
                    "peerSelector": "route-reflector == 'true'",
                    **password,
                },
            }
        )
    return yaml.safe_dump_all(docs, sort_keys=False)


def plan_lab(params: LabParams) -> LabPlan:
    """The whole lab for ``params`` (raises ValueError on bad parameters)."""
    bad = params.problems()
    if bad:
        raise ValueError("; ".join(bad))
    if params.topology == "dual-homed":  # built on the tor plan made here
        raise ValueError("topology dual-homed: plan it with lab.dual_homed.plan_topology")
    run = params.run_dir.rstrip("/")
    pods_filter, fabric_filter = _filters(params)
    mgmt = params.node_placement == "netns"
    namespaces: list[NamespacePlan] = [NamespacePlan("router", "router", forwarding=True)]
    bridges: list[BridgePlan] = []
    etcd_endpoint = None
    if mgmt:
        namespaces.insert(0, NamespacePlan("mgmt", "mgmt"))
        bridges.append(BridgePlan("mgmt", MGMT_BRIDGE, _host(MGMT_NET, 1)))
        etcd_endpoint = f"{MGMT_NET[1]}:{ETCD_PORT}"
    veths: list[VethPlan] = []

    # nodes first: the ToRs' and reflectors' neighbours are made from them
    nodes: list[NodePlan] = []
    mgmt_host = NODE_HOST_OFFSET
    dual = params.dual_stack
    for r in range(1, params.racks + 1):
        subnet, subnet6 = rack_subnet(r), rack_subnet6(r)
        for i in range(1, params.nodes_per_rack + 1):
            name = f"rack{r}-node{i}"
            ns = f"r{r}-n{i}"
            address = _host(subnet, NODE_HOST_OFFSET + i - 1)
            address6 = _host(subnet6, NODE_HOST_OFFSET + i - 1) if dual else None
            labels = {"rack": f"r{r}"}
            asn = node_as(params.topology, r, i)
            port = HTTP_BASE_PORT + len(nodes)
            node_dir = f"{run}/{ns}"
            pods = tuple(
                PodPlan(f"{ns}-p{p}", f"lab-{ns}-p{p}") for p in range(1, params.pods_per_node + 1)
            )
            config = plan_node_config(
                name=name,
                address=address,
                as_number=asn,
                labels=labels,
                run_dir=node_dir,
                http_port=port,
                etcd_endpoint=etcd_endpoint,
                etcd_prefix=params.etcd_prefix,
                l2_segment=params.pod_mode == "bridge",
                address6=address6,
            )
            nodes.append(
                NodePlan(
                    name=name,
                    ns=ns,
                    rack=r,
                    index=i,
                    address=address,
                    gateway=str(subnet[1]),
                    mgmt_address=_host(MGMT_NET, mgmt_host) if mgmt else None,
                    as_number=asn,
                    labels=labels,
                    run_dir=node_dir,
                    pods=pods,
                    http_port=port,
                    config=config,
                    address6=address6,
                    gateway6=str(subnet6[1]) if dual else None,
                )
            )
            mgmt_host += 1

    # (ns label, rack, address, IPv6 address)
    reflectors: list[tuple[str, int, str, str | None]] = []
    if params.topology == "rr":
        for k in (1, 2):
            rack = (k - 1) % params.racks + 1
            offset = REFLECTOR_HOST_OFFSET + (k - 1) // params.racks
            addr6 = _host(rack_subnet6(rack), offset) if dual else None
            reflectors.append((f"rr{k}", rack, _host(rack_subnet(rack), offset), addr6))

    speakers: list[SpeakerPlan] = []
    router_neighbors: list[BgpNeighbor] = []
    for r in range(1, params.racks + 1):
        subnet, transit = rack_subnet(r), transit_subnet(r)
        subnet6, transit6 = rack_subnet6(r), transit_subnet6(r)
        tor = f"r{r}-tor"
        namespaces.append(NamespacePlan(tor, "tor", rack=r, forwarding=True))
        bridges.append(
            BridgePlan(tor, RACK_BRIDGE, _host(subnet, 1), _host(subnet6, 1) if dual else None)
        )
        veths.append(
            VethPlan(
                "router",
                f"to-r{r}",
                tor,
                "uplink",
                _host(transit, 1),
                _host(transit, 2),
                a_address6=_host(transit6, 1) if dual else None,
                b_address6=_host(transit6, 2) if dual else None,
            )
        )
        # the fabric's own IPv6 sessions beside the IPv4 ones
        links = [("", transit)] + ([("_v6", transit6)] if dual else [])
        router_neighbors += [
            _lab_neighbor(
                name=f"tor{r}{suffix}",
                address=str(net[2]),
                peer_as=tor_as(r),
                local_address=str(net[1]),
                import_filter="fabric",
                export_filter="fabric",
                channels=(f"ipv{net.version}",),
            )
            for suffix, net in links
        ]
        tor_neighbors = [
            _lab_neighbor(
                name=f"spine{suffix}",
                address=str(net[1]),
                peer_as=ROUTER_AS,
                local_address=str(net[2]),
                import_filter="fabric",
                export_filter="fabric",
                channels=(f"ipv{net.version}",),
            )
            for suffix, net in links
        ]
        if params.topology == "tor":
            rack_nodes = [n for n in nodes if n.rack == r]
            multiprotocol = dual and not _ipv6_sessions(params)
            on_v4 = ("ipv4", "ipv6") if multiprotocol else ("ipv4",)
            # (node, protocol suffix, its address, the ToR's, families)
            sessions = [(n, "", n.ip, subnet[1], on_v4) for n in rack_nodes]
            if _ipv6_sessions(params):
                sessions += [(n, "_v6", str(n.ip6), subnet6[1], ("ipv6",)) for n in rack_nodes]
            tor_neighbors += [
                _lab_neighbor(
                    name=_node_protocol(n) + suffix,
                    address=ip,
                    peer_as=n.as_number,
                    local_address=str(tor_ip),
                    import_filter="pods",
                    export_filter="pods",
                    passive=True,
                    password=params.bgp_password,
                    channels=channels,
                    next_hop_ipv6=str(subnet6[1]) if len(channels) == 2 else None,
                )
                for n, suffix, ip, tor_ip, channels in sessions
            ]
        bird = BirdConfig(
            router_id=str(subnet[1]),
            local_as=tor_as(r),
            neighbors=tuple(tor_neighbors),
            filters=(pods_filter, fabric_filter),
            direct_interfaces=(RACK_BRIDGE,),
            kernel_export_bgp=True,
            ipv6=dual,
        )
        speakers.append(_speaker(tor, "tor", bird, run))
        for n in nodes:
            if n.rack == r:
                namespaces.append(
                    NamespacePlan(
                        n.ns,
                        "node",
                        rack=r,
                        forwarding=True,
                        default_via=n.gateway,
                        default_via6=n.gateway6,
                    )
                )
                veths.append(
                    VethPlan(
                        n.ns,
                        "eth0",
                        tor,
                        f"p-{n.ns}",
                        a_address=n.address,
                        b_bridge="rack",
                        a_address6=n.address6,
                    )
                )
                if n.mgmt_address is not None:
                    veths.append(
                        VethPlan(
                            n.ns,
                            "mgmt0",
                            "mgmt",
                            f"m-{n.ns}",
                            a_address=n.mgmt_address,
                            b_bridge=MGMT_BRIDGE,
                        )
                    )
        for label, rack, addr, addr6 in reflectors:
            if rack == r:
                namespaces.append(
                    NamespacePlan(
                        label,
                        "reflector",
                        rack=r,
                        default_via=str(subnet[1]),
                        default_via6=str(subnet6[1]) if dual else None,
                    )
                )
                veths.append(
                    VethPlan(
                        label, "eth0", tor, f"p-{label}", addr, b_bridge="rack", a_address6=addr6
                    )
                )

    speakers.insert(
        0,
        _speaker(
            "router",
            "router",
            BirdConfig(
                router_id=str(transit_subnet(1)[1]),
                local_as=ROUTER_AS,
                neighbors=tuple(router_neighbors),
                filters=(fabric_filter,),
                kernel_export_bgp=True,
                ipv6=dual,
            ),
            run,
        ),
    )
    reflector_plans = tuple(
        ReflectorPlan(label, label, addr, RR_CLUSTER_ID, f"{run}/{label}", addr6)
        for label, _rack, addr, addr6 in reflectors
    )

    node_tuple = tuple(nodes)
    return LabPlan(
        params=params,
        namespaces=tuple(namespaces),
        bridges=tuple(bridges),
        veths=tuple(veths),
        speakers=tuple(speakers),
        nodes=node_tuple,
        etcd_endpoint=etcd_endpoint,
        resources_yaml=plan_resources(params, node_tuple, [_ip(a) for _, _, a, _ in reflectors]),
        reflectors=reflector_plans,
    )
