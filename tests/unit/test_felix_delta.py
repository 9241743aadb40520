"""Desired-versus-actual decisions: equality of routes and the delta."""

from __future__ import annotations

from dataclasses import replace

from netaddr import IPAddress, IPNetwork

from felix_lite.delta import decide_route_equal, index_routes, plan_delta, route_ops
from felix_lite.model import FdbEntry, KernelRoute, NeighborEntry, NextHop, RouteKind
from felix_lite.ports import Op, RouteOp

A = IPAddress
N = IPNetwork
H1 = NextHop(A("192.0.2.20"), "eth0")
H2 = NextHop(A("192.0.2.30"), "eth0")
R = KernelRoute(N("10.244.2.0/26"), RouteKind.DIRECT, (H1, H2))


def test_equal_ignores_next_hop_order_and_non_blackhole_kind() -> None:
    read_back = replace(R, kind=RouteKind.VXLAN, nexthops=(H2, H1))
    assert decide_route_equal(R, read_back)


def test_each_field_that_matters_makes_a_difference() -> None:
    different = [
        replace(R, nexthops=(H1,)),
        replace(R, nexthops=(H1, replace(H2, onlink=True))),
        replace(R, nexthops=(H1, replace(H2, ifname="eth1"))),
        replace(R, nexthops=(H1, replace(H2, gateway=A("192.0.2.31")))),
        replace(R, nexthops=(H1, replace(H2, weight=2))),
        replace(R, mtu=1480),
        replace(R, table=100),
        replace(R, dst=N("10.244.2.64/26")),
        replace(R, kind=RouteKind.BLACKHOLE, nexthops=()),
    ]
    for other in different:
        assert not decide_route_equal(R, other), other


def test_delta_adds_missing_replaces_changed_deletes_stale_and_skips_equal() -> None:
    keep = KernelRoute(N("10.244.3.0/26"), RouteKind.BLACKHOLE)
    changed_want = replace(R, mtu=1400)
    new = KernelRoute(
        N("10.244.4.0/26"), RouteKind.IPIP, (NextHop(A("198.51.100.7"), "tunl0", True),)
    )
    stale = KernelRoute(N("10.244.5.0/26"), RouteKind.DIRECT, (H1,))
    d = plan_delta(index_routes([keep, changed_want, new]), index_routes([keep, R, stale]))
    assert [(o.op, o.route) for o in d.route_upserts] == [
        (Op.REPLACE, changed_want),
        (Op.ADD, new),
    ]
    assert [(o.op, o.route) for o in d.route_deletes] == [(Op.DELETE, stale)]
    assert plan_delta(index_routes([keep]), index_routes([keep])).empty


def test_an_empty_table_gets_every_route_as_an_add_built_as_route_ops() -> None:
    routes = [R, KernelRoute(N("10.244.3.0/26"), RouteKind.BLACKHOLE)]
    d = plan_delta(index_routes(routes), {})
    assert d.route_upserts == (RouteOp(Op.ADD, routes[0]), RouteOp(Op.ADD, routes[1]))
    assert all(type(o) is RouteOp for o in d.route_upserts) and d.route_deletes == ()
    ops = route_ops(Op.DELETE, routes)
    assert [(o.op, o.route) for o in ops] == [(Op.DELETE, R), (Op.DELETE, routes[1])]


def test_neighbor_with_new_mac_is_one_upsert_and_unwanted_ones_are_deleted() -> None:
    old = NeighborEntry("vxlan.mesh", A("10.244.9.0"), "66:77:88:99:aa:bb")
    moved = replace(old, lladdr="66:77:88:99:aa:cc")
    gone = NeighborEntry("vxlan.mesh", A("10.244.8.0"), "66:77:88:99:aa:01")
    d = plan_delta({}, {}, [moved], [old, gone])
    assert [(o.op, o.entry) for o in d.neighbor_upserts] == [(Op.REPLACE, moved)]
    assert [(o.op, o.entry) for o in d.neighbor_deletes] == [(Op.DELETE, gone)]


def test_fdb_entries_are_whole_values() -> None:
    a = FdbEntry("vxlan.mesh", "66:77:88:99:aa:bb", A("198.51.100.7"))
    moved = replace(a, dst=A("198.51.100.8"))
    d = plan_delta({}, {}, desired_fdb=[moved], actual_fdb=[a])
    assert [o.entry for o in d.fdb_upserts] == [moved]
    assert [o.entry for o in d.fdb_deletes] == [a]
    assert d.size == 2


def test_route_key_is_table_and_normalised_prefix_and_not_part_of_equality() -> None:
    for text in ("10.244.2.7/26", "0.0.0.0/0", "2001:db8::1/64", "::/0"):
        r = KernelRoute(N(text), RouteKind.BLACKHOLE, table=7)
        assert r.key == (7, str(N(text).cidr))
    assert replace(R, table=9).key == (9, "10.244.2.0/26")
    assert hash(R) == hash(replace(R)) and replace(R) == R
