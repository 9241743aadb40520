"""The route planner's rules, one test (or a few) per rule."""

from __future__ import annotations

from dataclasses import replace

import pytest
from netaddr import IPAddress, IPNetwork

from felix_lite.inputs import (
    BestRoute,
    EncapMode,
    HostInterface,
    MtuOverrides,
    PlanInput,
    Pool,
    RemoteVtep,
    UnderlayRoute,
)
from felix_lite.model import FdbEntry, KernelRoute, NeighborEntry, NextHop, RouteKind
from felix_lite.planner import (
    decide_connected,
    decide_encap,
    decide_pool,
    plan_kernel,
    plan_kernel_state,
)

A = IPAddress
N = IPNetwork
ETH0 = HostInterface("eth0", (N("192.0.2.10/24"),), 1500)
POOL = N("10.244.0.0/16")
SAME = A("192.0.2.20")  # a node on our subnet
OTHER = A("198.51.100.7")  # a node behind a router
OTHER2 = A("198.51.100.8")
BLOCK = N("10.244.1.0/26")
VTEP = RemoteVtep(OTHER, A("10.244.9.0"), "66:77:88:99:AA:BB")
VTEP_SAME = RemoteVtep(SAME, A("10.244.8.0"), "66:77:88:99:aa:01")
DEFAULT = UnderlayRoute(N("0.0.0.0/0"), A("192.0.2.1"), "eth0")


def inp(mode_ipip: str = "Never", mode_vxlan: str = "Never", **kw: object) -> PlanInput:
    base: dict[str, object] = {
        "interfaces": (ETH0,),
        "pools": (Pool(POOL, EncapMode(mode_ipip), EncapMode(mode_vxlan)),),
        "node_ip": A("192.0.2.10"),
        "vteps": (VTEP, VTEP_SAME),
        "underlay": (DEFAULT,),
    }
    base.update(kw)
    return PlanInput(**base)  # type: ignore[arg-type]


def one_route(p: PlanInput) -> KernelRoute:
    (r,) = plan_kernel_state(p).routes
    return r


def best(nh: IPAddress, *more: IPAddress, prefix: str = "10.244.2.0/26") -> tuple[BestRoute, ...]:
    return (BestRoute(N(prefix), (nh, *more)),)


# --- the decision table ------------------------------------------------------


@pytest.mark.parametrize(
    ("ipip", "vxlan", "on_subnet", "kind"),
    [
        ("Never", "Never", True, RouteKind.DIRECT),
        ("Never", "Never", False, RouteKind.FABRIC),
        ("Always", "Never", True, RouteKind.IPIP),
        ("Always", "Never", False, RouteKind.IPIP),
        ("CrossSubnet", "Never", True, RouteKind.DIRECT),
        ("CrossSubnet", "Never", False, RouteKind.IPIP),
        ("Never", "Always", True, RouteKind.VXLAN),
        ("Never", "Always", False, RouteKind.VXLAN),
        ("Never", "CrossSubnet", True, RouteKind.DIRECT),
        ("Never", "CrossSubnet", False, RouteKind.VXLAN),
    ],
)
def test_decide_encap_table(ipip: str, vxlan: str, on_subnet: bool, kind: RouteKind) -> None:
    pool = Pool(POOL, EncapMode(ipip), EncapMode(vxlan))
    assert decide_encap(pool, on_subnet) is kind


def test_no_pool_means_no_encapsulation() -> None:
    assert decide_encap(None, True) is RouteKind.DIRECT
    assert decide_encap(None, False) is RouteKind.FABRIC


def test_pool_with_both_encapsulations_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot both"):
        Pool(POOL, EncapMode.ALWAYS, EncapMode.CROSS_SUBNET)


def test_decide_pool_needs_the_whole_prefix_inside() -> None:
    pools = (Pool(N("10.244.0.0/16")), Pool(N("10.0.0.0/8"), EncapMode.ALWAYS))
    assert decide_pool(N("10.244.3.0/26"), pools) is pools[0]
    assert decide_pool(N("10.5.0.0/26"), pools) is pools[1]
    assert decide_pool(N("10.0.0.0/7"), pools) is None
    assert decide_pool(N("203.0.113.0/24"), pools) is None


def test_decide_connected_longest_match_and_up_only() -> None:
    wide = HostInterface("eth1", (N("192.0.0.0/16"),), 9000)
    down = HostInterface("eth2", (N("192.0.2.0/28"),), 1500, up=False)
    host32 = HostInterface("lo", (N("192.0.2.20/32"),), 65536)
    assert decide_connected(SAME, (wide, ETH0, down, host32)) is ETH0
    assert decide_connected(A("192.0.9.9"), (wide, ETH0)) is wide
    assert decide_connected(OTHER, (wide, ETH0)) is None


# --- each kind of route ------------------------------------------------------


def test_direct_route_on_connected_subnet() -> None:
    r = one_route(inp(routes=best(SAME)))
    assert r == KernelRoute(N("10.244.2.0/26"), RouteKind.DIRECT, (NextHop(SAME, "eth0"),))


@pytest.mark.parametrize(
    ("mode", "nh"), [("Always", SAME), ("Always", OTHER), ("CrossSubnet", OTHER)]
)
def test_ipip_route_via_tunl0_onlink_with_mtu(mode: str, nh: IPAddress) -> None:
    r = one_route(inp(mode_ipip=mode, routes=best(nh)))
    assert r.kind is RouteKind.IPIP
    assert r.nexthops == (NextHop(nh, "tunl0", onlink=True),)
    assert r.mtu == 1480


def test_ipip_cross_subnet_stays_direct_on_subnet() -> None:
    r = one_route(inp(mode_ipip="CrossSubnet", routes=best(SAME)))
    assert r.kind is RouteKind.DIRECT and r.mtu is None


@pytest.mark.parametrize(("mode", "vtep"), [("Always", VTEP_SAME), ("CrossSubnet", VTEP)])
def test_vxlan_route_via_vtep_with_neighbor_and_fdb(mode: str, vtep: RemoteVtep) -> None:
    st = plan_kernel_state(inp(mode_vxlan=mode, routes=best(vtep.node_ip)))
    (r,) = st.routes
    assert r.kind is RouteKind.VXLAN
    assert r.nexthops == (NextHop(vtep.vtep_ip, "vxlan.mesh", onlink=True),)
    assert r.mtu == 1450
    mac = vtep.mac.lower()
    assert st.neighbors == {NeighborEntry("vxlan.mesh", vtep.vtep_ip, mac)}
    assert st.fdb == {FdbEntry("vxlan.mesh", mac, vtep.node_ip)}


def test_vxlan_without_vtep_data_is_reported_not_installed() -> None:
    res = plan_kernel(inp(mode_vxlan="Always", vteps=(), routes=best(OTHER)))
    assert not res.state.routes
    assert [u.nexthop for u in res.unroutable] == [OTHER]
    assert "VTEP" in res.unroutable[0].reason


def test_never_off_subnet_is_a_fabric_route_resolved_through_the_underlay() -> None:
    specific = UnderlayRoute(N("198.51.100.0/24"), A("192.0.2.254"), "eth0")
    r = one_route(inp(routes=best(OTHER), underlay=(DEFAULT, specific)))
    assert r.kind is RouteKind.FABRIC
    assert r.nexthops == (NextHop(A("192.0.2.254"), "eth0"),)
    assert r.mtu is None


def test_fabric_next_hop_behind_a_device_route_is_used_as_is() -> None:
    devroute = UnderlayRoute(N("198.51.100.0/24"), None, "eth1")
    r = one_route(inp(routes=best(OTHER), underlay=(devroute,)))
    assert r.nexthops == (NextHop(OTHER, "eth1"),)


def test_fabric_next_hop_with_no_underlay_route_is_unroutable() -> None:
    res = plan_kernel(inp(routes=best(OTHER), underlay=()))
    assert not res.state.routes
    assert res.unroutable[0].nexthop == OTHER


def test_prefix_outside_every_pool_is_never_encapsulated() -> None:
    r = one_route(inp(mode_ipip="Always", routes=best(SAME, prefix="203.0.113.0/24")))
    assert r.kind is RouteKind.DIRECT
    r = one_route(inp(mode_ipip="Always", routes=best(OTHER, prefix="203.0.113.0/24")))
    assert r.kind is RouteKind.FABRIC


def test_blackhole_for_each_own_block_and_it_wins_over_a_learnt_route() -> None:
    other_block = N("10.244.1.64/26")
    st = plan_kernel_state(
        inp(own_blocks=(BLOCK, other_block), routes=(BestRoute(BLOCK, (SAME,)),))
    )
    assert st.routes == {
        KernelRoute(BLOCK, RouteKind.BLACKHOLE),
        KernelRoute(other_block, RouteKind.BLACKHOLE),
    }


def test_next_hop_that_is_this_host_is_skipped() -> None:
    res = plan_kernel(inp(routes=best(A("192.0.2.10"))))
    assert not res.state.routes
    assert res.unroutable[0].reason == "next hop is this host"


# --- ECMP --------------------------------------------------------------------


def test_equal_direct_next_hops_make_one_multipath_route() -> None:
    third = A("192.0.2.30")
    r = one_route(inp(routes=best(third, SAME, third)))
    assert r.kind is RouteKind.DIRECT
    assert r.nexthops == (NextHop(SAME, "eth0"), NextHop(third, "eth0"))


def test_equal_tunnel_next_hops_make_one_multipath_route_over_tunl0() -> None:
    r = one_route(inp(mode_ipip="Always", routes=best(OTHER2, OTHER)))
    assert r.nexthops == (
        NextHop(OTHER, "tunl0", onlink=True),
        NextHop(OTHER2, "tunl0", onlink=True),
    )


def test_mixed_kinds_keep_the_direct_hops() -> None:
    res = plan_kernel(inp(mode_ipip="CrossSubnet", routes=best(OTHER, SAME)))
    (r,) = res.state.routes
    assert r.kind is RouteKind.DIRECT
    assert r.nexthops == (NextHop(SAME, "eth0"),)
    assert [u.nexthop for u in res.unroutable] == [OTHER]


# --- MTU ---------------------------------------------------------------------


def test_tunnel_mtu_follows_the_main_interface() -> None:
    jumbo = HostInterface("eth0", (N("192.0.2.10/24"),), 9000)
    st = plan_kernel_state(inp(mode_ipip="Always", interfaces=(jumbo,), routes=best(OTHER)))
    (r,) = st.routes
    assert r.mtu == 8980
    assert st.ipip is not None and st.ipip.mtu == 8980


def test_main_interface_is_the_one_with_node_ip_else_the_narrowest() -> None:
    narrow = HostInterface("eth1", (N("203.0.113.5/24"),), 1400)
    st = plan_kernel_state(inp(mode_vxlan="Always", interfaces=(ETH0, narrow)))
    assert st.vxlan is not None and st.vxlan.mtu == 1450
    st = plan_kernel_state(inp(mode_vxlan="Always", interfaces=(ETH0, narrow), node_ip=None))
    assert st.vxlan is not None and st.vxlan.mtu == 1350
    assert st.vxlan.local == A("203.0.113.5")


def test_mtu_overrides_win() -> None:
    over = MtuOverrides(ipip=1400, vxlan=1300)
    r = one_route(inp(mode_ipip="Always", mtu=over, routes=best(OTHER)))
    assert r.mtu == 1400
    r = one_route(inp(mode_vxlan="Always", mtu=over, routes=best(OTHER)))
    assert r.mtu == 1300


# --- devices -----------------------------------------------------------------


def test_tunnel_devices_exist_only_for_modes_in_use() -> None:
    st = plan_kernel_state(inp())
    assert st.ipip is None and st.vxlan is None
    st = plan_kernel_state(inp(mode_ipip="CrossSubnet", ipip_tunnel_address=A("10.244.1.1")))
    assert st.ipip is not None and st.ipip.address == A("10.244.1.1") and st.vxlan is None
    st = plan_kernel_state(inp(mode_vxlan="Always", vxlan_tunnel_address=A("10.244.1.0")))
    assert st.ipip is None and st.vxlan is not None
    assert (st.vxlan.name, st.vxlan.vni, st.vxlan.port) == ("vxlan.mesh", 4096, 4789)
    assert st.vxlan.local == A("192.0.2.10") and st.vxlan.address == A("10.244.1.0")


def test_ipv6_pools_use_vxlan_over_the_ipv6_underlay() -> None:
    """vxlanModeV6: an IPv6 next hop off our subnet goes through the IPv6
    device (outer IPv6: 70 bytes of overhead), whose FDB points at the remote
    node's IPv6 address; the IPv4 device exists only for IPv4 VXLAN pools."""
    eth0 = HostInterface("eth0", (N("192.0.2.10/24"), N("2001:db8:1::10/64")), 1500)
    vtep6 = RemoteVtep(A("2001:db8:2::7"), A("fd00:10::9:0"), "66:77:88:99:AA:06")
    p = PlanInput(
        interfaces=(eth0,),
        pools=(
            Pool(POOL),
            Pool(N("fd00:10::/64"), vxlan_mode=EncapMode.CROSS_SUBNET),
        ),
        routes=(
            BestRoute(N("fd00:10::1:0/122"), (vtep6.node_ip,)),
            BestRoute(N("fd00:10::2:0/122"), (A("2001:db8:1::20"),)),
        ),
        node_ip=A("192.0.2.10"),
        node_ip6=A("2001:db8:1::10"),
        vxlan_tunnel_address6=A("fd00:10::5:0"),
        vteps=(vtep6,),
    )
    st = plan_kernel_state(p)
    routes = {str(r.dst): r for r in st.routes}
    tunnelled = routes["fd00:10::1:0/122"]
    assert tunnelled.kind is RouteKind.VXLAN and tunnelled.mtu == 1430
    assert tunnelled.nexthops == (NextHop(vtep6.vtep_ip, "vxlan-v6.mesh", onlink=True),)
    assert routes["fd00:10::2:0/122"].kind is RouteKind.DIRECT
    assert st.fdb == {FdbEntry("vxlan-v6.mesh", "66:77:88:99:aa:06", vtep6.node_ip)}
    assert st.vxlan is None and st.vxlan6 is not None
    assert (st.vxlan6.name, st.vxlan6.local, st.vxlan6.address, st.vxlan6.mtu) == (
        "vxlan-v6.mesh",
        A("2001:db8:1::10"),
        A("fd00:10::5:0"),
        1430,
    )
    # no IPv6 underlay address: no IPv6 device
    assert plan_kernel_state(replace(p, node_ip6=None)).vxlan6 is None


def test_plan_is_deterministic_and_order_independent() -> None:
    routes = (
        BestRoute(N("10.244.2.0/26"), (OTHER,)),
        BestRoute(N("10.244.3.0/26"), (SAME,)),
        BestRoute(N("10.244.4.0/26"), (OTHER2, OTHER)),
    )
    a = plan_kernel(inp(mode_vxlan="CrossSubnet", routes=routes))
    b = plan_kernel(inp(mode_vxlan="CrossSubnet", routes=tuple(reversed(routes))))
    assert a == b
    by_dst = {str(r.dst): r for r in a.state.routes}
    assert sorted(by_dst) == ["10.244.2.0/26", "10.244.3.0/26", "10.244.4.0/26"]
    # OTHER2 has no VTEP yet: 10.244.4.0/26 goes through OTHER's VTEP only.
    assert by_dst["10.244.4.0/26"].nexthops == (NextHop(VTEP.vtep_ip, "vxlan.mesh", onlink=True),)
    assert [u.nexthop for u in a.unroutable] == [OTHER2]
