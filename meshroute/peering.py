"""Which BGP sessions a node has, decided from the node registry and the
BGP resources (Calico's model): the node-to-node mesh when it is on, plus
every BGPPeer that selects this node, with explicit peers taking precedence
over mesh sessions to the same address. Pure.

Which address families a session carries follows BGPConfiguration's
``ipv6Transport``: with ``IPv6Peers`` (Calico's meaning) a session to an
IPv4 address carries IPv4 and one to an IPv6 address IPv6, and the mesh and
peer selectors pair nodes on each address they both have; with
``MultiProtocol`` the IPv4 sessions of a node that has an IPv6 address carry
IPv6 too. A node without an IPv6 address has no IPv6 session."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field

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
    password: str | None = field(default=None, repr=False)
    ttl_security: int | None = None
    hold_time: int = 90
    graceful_restart_time: int = 120
    keep_next_hop: bool = False
    max_prefix: int | None = None
    max_prefix_action: str = "drop"
    peer_node: str | None = None  # the node behind the address, when it is one
    bfd_profile: str | None = None
    families: tuple[int, ...] = (4,)  # IP versions of the routes the session carries


def decide_node_as(node: NodeRecord, config: BGPConfigurationSpec) -> int:
    """Per-node override (record or BGPConfiguration), else the cluster AS."""
    return node.asn or config.node_as_numbers.get(node.name) or config.as_number


def node_address(node: NodeRecord, version: int) -> IPAddress | None:
    text = node.ipv4 if version == 4 else node.ipv6
    return _address_in(text) if text else None


@functools.lru_cache(maxsize=1 << 16)
def _address_in(network: str) -> IPAddress:
    """Planning for N nodes asks for every node's address about 6N times."""
    return IPNetwork(network).ip


def decide_families(
    address: IPAddress, me: NodeRecord, config: BGPConfigurationSpec
) -> tuple[int, ...]:
    """The IP versions a session to ``address`` carries; () when this node
    cannot have the session (an IPv6 peer and no IPv6 address of its own)."""
    has_v6 = node_address(me, 6) is not None
    if address.version == 6:
        return (6,) if has_v6 else ()
    if config.ipv6_transport == "MultiProtocol" and has_v6:
        return (4, 6)
    return (4,)


def decide_session_versions(config: BGPConfigurationSpec) -> tuple[int, ...]:
    """The node addresses sessions between nodes are made on."""
    return (4,) if config.ipv6_transport == "MultiProtocol" else (4, 6)


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
    local_as = decide_node_as(me, config)
    versions = decide_session_versions(config)
    mine = {v: a for v in (4, 6) if (a := node_address(me, v)) is not None}
    out: dict[IPAddress, PeerPlan] = {}

    if config.node_to_node_mesh_enabled:
        for other in nodes.values():
            if other.name == me.name:
                continue
            for v in versions:
                addr = node_address(other, v)
                if v not in mine or addr is None or addr == mine[v]:
                    continue
                # One session per pair, no connection race: the greater address waits.
                out[addr] = PeerPlan(
                    address=addr,
                    peer_as=decide_node_as(other, config),
                    local_as=local_as,
                    kind=MESH,
                    source="mesh",
                    passive=mine[v] > addr,
                    peer_node=other.name,
                    bfd_profile=config.node_to_node_mesh_bfd_profile,
                    families=decide_families(addr, me, config),
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
                if other.name == me.name or not matches(spec.peer_selector, other.labels):
                    continue
                asn = spec.as_number or decide_node_as(other, config)
                for v in versions:
                    addr = node_address(other, v)
                    if addr is not None:
                        targets.append((addr, asn, other.name))
        for addr, asn, node_name in targets:
            families = decide_families(addr, me, config)
            if addr == mine.get(addr.version) or not families:
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
                families=families,
            )
    return [out[a] for a in sorted(out)]
