"""One contract for every ``RouteTable``: the in-memory fake and the real
netlink adapter in a fresh network namespace behave alike where the
reconciler can tell (ownership by protocol, per-item errors, round trips
that compare equal, neighbour/FDB entries on the VXLAN device)."""

from __future__ import annotations

import asyncio
import errno
import json
from collections.abc import Iterator
from typing import Any, Protocol

import pytest
from netaddr import IPAddress, IPNetwork

from felix_lite.delta import decide_route_equal
from felix_lite.fake_table import FakeKernel, FakeRouteTable
from felix_lite.model import (
    DEFAULT_PROTO,
    FdbEntry,
    KernelRoute,
    KernelState,
    NeighborEntry,
    NextHop,
    RouteKind,
)
from felix_lite.ports import FdbOp, NeighborOp, Op, RouteOp, RouteTable
from felix_lite.reconciler import Reconciler
from lab.netns import NetnsFactory

A = IPAddress
N = IPNetwork
PROTO = DEFAULT_PROTO
VX = "vxlan.mesh"
GW = A("192.0.2.2")
REMOTE = A("198.51.100.7")

DIRECT = KernelRoute(N("10.244.1.0/26"), RouteKind.DIRECT, (NextHop(GW, "eth0"),))
ONLINK = KernelRoute(
    N("10.244.2.0/26"), RouteKind.VXLAN, (NextHop(A("10.244.9.0"), VX, onlink=True),), 1450
)
ECMP = KernelRoute(
    N("10.244.3.0/26"),
    RouteKind.DIRECT,
    (NextHop(GW, "eth0"), NextHop(A("192.0.2.3"), "eth0", weight=3)),
)
BLACKHOLE = KernelRoute(N("10.244.4.0/26"), RouteKind.BLACKHOLE)
OFFSUBNET_ONLINK = KernelRoute(
    N("10.244.6.0/26"), RouteKind.FABRIC, (NextHop(REMOTE, "eth0", onlink=True),), 1400
)
ALL = (DIRECT, ONLINK, ECMP, BLACKHOLE, OFFSUBNET_ONLINK)


class Env(Protocol):
    table: RouteTable

    def add_foreign(self, route: KernelRoute, proto: int) -> None: ...

    def proto_at(self, dst: str) -> int | None: ...


class FakeEnv:
    def __init__(self) -> None:
        self.kernel = FakeKernel(devices={"eth0", VX})
        self.table: RouteTable = FakeRouteTable(self.kernel)

    def add_foreign(self, route: KernelRoute, proto: int) -> None:
        self.kernel.add_foreign(route, proto)

    def proto_at(self, dst: str) -> int | None:
        got = self.kernel.routes.get((254, dst))
        return got[0] if got else None


class RealEnv:
    def __init__(self, factory: NetnsFactory) -> None:
        from felix_lite.netlink_table import NetlinkRouteTable

        self.ns = factory.new("contract")
        ns = self.ns
        ns.ip("link", "add", "eth0", "type", "veth", "peer", "name", "peer0")
        ns.ip("link", "set", "eth0", "up")
        ns.ip("link", "set", "peer0", "up")
        ns.ip("addr", "add", "192.0.2.1/24", "dev", "eth0")
        ns.ip("link", "add", VX, "type", "vxlan", "id", "4096", "dstport", "4789",
              "local", "192.0.2.1", "dev", "eth0", "nolearning")  # fmt: skip
        ns.ip("link", "set", VX, "up")
        self.adapter = NetlinkRouteTable(netns=ns.name)
        self.table: RouteTable = self.adapter

    def add_foreign(self, route: KernelRoute, proto: int) -> None:
        (hop,) = route.nexthops
        self.ns.ip("route", "add", str(route.dst), "via", str(hop.gateway), "dev", hop.ifname,
                   "proto", str(proto))  # fmt: skip

    def proto_at(self, dst: str) -> int | None:
        out: list[dict[str, Any]] = json.loads(
            self.ns.ip("-N", "-j", "route", "show", "exact", dst) or "[]"
        )
        return int(out[0]["protocol"]) if out else None

    def close(self) -> None:
        self.adapter.close()


@pytest.fixture(
    params=[
        "fake",
        pytest.param("netns", marks=pytest.mark.netns),
    ]
)
def env(request: pytest.FixtureRequest) -> Iterator[Env]:
    if request.param == "fake":
        yield FakeEnv()
        return
    factory: NetnsFactory = request.getfixturevalue("netns")
    real = RealEnv(factory)
    try:
        yield real
    finally:
        real.close()


async def dump(table: RouteTable) -> dict[str, KernelRoute]:
    return {str(r.dst): r async for r in table.dump_owned(PROTO, 254)}


def test_every_route_form_round_trips_equal(env: Env) -> None:
    async def go() -> None:
        failures = await env.table.apply_routes([RouteOp(Op.ADD, r) for r in ALL], PROTO)
        assert failures == []
        got = await dump(env.table)
        assert set(got) == {str(r.dst) for r in ALL}
        for r in ALL:
            assert decide_route_equal(r, got[str(r.dst)]), (r, got[str(r.dst)])
            assert (got[str(r.dst)].kind is RouteKind.BLACKHOLE) == (r is BLACKHOLE)

    asyncio.run(go())


def test_add_never_overwrites_a_foreign_route_and_the_batch_goes_on(env: Env) -> None:
    foreign = KernelRoute(N("10.244.7.0/26"), RouteKind.DIRECT, (NextHop(GW, "eth0"),))
    env.add_foreign(foreign, proto=4)

    async def go() -> None:
        ops = [RouteOp(Op.ADD, DIRECT), RouteOp(Op.ADD, foreign), RouteOp(Op.ADD, BLACKHOLE)]
        failures = await env.table.apply_routes(ops, PROTO)
        assert [(f.item, f.errno) for f in failures] == [(ops[1], errno.EEXIST)]
        assert set(await dump(env.table)) == {str(DIRECT.dst), str(BLACKHOLE.dst)}
        assert env.proto_at(str(foreign.dst)) == 4

    asyncio.run(go())


def test_delete_only_removes_our_protocol(env: Env) -> None:
    foreign = KernelRoute(N("10.244.7.0/26"), RouteKind.DIRECT, (NextHop(GW, "eth0"),))
    env.add_foreign(foreign, proto=4)

    async def go() -> None:
        assert await env.table.apply_routes([RouteOp(Op.ADD, DIRECT)], PROTO) == []
        ops = [RouteOp(Op.DELETE, foreign), RouteOp(Op.DELETE, DIRECT)]
        failures = await env.table.apply_routes(ops, PROTO)
        assert [f.item for f in failures] == [ops[0]]
        assert failures[0].errno in (errno.ESRCH, errno.ENOENT)
        assert env.proto_at(str(foreign.dst)) == 4
        assert env.proto_at(str(DIRECT.dst)) is None

    asyncio.run(go())


def test_replace_changes_an_owned_route_in_place(env: Env) -> None:
    changed = KernelRoute(DIRECT.dst, RouteKind.DIRECT, (NextHop(A("192.0.2.3"), "eth0"),), 1400)

    async def go() -> None:
        assert await env.table.apply_routes([RouteOp(Op.ADD, DIRECT)], PROTO) == []
        assert await env.table.apply_routes([RouteOp(Op.REPLACE, changed)], PROTO) == []
        (got,) = (await dump(env.table)).values()
        assert decide_route_equal(changed, got)

    asyncio.run(go())


def test_a_batch_mixing_adds_replaces_and_deletes_applies_each_in_order(env: Env) -> None:
    changed = KernelRoute(DIRECT.dst, RouteKind.DIRECT, (NextHop(A("192.0.2.3"), "eth0"),), 1400)
    bad = KernelRoute(N("10.244.8.0/26"), RouteKind.DIRECT, (NextHop(GW, "nosuch0"),))

    async def go() -> None:
        assert (
            await env.table.apply_routes([RouteOp(Op.ADD, r) for r in (DIRECT, ECMP)], PROTO) == []
        )
        ops = [
            RouteOp(Op.REPLACE, changed),
            RouteOp(Op.ADD, bad),
            RouteOp(Op.DELETE, ECMP),
            RouteOp(Op.ADD, BLACKHOLE),
            RouteOp(Op.ADD, ONLINK),
            RouteOp(Op.ADD, ONLINK),  # EEXIST: the item before took the key
        ]
        failures = await env.table.apply_routes(ops, PROTO)
        assert [(f.item, f.errno) for f in failures] == [
            (ops[1], errno.ENODEV),
            (ops[5], errno.EEXIST),
        ]
        got = await dump(env.table)
        assert set(got) == {str(DIRECT.dst), str(BLACKHOLE.dst), str(ONLINK.dst)}
        assert decide_route_equal(changed, got[str(DIRECT.dst)])

    asyncio.run(go())


def test_unknown_device_fails_that_route_only(env: Env) -> None:
    bad = KernelRoute(N("10.244.8.0/26"), RouteKind.DIRECT, (NextHop(GW, "nosuch0"),))

    async def go() -> None:
        ops = [RouteOp(Op.ADD, bad), RouteOp(Op.ADD, DIRECT)]
        failures = await env.table.apply_routes(ops, PROTO)
        assert [(f.item, f.errno) for f in failures] == [(ops[0], errno.ENODEV)]
        assert set(await dump(env.table)) == {str(DIRECT.dst)}

    asyncio.run(go())


def test_neighbors_and_fdb_on_the_vxlan_device(env: Env) -> None:
    n = NeighborEntry(VX, A("10.244.9.0"), "66:77:88:99:aa:01")
    f = FdbEntry(VX, "66:77:88:99:aa:01", REMOTE)

    async def go() -> None:
        t = env.table
        assert await t.dump_neighbors("nosuch0") == []
        assert await t.dump_fdb("nosuch0") == []
        assert await t.apply_neighbors([NeighborOp(Op.REPLACE, n)]) == []
        assert await t.apply_fdb([FdbOp(Op.REPLACE, f)]) == []
        assert await t.apply_neighbors([NeighborOp(Op.REPLACE, n)]) == []  # idempotent
        assert await t.dump_neighbors(VX) == [n]
        assert await t.dump_fdb(VX) == [f]
        assert await t.apply_neighbors([NeighborOp(Op.DELETE, n)]) == []
        assert await t.apply_fdb([FdbOp(Op.DELETE, f)]) == []
        assert await t.dump_neighbors(VX) == []
        assert await t.dump_fdb(VX) == []

    asyncio.run(go())


def test_reconciler_restart_over_this_table_changes_nothing(env: Env) -> None:
    n = NeighborEntry(VX, A("10.244.9.0"), "66:77:88:99:aa:01")
    f = FdbEntry(VX, "66:77:88:99:aa:01", REMOTE)
    want = KernelState(routes=frozenset(ALL), neighbors=frozenset({n}), fdb=frozenset({f}))

    async def go() -> None:
        first = Reconciler(env.table)
        first.set_desired(want)
        report = await first.sync_once(full=True)
        assert report.route_adds == len(ALL) and report.failures == 0
        again = Reconciler(env.table)
        again.set_desired(want)
        report = await again.sync_once(full=True)
        assert report.changes == 0 and report.failures == 0

    asyncio.run(go())


def test_dump_answers_known_routes_with_the_known_object_only_when_equal(env: Env) -> None:
    """``known`` lets a resync that finds everything in place build nothing:
    a plain route held exactly as known comes back as the known object; one
    that differs comes back as the kernel has it."""
    wider = KernelRoute(OFFSUBNET_ONLINK.dst, OFFSUBNET_ONLINK.kind,
                        OFFSUBNET_ONLINK.nexthops, 1300)  # fmt: skip
    other_gw = KernelRoute(DIRECT.dst, DIRECT.kind, (NextHop(A("192.0.2.9"), "eth0"),))

    async def go() -> None:
        assert await env.table.apply_routes([RouteOp(Op.ADD, r) for r in ALL], PROTO) == []
        for changed in (wider, other_gw):
            known = {r.key: r for r in ALL} | {changed.key: changed}
            got = {r.key: r async for r in env.table.dump_owned(PROTO, 254, known)}
            assert set(got) == {r.key for r in ALL}
            for r in ALL:
                assert decide_route_equal(r, got[r.key]), (r, got[r.key])
            assert got[changed.key] is not changed
            assert not decide_route_equal(changed, got[changed.key])
            for plain in (DIRECT, ONLINK):
                if plain.key != changed.key:
                    assert got[plain.key] is plain

    asyncio.run(go())
