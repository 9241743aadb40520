"""The route planner: from the host, the pools and the best routes to the
complete kernel state felix_lite wants. Pure: no I/O, no clock.

Each rule lives once, here:

``decide_encap``      which encapsulation a next hop needs (the pool-mode table
                      ``_ENCAP_RULES``): ``Always`` always tunnels,
                      ``CrossSubnet`` tunnels only off every connected subnet,
                      ``Never`` never does.
``plan_nexthop``      how a next hop is written for that decision:
                      DIRECT  ``via NH dev IFACE``                (host-gw style)
                      IPIP    ``via NH dev tunl0 onlink``
                      VXLAN   ``via VTEP_IP dev vxlan.mesh onlink`` plus a
                              permanent neighbour VTEP_IP -> MAC and an FDB
                              entry MAC -> NH on the vxlan device; IPv6
                              next hops use the IPv6 underlay's device
                              (vxlan-v6.mesh, Calico's vxlanModeV6)
                      FABRIC  ``via GW dev IFACE`` where GW/IFACE come from the
                              underlay route that covers NH (see below)
``plan_route``        one route per prefix; several next hops make one ECMP
                      multipath route. Mixed kinds keep only the best-ranked
                      kind (``_KIND_RANK``: direct, then tunnel, then fabric).
``plan_blackholes``   a blackhole route for each of the host's own blocks.
``plan_tunnel_mtu``   underlay MTU minus 20 (IPIP), 50 (VXLAN) or 70 (VXLAN over
                      IPv6), unless overridden.

``Never`` with an off-subnet next hop (FABRIC): Linux has no recursive next
hops; a gateway must be reachable through a link-scope (connected) route or
the kernel refuses the route with ENETUNREACH. Writing ``onlink`` instead
would make the host ARP for a next hop that is not on its segment, which only
works behind proxy-ARP. So, like BIRD's ``gateway recursive``, the planner
resolves the next hop once through the underlay routes it is given
(longest prefix match over ``PlanInput.underlay``, routes felix_lite does not
own) and installs ``via <that route's gateway> dev <its device>``: the packet
is handed to the fabric, which must know how to reach the pod block (the BGP
fabric does, that is what ``Never`` means). A next hop that no underlay route
covers is reported in ``PlanResult.unroutable`` and not installed.

ECMP through tunnels: each next hop is its own ``via X dev tunl0 onlink`` (or
``via VTEP dev vxlan onlink``) entry of one multipath route; the kernel hashes
flows over them and each entry encapsulates towards its own remote node.

Pools: a route belongs to the first pool whose cidr contains its prefix; a
prefix in no known pool is routed with no encapsulation (direct or fabric).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from netaddr import IPAddress, IPNetwork

from felix_lite.inputs import (
    IPIP_DEVICE,
    BestRoute,
    EncapMode,
    HostInterface,
    MtuOverrides,
    PlanInput,
    Pool,
    RemoteVtep,
    UnderlayRoute,
    VxlanParams,
)
from felix_lite.model import (
    FdbEntry,
    IpipDevice,
    KernelRoute,
    KernelState,
    NeighborEntry,
    NextHop,
    RouteKind,
    VxlanDevice,
    net_fields,
    prefix_text,
)

IPIP_OVERHEAD = 20  # outer IPv4 header
VXLAN_OVERHEAD = 50  # outer IPv4 (20) + UDP (8) + VXLAN (8) + inner Ethernet (14)
VXLAN6_OVERHEAD = 70  # the same with an outer IPv6 header (40)
_DEFAULT_MTU = 1500

# (mode, next hop on a connected subnet) -> does the pool's encapsulation apply?
_ENCAP_RULES: dict[tuple[EncapMode, bool], bool] = {
    (EncapMode.ALWAYS, True): True,
    (EncapMode.ALWAYS, False): True,
    (EncapMode.CROSS_SUBNET, True): False,
    (EncapMode.CROSS_SUBNET, False): True,
    (EncapMode.NEVER, True): False,
    (EncapMode.NEVER, False): False,
}

# When the next hops of one prefix need different kinds, only the first kind
# in this order is kept: a route has one kind, and the cheapest path wins.
_KIND_RANK: tuple[RouteKind, ...] = (
    RouteKind.DIRECT,
    RouteKind.VXLAN,
    RouteKind.IPIP,
    RouteKind.FABRIC,
)


@dataclass(frozen=True)
class Unroutable:
    """A best route (or one of its next hops) the planner could not install."""

    prefix: IPNetwork
    nexthop: IPAddress | None
    reason: str


@dataclass(frozen=True)
class PlanResult:
    state: KernelState
    unroutable: tuple[Unroutable, ...] = ()


@dataclass(frozen=True)
class PlannedHop:
    nexthop: NextHop
    kind: RouteKind
    neighbor: NeighborEntry | None = None
    fdb: FdbEntry | None = None
    # the next hops of a single-path route through this hop, made once and
    # shared by every such route (hops are cached per plan: 5 MB at 100k)
    alone: tuple[NextHop, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "alone", (self.nexthop,))


# --- small decisions ---------------------------------------------------------


def decide_pool(prefix: IPNetwork, pools: Iterable[Pool]) -> Pool | None:
    """The first pool whose cidr contains the whole prefix."""
    return _pool_of(prefix.version, prefix.prefixlen, prefix.value, pool_bounds(pools))


PoolBounds = tuple[tuple[int, int, int, Pool], ...]


def pool_bounds(pools: Iterable[Pool]) -> PoolBounds:
    """Each pool as (IP version, prefix length, network bits, pool): plain
    integers, read from netaddr once per plan, not once per route."""
    return tuple(
        (p.cidr.version, p.cidr.prefixlen, p.cidr.value >> _host_bits(p.cidr), p) for p in pools
    )


def _host_bits(net: IPNetwork) -> int:
    return (32 if net.version == 4 else 128) - net.prefixlen


def _pool_of(version: int, plen: int, value: int, bounds: PoolBounds) -> Pool | None:
    width = 32 if version == 4 else 128
    for pool_version, pool_plen, bits, pool in bounds:
        if pool_version == version and pool_plen <= plen and value >> (width - pool_plen) == bits:
            return pool
    return None


def decide_connected(nh: IPAddress, interfaces: Iterable[HostInterface]) -> HostInterface | None:
    """The up interface whose connected subnet holds ``nh`` (longest prefix wins)."""
    # A /32 (or /128) address has no neighbours: it connects nothing.
    matches = [
        (addr.prefixlen, iface)
        for iface in interfaces
        if iface.up
        for addr in iface.addresses
        if addr.version == nh.version and addr.size > 1 and nh in addr.cidr
    ]
    return max(matches, key=lambda m: m[0])[1] if matches else None


def decide_encap(pool: Pool | None, on_subnet: bool) -> RouteKind:
    """DIRECT, FABRIC, IPIP or VXLAN for one next hop."""
    if pool is not None:
        if _ENCAP_RULES[(pool.vxlan_mode, on_subnet)]:
            return RouteKind.VXLAN
        if _ENCAP_RULES[(pool.ipip_mode, on_subnet)]:
            return RouteKind.IPIP
    return RouteKind.DIRECT if on_subnet else RouteKind.FABRIC


def decide_underlay(nh: IPAddress, underlay: Iterable[UnderlayRoute]) -> UnderlayRoute | None:
    """Longest-prefix match of ``nh`` over the underlay routes."""
    matches = [r for r in underlay if r.dst.version == nh.version and nh in r.dst]
    return max(matches, key=lambda r: r.dst.prefixlen) if matches else None


def decide_main_interface(inp: PlanInput) -> HostInterface | None:
    """The interface that carries ``node_ip`` (or ``node_ip6``); without one, the up interface
    with an address and the smallest MTU (tunnels must fit the narrowest)."""
    candidates = [
        i
        for i in inp.interfaces
        if i.up
        and i.addresses
        and i.name not in (IPIP_DEVICE, inp.vxlan.name, inp.vxlan6.name, "lo")
    ]
    node_ips = {a for a in (inp.node_ip, inp.node_ip6) if a is not None}
    for i in candidates:
        if any(a.ip in node_ips for a in i.addresses):
            return i
    return min(candidates, key=lambda i: (i.mtu, i.name)) if candidates else None


def plan_tunnel_mtu(
    kind: RouteKind, underlay_mtu: int, overrides: MtuOverrides, version: int = 4
) -> int:
    """The MTU of the tunnel ``kind`` over the IP ``version`` underlay."""
    if kind is RouteKind.IPIP:
        return overrides.ipip if overrides.ipip is not None else underlay_mtu - IPIP_OVERHEAD
    if kind is RouteKind.VXLAN and version == 6:
        return overrides.vxlan6 if overrides.vxlan6 is not None else underlay_mtu - VXLAN6_OVERHEAD
    if kind is RouteKind.VXLAN:
        return overrides.vxlan if overrides.vxlan is not None else underlay_mtu - VXLAN_OVERHEAD
    raise ValueError(f"{kind} is not a tunnel")


# --- next hops and routes ----------------------------------------------------


def plan_nexthop(
    nh: IPAddress,
    kind: RouteKind,
    connected: HostInterface | None,
    inp: PlanInput,
    vteps: dict[IPAddress, RemoteVtep],
) -> PlannedHop | str:
    """The kernel next hop for ``nh`` routed as ``kind``, or why there is none."""
    if kind is RouteKind.DIRECT:
        assert connected is not None
        return PlannedHop(NextHop(nh, connected.name), kind)
    if kind is RouteKind.IPIP:
        return PlannedHop(NextHop(nh, IPIP_DEVICE, onlink=True), kind)
    if kind is RouteKind.VXLAN:
        vtep = vteps.get(nh)
        if vtep is None:
            return "no VTEP known for this next hop yet"
        dev = inp.vxlan6.name if vtep.node_ip.version == 6 else inp.vxlan.name
        return PlannedHop(
            NextHop(vtep.vtep_ip, dev, onlink=True),
            kind,
            NeighborEntry(dev, vtep.vtep_ip, vtep.mac.lower()),
            FdbEntry(dev, vtep.mac.lower(), vtep.node_ip),
        )
    if kind is RouteKind.FABRIC:
        via = decide_underlay(nh, inp.underlay)
        if via is None:
            return "off every connected subnet, no tunnel, and no underlay route covers it"
        return PlannedHop(NextHop(via.gateway if via.gateway is not None else nh, via.ifname), kind)
    raise ValueError(f"no next hop for {kind}")


def _decide_hop(ctx: PlanContext, nh: IPAddress, pool: Pool | None) -> PlannedHop | str:
    key = (nh, id(pool))  # pools are the same objects throughout one plan
    hop = ctx.hop_cache.get(key)
    if hop is None:
        if nh in ctx.own_addresses:
            hop = "next hop is this host"
        else:
            connected = decide_connected(nh, ctx.inp.interfaces)
            kind = decide_encap(pool, connected is not None)
            hop = plan_nexthop(nh, kind, connected, ctx.inp, ctx.vteps)
        ctx.hop_cache[key] = hop
    return hop


def _hop_for(ctx: PlanContext, nh: IPAddress, pool: Pool | None) -> PlannedHop | str:
    last = ctx.last_hop
    if last is not None and last[0] is nh and last[1] is pool:
        return last[2]
    hop = _decide_hop(ctx, nh, pool)
    ctx.last_hop = (nh, pool, hop)
    return hop


def plan_route(
    ctx: PlanContext, best: BestRoute, text: str | None = None
) -> tuple[KernelRoute | None, list[PlannedHop], list[Unroutable]]:
    """``ctx.hop_cache`` remembers each (next hop, pool) decision across the
    routes of one plan: a table of 100k prefixes has a handful of next hops.
    ``text`` is ``prefix_text(best.prefix)`` if the caller has it."""
    prefix = best.prefix
    version, plen, value = net_fields(prefix)  # this runs for every route planned
    pool = _pool_of(version, plen, value, ctx.pool_bounds)
    problems: list[Unroutable] = []
    if len(best.nexthops) == 1:  # nearly every route: no set, sort or rank
        nh = best.nexthops[0]
        hop = _hop_for(ctx, nh, pool)
        if isinstance(hop, str):
            return None, [], [Unroutable(prefix, nh, hop)]
        hops = [hop]
        kind, nexthops = hop.kind, hop.alone
    else:
        hops = []
        for nh in sorted(set(best.nexthops)):
            hop = _hop_for(ctx, nh, pool)
            if isinstance(hop, str):
                problems.append(Unroutable(prefix, nh, hop))
            else:
                hops.append(hop)
        if not hops:
            if not best.nexthops:
                problems.append(Unroutable(prefix, None, "no next hop"))
            return None, [], problems
        kind = min((h.kind for h in hops), key=_KIND_RANK.index)
        for h in hops:
            if h.kind is not kind:
                problems.append(
                    Unroutable(
                        prefix,
                        h.nexthop.gateway,
                        f"dropped {h.kind.value} hop from a {kind.value} route",
                    )
                )
        hops = [h for h in hops if h.kind is kind]
        nexthops = hops[0].alone if len(hops) == 1 else tuple(sorted({h.nexthop for h in hops}))
    # .cidr builds a new network; most prefixes already have no host bits.
    host_bits = (32 if version == 4 else 128) - plen
    dst = prefix if value >> host_bits << host_bits == value else prefix.cidr
    # Only tunnels have an MTU of their own (and an enum hashes in Python).
    tunnel = kind is RouteKind.IPIP or kind is RouteKind.VXLAN
    mtu = ctx.mtus.get((kind, version)) if tunnel else None
    return KernelRoute(dst, kind, nexthops, mtu, ctx.inp.table, text), hops, problems


def plan_blackholes(own_blocks: Iterable[IPNetwork], table: int) -> list[KernelRoute]:
    return [KernelRoute(dst=b.cidr, kind=RouteKind.BLACKHOLE, table=table) for b in own_blocks]


def _vxlan_device(
    params: VxlanParams, local: IPAddress | None, address: IPAddress | None, mtu: int
) -> VxlanDevice | None:
    if local is None:
        return None
    return VxlanDevice(
        name=params.name,
        vni=params.vni,
        port=params.port,
        local=local,
        parent=params.parent,
        address=address,
        mac=params.mac.lower() if params.mac else None,
        mtu=mtu,
    )


def plan_devices(
    inp: PlanInput, main: HostInterface | None, mtus: dict[tuple[RouteKind, int], int]
) -> tuple[IpipDevice | None, VxlanDevice | None, VxlanDevice | None]:
    """tunl0 exists when any pool uses IPIP, a VXLAN device per family whose
    pools use VXLAN (the IPv6 one only with an IPv6 underlay address)."""
    ipip = vxlan = vxlan6 = None
    if any(p.ipip_mode is not EncapMode.NEVER for p in inp.pools):
        ipip = IpipDevice(address=inp.ipip_tunnel_address, mtu=mtus[(RouteKind.IPIP, 4)])
    versions = {p.cidr.version for p in inp.pools if p.vxlan_mode is not EncapMode.NEVER}
    if 4 in versions:
        local = inp.node_ip
        if local is None and main is not None:
            local = next((a.ip for a in main.addresses if a.version == 4), None)
        vxlan = _vxlan_device(
            inp.vxlan, local, inp.vxlan_tunnel_address, mtus[(RouteKind.VXLAN, 4)]
        )
    if 6 in versions:
        vxlan6 = _vxlan_device(
            inp.vxlan6, inp.node_ip6, inp.vxlan_tunnel_address6, mtus[(RouteKind.VXLAN, 6)]
        )
    return ipip, vxlan, vxlan6


# --- the whole plan ----------------------------------------------------------


@dataclass
class PlanContext:
    """What the plans of every route share, derived once from the host part
    of a ``PlanInput`` (its ``routes`` are not looked at). ``hop_cache``
    remembers each (next hop, pool) decision: a table of 100k prefixes has a
    handful of next hops. Internal to the planners (this module and
    ``felix_lite.incremental``); not a value to hand around."""

    inp: PlanInput
    main: HostInterface | None
    mtus: dict[tuple[RouteKind, int], int]
    vteps: dict[IPAddress, RemoteVtep]
    own_addresses: frozenset[IPAddress]
    pool_bounds: PoolBounds
    # Routes are keyed by their prefix text (KernelRoute.key), which each
    # route computes once: hashing netaddr objects dominated 100k-route plans.
    blackholes: dict[str, KernelRoute]
    ipip: IpipDevice | None
    vxlan: VxlanDevice | None
    vxlan6: VxlanDevice | None
    hop_cache: dict[tuple[IPAddress, int], PlannedHop | str]
    # The last (next hop, pool) decided, matched by identity: the routes of
    # one BGP UPDATE share their next-hop object, and hashing an IPAddress
    # for hop_cache is a Python call.
    last_hop: tuple[IPAddress, Pool | None, PlannedHop | str] | None = None


def plan_context(inp: PlanInput) -> PlanContext:
    main = decide_main_interface(inp)
    underlay_mtu = main.mtu if main is not None else _DEFAULT_MTU
    mtus = {
        (kind, version): plan_tunnel_mtu(kind, underlay_mtu, inp.mtu, version)
        for kind, version in ((RouteKind.IPIP, 4), (RouteKind.VXLAN, 4), (RouteKind.VXLAN, 6))
    }
    ipip, vxlan, vxlan6 = plan_devices(inp, main, mtus)
    return PlanContext(
        inp=inp,
        main=main,
        mtus=mtus,
        vteps={v.node_ip: v for v in inp.vteps},
        own_addresses=frozenset(a.ip for i in inp.interfaces for a in i.addresses),
        pool_bounds=pool_bounds(inp.pools),
        blackholes={r.key[1]: r for r in plan_blackholes(inp.own_blocks, inp.table)},
        ipip=ipip,
        vxlan=vxlan,
        vxlan6=vxlan6,
        hop_cache={},
    )


def plan_one(
    ctx: PlanContext, best: BestRoute, text: str | None = None
) -> tuple[KernelRoute | None, list[PlannedHop], list[Unroutable]]:
    """The kernel route for one best route, the hops it uses and what could
    not be installed (``text``: ``prefix_text(best.prefix)``, if the caller
    has it). A best route for one of our own blocks plans nothing: the
    blackhole (plus the pods' /32s) is the truth."""
    if ctx.blackholes and (text or prefix_text(best.prefix)) in ctx.blackholes:
        return None, [], []
    return plan_route(ctx, best, text)


def _route_order(b: BestRoute) -> tuple[int, int, int]:
    """A stable order of best routes that costs no netaddr object."""
    return (b.prefix.version, b.prefix.value, b.prefix.prefixlen)


def plan_kernel(inp: PlanInput) -> PlanResult:
    """The whole desired state from scratch: the reference the incremental
    planner (``felix_lite.incremental``) is checked against."""
    ctx = plan_context(inp)
    routes = dict(ctx.blackholes)
    neighbors: set[NeighborEntry] = set()
    fdb: set[FdbEntry] = set()
    unroutable: list[Unroutable] = []
    for best in sorted(inp.routes, key=_route_order):
        route, hops, problems = plan_one(ctx, best)
        unroutable.extend(problems)
        if route is None:
            continue
        if route.key[1] in routes:
            unroutable.append(Unroutable(best.prefix, None, "prefix given twice; first kept"))
            continue
        routes[route.key[1]] = route
        for h in hops:
            if h.neighbor is not None:
                neighbors.add(h.neighbor)
            if h.fdb is not None:
                fdb.add(h.fdb)
    state = KernelState(
        routes=frozenset(routes.values()),
        neighbors=frozenset(neighbors),
        fdb=frozenset(fdb),
        ipip=ctx.ipip,
        vxlan=ctx.vxlan,
        vxlan6=ctx.vxlan6,
    )
    return PlanResult(state, tuple(unroutable))


def plan_kernel_state(inp: PlanInput) -> KernelState:
    return plan_kernel(inp).state
