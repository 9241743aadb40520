"""The planner is family-blind: the same topology written in IPv4 and in
IPv6 (every address and prefix embedded in fd00::/96) gets the same route
kinds, the same next hops and the same refusals (Hypothesis); only the
VXLAN device differs (IPv6 runs over its own, ``vxlan-v6.mesh``)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from netaddr import IPAddress, IPNetwork

from felix_lite.inputs import (
    VXLAN_DEVICE,
    VXLAN_V6_DEVICE,
    BestRoute,
    EncapMode,
    HostInterface,
    PlanInput,
    Pool,
    RemoteVtep,
    UnderlayRoute,
)
from felix_lite.model import KernelRoute, RouteKind
from felix_lite.planner import plan_kernel

EMBED = int(IPAddress("fd00::"))


def v6(a: IPAddress) -> IPAddress:
    return IPAddress(EMBED | int(a), 6)


def v6net(n: IPNetwork) -> IPNetwork:
    return IPNetwork((EMBED | int(n.ip), n.prefixlen + 96), version=6)


def to_v6(inp: PlanInput) -> PlanInput:
    """``inp`` with every address and prefix moved into fd00::/96."""
    return PlanInput(
        interfaces=tuple(
            HostInterface(i.name, tuple(v6net(a) for a in i.addresses), i.mtu, i.up)
            for i in inp.interfaces
        ),
        pools=tuple(Pool(v6net(p.cidr), p.ipip_mode, p.vxlan_mode) for p in inp.pools),
        own_blocks=tuple(v6net(b) for b in inp.own_blocks),
        routes=tuple(
            BestRoute(v6net(r.prefix), tuple(v6(h) for h in r.nexthops)) for r in inp.routes
        ),
        node_ip6=v6(inp.node_ip) if inp.node_ip else None,
        vteps=tuple(RemoteVtep(v6(v.node_ip), v6(v.vtep_ip), v.mac) for v in inp.vteps),
        underlay=tuple(
            UnderlayRoute(v6net(u.dst), v6(u.gateway) if u.gateway else None, u.ifname)
            for u in inp.underlay
        ),
    )


def summary(routes: frozenset[KernelRoute], embed: bool) -> set[tuple[object, ...]]:
    """Each route's prefix, kind and next hops, in IPv4 terms (the IPv6
    VXLAN device named as the IPv4 one)."""
    devices = {VXLAN_V6_DEVICE: VXLAN_DEVICE} if embed else {}

    def back(a: IPAddress) -> IPAddress:
        return IPAddress(int(a) - EMBED, 4) if embed else a

    def back_net(n: IPNetwork) -> IPNetwork:
        return IPNetwork((int(n.ip) - EMBED, n.prefixlen - 96)) if embed else n

    return {
        (
            back_net(r.dst),
            r.kind,
            tuple(
                (back(h.gateway), devices.get(h.ifname, h.ifname), h.onlink)
                for h in r.nexthops
                if h.gateway
            ),
        )
        for r in routes
    }


NODE = IPAddress("192.0.2.10")
SUBNETS = ("192.0.2.10/24", "192.0.2.10/28", "203.0.113.1/24")
NEXT_HOPS = [IPAddress(a) for a in ("192.0.2.20", "192.0.2.10", "198.51.100.7", "203.0.113.9")]
BLOCKS = [IPNetwork(f"10.244.{i}.0/26") for i in range(6)] + [IPNetwork("172.16.0.0/24")]
MODES = st.sampled_from(list(EncapMode))


@st.composite
def topologies(draw: st.DrawFn) -> PlanInput:
    eth0 = HostInterface("eth0", (IPNetwork(draw(st.sampled_from(SUBNETS[:2]))),), 1500)
    ifaces = [eth0]
    if draw(st.booleans()):
        ifaces.append(HostInterface("eth1", (IPNetwork(SUBNETS[2]),), 9000, draw(st.booleans())))
    routes = [
        BestRoute(b, tuple(draw(st.lists(st.sampled_from(NEXT_HOPS), min_size=1, max_size=3))))
        for b in draw(st.lists(st.sampled_from(BLOCKS), unique=True, max_size=5))
    ]
    vtep_nodes = draw(st.lists(st.sampled_from(NEXT_HOPS), unique=True))
    underlay = [UnderlayRoute(IPNetwork("0.0.0.0/0"), IPAddress("192.0.2.1"), "eth0")]
    return PlanInput(
        interfaces=tuple(ifaces),
        pools=(Pool(IPNetwork("10.244.0.0/16"), vxlan_mode=draw(MODES)),),
        own_blocks=tuple(draw(st.lists(st.sampled_from(BLOCKS[:3]), unique=True, max_size=2))),
        routes=tuple(routes),
        node_ip=NODE,
        vteps=tuple(
            RemoteVtep(n, IPAddress(f"10.244.250.{i}"), f"66:77:88:99:aa:{i:02x}")
            for i, n in enumerate(vtep_nodes)
        ),
        underlay=tuple(underlay if draw(st.booleans()) else ()),
    )


@settings(max_examples=300, deadline=None)
@given(topologies())
def test_ipv4_and_ipv6_get_the_same_route_kinds(inp: PlanInput) -> None:
    four, six = plan_kernel(inp), plan_kernel(to_v6(inp))
    assert summary(six.state.routes, embed=True) == summary(four.state.routes, embed=False)
    assert {r.dst.version for r in six.state.routes} <= {6}
    assert [u.reason for u in six.unroutable] == [u.reason for u in four.unroutable]
    assert (four.state.vxlan is None) == (six.state.vxlan6 is None)
    kinds = {r.kind for r in four.state.routes}
    assert kinds <= {RouteKind.DIRECT, RouteKind.FABRIC, RouteKind.VXLAN, RouteKind.BLACKHOLE}
