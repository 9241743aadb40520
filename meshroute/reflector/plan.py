"""Which sessions a reflector has and the BIRD configuration that carries
them. Pure.

Clients are found by inverting the nodes' own peering (``plan_peers``): a
node whose BGPPeer selection gives it a session to this reflector's address
is a client, with that session's password, TTL security, hold time, graceful
restart time and max-prefix. Reflectors that share this one's cluster id
peer with it as non-clients. Sessions the reflector itself is selected for
(a ToR above it, say) are plain peers.

Both families are reflected: a reflector with an IPv6 address has the
sessions the nodes' ``plan_peers`` gives it on that address too (and, with
``ipv6Transport: MultiProtocol``, an IPv6 channel on its IPv4 sessions)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from netaddr import IPAddress

from bgpd.bird_config import BfdOptions, BgpNeighbor, BirdConfig, password_problem
from meshroute.peering import (
    decide_families,
    decide_node_as,
    decide_session_versions,
    node_address,
    plan_peers,
)
from meshroute.registry import NodeRecord
from meshroute.resources import BFDProfileSpec, BGPConfigurationSpec, BGPPeerSpec

REFLECTOR_LABEL = "route-reflector"
CLUSTER_ID_LABEL = "meshroute.io/route-reflector-cluster-id"

CLIENT = "client"
REFLECTOR = "reflector"  # same cluster id: non-client iBGP
PEER = "peer"  # selected for this reflector by a BGPPeer (a ToR, say)
ROLE_PREFIX = {CLIENT: "c", REFLECTOR: "rr", PEER: "p"}


@dataclass(frozen=True)
class ReflectorSession:
    address: IPAddress
    peer_as: int
    role: str  # CLIENT | REFLECTOR | PEER
    node: str | None = None
    source: str = ""  # the BGPPeer (or "cluster") the session comes from
    passive: bool = False
    password: str | None = field(default=None, repr=False)
    ttl_security: int | None = None
    hold_time: int = 90
    graceful_restart_time: int = 120
    max_prefix: int | None = None
    max_prefix_action: str = "drop"
    bfd_profile: str | None = None
    families: tuple[int, ...] = (4,)  # IP versions of the routes the session carries

    @property
    def protocol(self) -> str:
        """BIRD protocol name: stable per address and role, so an unrelated
        change leaves the protocol's text, and so its session, alone."""
        addr = str(self.address).replace(".", "_").replace(":", "_")
        return f"{ROLE_PREFIX[self.role]}_{addr}"


@dataclass(frozen=True)
class Tuning:
    """Timers that are not in the resources (reflector.yaml ``bird``)."""

    connect_delay: int | None = None
    connect_retry: int | None = None
    error_wait: tuple[int, int] | None = None


def cluster_id_of(rec: NodeRecord) -> str | None:
    return rec.labels.get(CLUSTER_ID_LABEL)


def plan_sessions(
    me: NodeRecord,
    nodes: Mapping[str, NodeRecord],
    config: BGPConfigurationSpec,
    peers: Mapping[str, BGPPeerSpec],
) -> list[ReflectorSession]:
    """Raises SelectorError when a BGPPeer's selector does not parse."""
    mine = {v: a for v in (4, 6) if (a := node_address(me, v)) is not None}
    if 4 not in mine:
        raise ValueError(f"reflector {me.name} has no IPv4 address")
    my_cluster = cluster_id_of(me)
    local_as = decide_node_as(me, config)
    everyone = {**nodes, me.name: me}
    versions = decide_session_versions(config)
    out: dict[IPAddress, ReflectorSession] = {}
    for other in sorted(everyone.values(), key=lambda n: n.name):
        if other.name == me.name:
            continue
        if my_cluster is not None and cluster_id_of(other) == my_cluster:
            for v in versions:
                addr = node_address(other, v)
                if addr is None or v not in mine or addr == mine[v]:
                    continue
                out[addr] = ReflectorSession(
                    address=addr,
                    peer_as=decide_node_as(other, config),
                    role=REFLECTOR,
                    node=other.name,
                    source="cluster",
                    # one session per pair, no connection race: the greater address waits
                    passive=mine[v] > addr,
                    families=decide_families(addr, me, config),
                )
            continue
        # Only sessions to my addresses matter, and those depend on my record
        # alone: plan with the two of us (O(nodes), not O(nodes^2)).
        for p in plan_peers(other, {other.name: other, me.name: me}, config, peers):
            addr = node_address(other, p.address.version)
            if p.address != mine.get(p.address.version) or addr is None:
                continue
            out[addr] = ReflectorSession(
                address=addr,
                peer_as=p.local_as,
                role=CLIENT if p.local_as == local_as else PEER,
                node=other.name,
                source=p.source,
                # the side that is not waiting connects
                passive=not p.passive,
                password=p.password,
                ttl_security=p.ttl_security,
                hold_time=p.hold_time,
                graceful_restart_time=p.graceful_restart_time,
                max_prefix=p.max_prefix,
                max_prefix_action=p.max_prefix_action,
                bfd_profile=p.bfd_profile,
                families=p.families,
            )
    for p in plan_peers(me, everyone, config, peers):
        if p.address in out:
            continue
        out[p.address] = ReflectorSession(
            address=p.address,
            peer_as=p.peer_as,
            role=PEER,
            node=p.peer_node,
            source=p.source,
            passive=p.passive,
            password=p.password,
            ttl_security=p.ttl_security,
            hold_time=p.hold_time,
            graceful_restart_time=p.graceful_restart_time,
            max_prefix=p.max_prefix,
            max_prefix_action=p.max_prefix_action,
            bfd_profile=p.bfd_profile,
            families=p.families,
        )
    return [out[a] for a in sorted(out)]


def bfd_options(p: BFDProfileSpec) -> BfdOptions:
    return BfdOptions(p.receive_interval, p.transmit_interval, p.detect_multiplier, p.passive_mode)


def plan_bird_config(
    *,
    router_id: IPAddress,
    local_address: IPAddress,
    local_as: int,
    cluster_id: str | None,
    sessions: list[ReflectorSession],
    port: int = 179,
    tuning: Tuning = Tuning(),
    log_file: str | None = None,
    bfd_profiles: Mapping[str, BFDProfileSpec] | None = None,
    local_address6: IPAddress | None = None,
) -> BirdConfig:
    """Everything learned over BGP is reflected (BIRD applies RFC 4456's
    client/non-client rules and sets ORIGINATOR_ID and CLUSTER_LIST; next
    hops stay as the originator set them). Connected and kernel routes are
    imported only to resolve iBGP next hops, never exported. A session whose
    BGPPeer names a BFD profile gets BIRD's BFD with the same timers as the
    node's side (a profile that does not exist: no BFD)."""
    profiles = bfd_profiles or {}

    def bfd(s: ReflectorSession) -> BfdOptions | None:
        p = profiles.get(s.bfd_profile) if s.bfd_profile else None
        return bfd_options(p) if p is not None else None

    local = {4: local_address, 6: local_address6}
    neighbors = tuple(
        BgpNeighbor(
            name=s.protocol,
            address=str(s.address),
            peer_as=s.peer_as,
            local_address=str(local[s.address.version]),
            import_filter="all",
            export_filter="bgp",
            passive=s.passive,
            password=s.password,
            rr_client=s.role == CLIENT,
            hold_time=s.hold_time,
            graceful_restart=s.graceful_restart_time > 0,
            graceful_restart_time=s.graceful_restart_time,
            connect_delay=tuning.connect_delay,
            connect_retry=tuning.connect_retry,
            error_wait=tuning.error_wait,
            ttl_security=s.ttl_security,
            import_limit=s.max_prefix,
            import_limit_action="block" if s.max_prefix_action == "drop" else "restart",
            port=port if port != 179 else None,
            bfd=bfd(s),
            channels=tuple(f"ipv{v}" for v in s.families),
        )
        for s in sessions
        if local[s.address.version] is not None
    )
    return BirdConfig(
        router_id=str(router_id),
        local_as=local_as,
        neighbors=neighbors,
        direct_interfaces=("*",),
        kernel_learn=True,
        ipv6=local_address6 is not None,
        rr_cluster_id=cluster_id,
        log_file=log_file,
        iso_times=True,
        header="rendered by meshroute reflector; edits are overwritten",
    )


def session_problems(sessions: list[ReflectorSession]) -> list[str]:
    """What BIRD could not take, named by the resource it came from."""
    out = []
    for s in sessions:
        if s.password is not None:
            why = password_problem(s.password)
            if why is not None:
                out.append(f"BGPPeer {s.source}: spec.password: {why}")
    return sorted(set(out))
