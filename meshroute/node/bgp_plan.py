"""The node's BGP decisions (pure): ExaBGP's configuration from the peer
plan, what bgpd's import policy must know, what to announce, and how bgpd's
best routes become felix_lite's input."""

from __future__ import annotations

from collections.abc import Iterable

from netaddr import IPAddress, IPNetwork

from bgpd.exabgp_config import ExabgpConfig, NeighborConfig
from bgpd.model import Announce
from bgpd.model import BestRoute as BgpBest
from bgpd.policy import ImportContext, MaxPrefixAction, PoolRule
from bgpd.sessions import SessionPeer
from felix_lite.gc_pause import gc_paused
from felix_lite.inputs import BestRoute as FelixBest
from meshroute.node.config import NodeConfig
from meshroute.node.plan import own_blocks
from meshroute.node.view import ClusterView
from meshroute.peering import PeerPlan


def plan_exabgp_config(
    config: NodeConfig, local_as: int, listen_port: int, peers: Iterable[PeerPlan]
) -> ExabgpConfig:
    """A session is sourced from the node's address of the peer's family;
    peering leaves out IPv6 peers of a node without an IPv6 address."""
    local = {4: config.ipv4.ip, 6: config.ipv6.ip if config.ipv6 else None}
    return ExabgpConfig(
        router_id=config.router_id,
        local_as=local_as,
        neighbors=tuple(
            NeighborConfig(
                address=p.address,
                peer_as=p.peer_as,
                local_address=local[p.address.version],
                password=p.password,
                ttl_security=p.ttl_security,
                hold_time=p.hold_time,
                graceful_restart=p.graceful_restart_time or None,
                passive=p.passive,
                description=f"{p.kind}: {p.source}",
                ipv4=4 in p.families,
                ipv6=6 in p.families,
            )
            for p in peers
            if local[p.address.version] is not None
        ),
        api_run=(),  # the speaker fills in its relay
        listen=(config.ipv4.ip, listen_port),
        listen_v6=local[6],
    )


def plan_import_context(
    view: ClusterView, config: NodeConfig, tunnel_address: IPAddress | None, local_as: int
) -> ImportContext:
    # A disabled pool hands out no new addresses; its pods keep their routes.
    pools = tuple(
        PoolRule(p.cidr, p.block_size)
        for p in sorted(view.ipam.pools.values(), key=lambda p: p.name)
    )
    own = {config.ipv4.ip} | {a.ip for a in (config.ipv6,) if a is not None}
    own |= {tunnel_address} if tunnel_address else set()
    return ImportContext(
        pools=pools,
        own_blocks=frozenset(own_blocks(view, config.node_name)),
        own_addresses=frozenset(own),
        local_as=local_as,
    )


def plan_bgp_announcements(
    prefixes: Iterable[IPNetwork],
    communities: Iterable[tuple[int, int]],
    ipv6_next_hop: IPAddress | None,
) -> dict[IPNetwork, Announce]:
    """IPv4 prefixes go out with next-hop self. IPv6 prefixes name the
    node's IPv6 address: over an IPv4 session (MP-BGP) "self" would be an
    IPv4 address; without an IPv6 address they are not announced."""
    cs = tuple(communities)
    out: dict[IPNetwork, Announce] = {}
    for p in prefixes:
        if p.version == 4:
            out[p] = Announce(p, None, cs)
        elif ipv6_next_hop is not None:
            out[p] = Announce(p, ipv6_next_hop, cs)
    return out


def session_peer(p: PeerPlan) -> SessionPeer:
    return SessionPeer(
        address=p.address,
        asn=p.peer_as,
        ebgp=p.peer_as != p.local_as,
        graceful_restart_s=p.graceful_restart_time,
        max_prefix=p.max_prefix,
        max_prefix_action=MaxPrefixAction(p.max_prefix_action),
    )


def to_felix_changes(
    changes: Iterable[tuple[IPNetwork, BgpBest | None]],
) -> list[tuple[IPNetwork, FelixBest | None]]:
    """bgpd's changed winners as felix_lite's changes; a route without next
    hops has nothing to install, as one that is gone. Pairs, as bgpd hands
    them over: a dict would hash every IPNetwork (~1.5 us each). Built
    with the cyclic GC paused: a whole table's worth made a full collection
    that freed nothing."""
    with gc_paused():
        return [
            (p, FelixBest(b.prefix, b.next_hops) if b is not None and b.next_hops else None)
            for p, b in changes
        ]
