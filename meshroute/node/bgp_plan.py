"""The node's BGP decisions (pure): ExaBGP's configuration from the peer
plan, what bgpd's import policy must know, what to announce, and how bgpd's
best routes become felix_lite's input."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from netaddr import IPAddress, IPNetwork

from bgpd.exabgp_config import ExabgpConfig, NeighborConfig
from bgpd.model import Announce
from bgpd.model import BestRoute as BgpBest
from bgpd.policy import ImportContext, MaxPrefixAction, PoolRule
from bgpd.sessions import SessionPeer
from felix_lite.inputs import BestRoute as FelixBest
from meshroute.node.config import NodeConfig
from meshroute.node.plan import own_blocks
from meshroute.node.view import ClusterView
from meshroute.peering import PeerPlan


def plan_exabgp_config(
    config: NodeConfig, local_as: int, listen_port: int, peers: Iterable[PeerPlan]
) -> ExabgpConfig:
    return ExabgpConfig(
        router_id=config.router_id,
        local_as=local_as,
        neighbors=tuple(
            NeighborConfig(
                address=p.address,
                peer_as=p.peer_as,
                local_address=config.ipv4.ip,
                password=p.password,
                ttl_security=p.ttl_security,
                hold_time=p.hold_time,
                graceful_restart=p.graceful_restart_time or None,
                passive=p.passive,
                description=f"{p.kind}: {p.source}",
            )
            for p in peers
            if p.address.version == 4
        ),
        api_run=(),  # the speaker fills in its relay
        listen=(config.ipv4.ip, listen_port),
    )


def plan_import_context(
    view: ClusterView, config: NodeConfig, tunnel_address: IPAddress | None, local_as: int
) -> ImportContext:
    pools = tuple(
        PoolRule(p.cidr, p.block_size)
        for p in sorted(view.ipam.pools.values(), key=lambda p: p.name)
        if not p.disabled
    )
    own = {config.ipv4.ip} | ({tunnel_address} if tunnel_address else set())
    return ImportContext(
        pools=pools,
        own_blocks=frozenset(own_blocks(view, config.node_name)),
        own_addresses=frozenset(own),
        local_as=local_as,
    )


def plan_bgp_announcements(
    prefixes: Iterable[IPNetwork], communities: Iterable[tuple[int, int]]
) -> dict[IPNetwork, Announce]:
    cs = tuple(communities)
    return {p: Announce(p, None, cs) for p in prefixes}  # next-hop self


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
    changes: Mapping[IPNetwork, BgpBest | None],
) -> dict[IPNetwork, FelixBest | None]:
    """bgpd's changed winners as felix_lite's changes; a route without next
    hops has nothing to install, as one that is gone."""
    return {
        p: FelixBest(b.prefix, b.next_hops) if b is not None and b.next_hops else None
        for p, b in changes.items()
    }
