"""Which BGP sessions a node has, decided from the node registry and the
BGP resources (Calico's model): the node-to-node mesh when it is on, plus
every BGPPeer that selects this node, with explicit peers taking precedence
over mesh sessions to the same address. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from netaddr import IPAddress, IPNetwork

from ipam.selector import matches
from meshroute.registry import NodeRecord
from meshroute.resources import BGPConfigurationSpec, BGPPeerSpec

MESH = "node-to-node mesh"
GLOBAL = "global"
NODE_SPECIFIC = "node specific"


@dataclass(frozen=True)
class PeerPlan:
    address: IPAddress
    peer_as: int
    local_as: int
    kind: str  # MESH | GLOBAL | NODE_SPECIFIC
    source: str  # "mesh" or the BGPPeer's name
    passive: bool = False
    password: str | None = None
    ttl_security: int | None = None
    hold_time: int = 90
    graceful_restart_time: int = 120
    keep_next_hop: bool = False
    max_prefix: int | None = None
    max_prefix_action: str = "drop"
    peer_node: str | None = None  # the node behind the address, when it is one
    bfd_profile: str | None = None


def decide_node_as(node: NodeRecord, config: BGPConfigurationSpec) -> int:
    """Per-node override (record or BGPConfiguration), else the cluster AS."""
    return node.asn or config.node_as_numbers.get(node.name) or config.as_number


def _address(node: NodeRecord) -> IPAddress | None:
    return IPNetwork(node.ipv4).ip if node.ipv4 else None


def decide_peer_applies(spec: BGPPeerSpec, me: NodeRecord) -> str | None:
    """The kind of session when a BGPPeer applies to this node, else None."""
    if spec.node is not None:
        return NODE_SPECIFIC if spec.node == me.name else None
    if spec.node_selector is not None:
        return NODE_SPECIFIC if matches(spec.node_selector, me.labels) else None
    return GLOBAL


def plan_peers(
    me: NodeRecord,
    nodes: Mapping[str, NodeRecord],
    config: BGPConfigurationSpec,
    peers: Mapping[str, BGPPeerSpec],
) -> list[PeerPlan]:
    my_addr = _address(me)
    local_as = decide_node_as(me, config)
    out: dict[IPAddress, PeerPlan] = {}

    if config.node_to_node_mesh_enabled and my_addr is not None:
        for other in nodes.values():
            addr = _address(other)
            if other.name == me.name or addr is None or addr == my_addr:
                continue
            # One session per pair, no connection race: the greater address waits.
            out[addr] = PeerPlan(
                address=addr,
                peer_as=decide_node_as(other, config),
                local_as=local_as,
                kind=MESH,
                source="mesh",
                passive=my_addr > addr,
                peer_node=other.name,
                bfd_profile=config.node_to_node_mesh_bfd_profile,
            )

    for name, spec in sorted(peers.items()):
        kind = decide_peer_applies(spec, me)
        if kind is None:
            continue
        targets: list[tuple[IPAddress, int, str | None]] = []
        if spec.peer_ip is not None and spec.as_number is not None:
            targets.append((spec.peer_ip, spec.as_number, None))
        elif spec.peer_selector is not None:
            for other in sorted(nodes.values(), key=lambda n: n.name):
                addr = _address(other)
                if other.name == me.name or addr is None:
                    continue
                if matches(spec.peer_selector, other.labels):
                    asn = spec.as_number or decide_node_as(other, config)
                    targets.append((addr, asn, other.name))
        for addr, asn, node_name in targets:
            if addr == my_addr:
                continue
            out[addr] = PeerPlan(
                address=addr,
                peer_as=asn,
                local_as=local_as,
                kind=kind,
                source=name,
                passive=spec.passive,
                password=spec.password,
                ttl_security=spec.ttl_security,
                hold_time=spec.hold_time,
                graceful_restart_time=spec.graceful_restart_time,
                keep_next_hop=spec.keep_next_hop,
                max_prefix=spec.max_prefix,
                max_prefix_action=spec.max_prefix_action,
                peer_node=node_name,
                bfd_profile=spec.bfd_profile,
            )
    return [out[a] for a in sorted(out)]
