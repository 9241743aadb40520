"""The real RouteTable adapter in a network namespace."""

from __future__ import annotations

import asyncio
import errno

import pytest
from netaddr import IPAddress, IPNetwork

from felix_lite.delta import decide_route_equal
from felix_lite.model import DEFAULT_PROTO, FdbEntry, KernelRoute, NeighborEntry, NextHop, RouteKind
from felix_lite.netlink_table import NetlinkRouteTable
from felix_lite.ports import FdbOp, NeighborOp, Op, RouteOp
from lab.netns import Netns, NetnsFactory

pytestmark = pytest.mark.netns
PROTO = DEFAULT_PROTO
VX = "vxlan.mesh"


def _host(netns: NetnsFactory) -> Netns:
    ns = netns.new("table")
    ns.ip("link", "add", "v0", "type", "veth", "peer", "name", "v1")
    ns.ip("link", "set", "v0", "up")
    ns.ip("link", "set", "v1", "up")
    ns.ip("addr", "add", "192.0.2.1/24", "dev", "v0")
    ns.ip("addr", "add", "2001:db8:1::1/64", "dev", "v0", "nodad")
    ns.ip(
        "link",
        "add",
        VX,
        "type",
        "vxlan",
        "id",
        "4096",
        "dstport",
        "4789",
        "local",
        "192.0.2.1",
        "nolearning",
    )
    ns.ip("link", "set", VX, "up")
    return ns


def _nh(gw: str, dev: str, **kw: object) -> NextHop:
    return NextHop(IPAddress(gw), dev, **kw)  # type: ignore[arg-type]


ROUTES = [
    KernelRoute(IPNetwork("10.244.1.0/26"), RouteKind.DIRECT, (_nh("192.0.2.2", "v0"),)),
    KernelRoute(
        IPNetwork("10.244.2.0/26"),
        RouteKind.FABRIC,
        (_nh("198.51.100.2", "v0", onlink=True),),
        mtu=1480,
    ),
    KernelRoute(
        IPNetwork("10.244.3.0/26"), RouteKind.VXLAN, (_nh("10.244.3.0", VX, onlink=True),), mtu=1450
    ),
    KernelRoute(
        IPNetwork("10.244.4.0/26"),
        RouteKind.DIRECT,
        (_nh("192.0.2.2", "v0"), _nh("192.0.2.3", "v0", weight=2)),
    ),
    KernelRoute(IPNetwork("10.244.0.0/26"), RouteKind.BLACKHOLE),
    KernelRoute(IPNetwork("fd00:244::/122"), RouteKind.DIRECT, (_nh("2001:db8:1::2", "v0"),)),
    KernelRoute(IPNetwork("fd00:244::40/122"), RouteKind.BLACKHOLE),
]


async def _dump(t: NetlinkRouteTable, table: int = 254) -> list[KernelRoute]:
    return [r async for r in t.dump_owned(PROTO, table)]


def test_routes_apply_and_dump_back_equal(netns):
    ns = _host(netns)
    missing_dev = KernelRoute(
        IPNetwork("10.244.9.0/26"), RouteKind.DIRECT, (_nh("192.0.2.2", "nosuch0"),)
    )
    off_subnet = KernelRoute(
        IPNetwork("10.244.10.0/26"), RouteKind.DIRECT, (_nh("198.51.100.9", "v0"),)
    )

    async def scenario() -> None:
        async with NetlinkRouteTable(ns.name) as t:
            ops = [RouteOp(Op.ADD, r) for r in ROUTES]
            ops.insert(2, RouteOp(Op.ADD, missing_dev))
            ops.insert(5, RouteOp(Op.ADD, off_subnet))
            failures = await t.apply_routes(ops, PROTO)
            assert sorted((f.item.route.dst, f.errno) for f in failures) == [
                (missing_dev.dst, errno.ENODEV),
                (off_subnet.dst, errno.ENETUNREACH),
            ]
            got = {r.key: r for r in await _dump(t)}
            assert set(got) == {r.key for r in ROUTES}
            for want in ROUTES:
                assert decide_route_equal(want, got[want.key]), (want, got[want.key])
            assert got[ROUTES[2].key].kind is RouteKind.VXLAN
            assert got[ROUTES[4].key].kind is RouteKind.BLACKHOLE
            # nothing in another table, and a replace changes the route in place
            assert await _dump(t, 1000) == []
            moved = KernelRoute(ROUTES[0].dst, RouteKind.DIRECT, (_nh("192.0.2.5", "v0"),))
            assert await t.apply_routes([RouteOp(Op.REPLACE, moved)], PROTO) == []
            again = {r.key: r for r in await _dump(t)}
            assert decide_route_equal(moved, again[moved.key])
            deletes = [RouteOp(Op.DELETE, r) for r in ROUTES]
            assert await t.apply_routes(deletes, PROTO) == []
            assert await _dump(t) == []

    asyncio.run(scenario())
    assert ns.ip("route", "show", "proto", str(PROTO)) == ""


def test_a_batch_of_deletes_does_not_wait_for_the_links(netns):
    """A peer's routes leaving (BFD Down) must not first re-read the links:
    with that read broken, deletes still go out, and an add reports it."""
    ns = _host(netns)

    async def scenario() -> None:
        async with NetlinkRouteTable(ns.name) as t:
            assert await t.apply_routes([RouteOp(Op.ADD, r) for r in ROUTES], PROTO) == []
            t._links_read_at = float("-inf")  # due for a read

            def broken() -> list[object]:
                raise OSError(errno.EIO, "links not readable")

            t._rtnl.links = broken
            deletes = [RouteOp(Op.DELETE, r) for r in ROUTES]
            assert await t.apply_routes(deletes, PROTO) == []
            assert ns.ip("route", "show", "proto", str(PROTO)) == ""
            with pytest.raises(OSError):
                await t.apply_routes([RouteOp(Op.ADD, ROUTES[0])], PROTO)

    asyncio.run(scenario())


def test_abandoned_dump_leaves_the_adapter_usable(netns):
    ns = _host(netns)

    async def scenario() -> None:
        async with NetlinkRouteTable(ns.name) as t:
            many = [
                KernelRoute(
                    IPNetwork(f"10.{i >> 8}.{i & 255}.0/24"),
                    RouteKind.DIRECT,
                    (_nh("192.0.2.2", "v0"),),
                )
                for i in range(2000)
            ]
            assert await t.apply_routes([RouteOp(Op.ADD, r) for r in many], PROTO) == []
            it = t.dump_owned(PROTO, 254)
            first = await anext(it)
            await it.aclose()
            assert first.key in {r.key for r in many}
            assert len(await _dump(t)) == 2000

    asyncio.run(scenario())


def test_neighbors_and_fdb_on_the_vxlan_device(netns):
    ns = _host(netns)
    neigh = NeighborEntry(VX, IPAddress("10.244.3.0"), "66:00:00:00:00:03")
    fdb = FdbEntry(VX, "66:00:00:00:00:03", IPAddress("198.51.100.3"))

    async def scenario() -> None:
        async with NetlinkRouteTable(ns.name) as t:
            assert await t.apply_neighbors([NeighborOp(Op.REPLACE, neigh)]) == []
            assert await t.apply_fdb([FdbOp(Op.REPLACE, fdb)]) == []
            # replacing again is a no-op, not an error
            assert await t.apply_fdb([FdbOp(Op.REPLACE, fdb)]) == []
            assert await t.dump_neighbors(VX) == [neigh]
            assert await t.dump_fdb(VX) == [fdb]
            assert await t.dump_neighbors("nosuch0") == []
            bad = NeighborEntry("nosuch0", IPAddress("10.0.0.1"), "66:00:00:00:00:09")
            [f] = await t.apply_neighbors([NeighborOp(Op.REPLACE, bad)])
            assert f.errno == errno.ENODEV
            assert await t.apply_neighbors([NeighborOp(Op.DELETE, neigh)]) == []
            assert await t.apply_fdb([FdbOp(Op.DELETE, fdb)]) == []
            assert await t.dump_neighbors(VX) == []
            assert await t.dump_fdb(VX) == []

    asyncio.run(scenario())
    assert "PERMANENT" not in ns.ip("neigh", "show", "dev", VX)


def test_a_device_created_after_the_last_link_read_is_found(netns):
    ns = _host(netns)

    async def scenario() -> None:
        async with NetlinkRouteTable(ns.name) as t:
            first = RouteOp(Op.ADD, ROUTES[0])
            assert await t.apply_routes([first], PROTO) == []
            # within the link cache's lifetime a new device appears
            await asyncio.to_thread(
                ns.ip, "link", "add", "v2", "type", "veth", "peer", "name", "v3"
            )
            await asyncio.to_thread(ns.ip, "link", "set", "v2", "up")
            late = KernelRoute(
                IPNetwork("10.244.20.0/26"),
                RouteKind.DIRECT,
                (_nh("192.0.2.7", "v2", onlink=True),),
            )
            assert await t.apply_routes([RouteOp(Op.ADD, late)], PROTO) == []
            got = {r.key: r for r in await _dump(t)}
            assert decide_route_equal(late, got[late.key])

    asyncio.run(scenario())
