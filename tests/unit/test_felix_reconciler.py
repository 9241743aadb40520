"""The reconciler against the in-memory kernel: restart, ownership,
per-route errors with backoff, devices, link changes, the run loop (on
virtual time: the clock it is given is the loop's)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
from collections.abc import Sequence

import pytest
from netaddr import IPAddress, IPNetwork

from felix_lite.fake_table import FakeKernel, FakeRouteTable, FakeTunnels
from felix_lite.model import (
    DEFAULT_PROTO,
    DesiredChange,
    FdbEntry,
    IpipDevice,
    KernelRoute,
    KernelState,
    NeighborEntry,
    NextHop,
    RouteKind,
    VxlanDevice,
)
from felix_lite.ports import Op, OpFailure, RouteOp
from felix_lite.reconciler import Backoff, Reconciler
from tests.harness import virtual_time

A = IPAddress
N = IPNetwork
PROTO = DEFAULT_PROTO


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def route(i: int, gw: str = "192.0.2.20", dev: str = "eth0") -> KernelRoute:
    return KernelRoute(N(f"10.244.{i}.0/26"), RouteKind.DIRECT, (NextHop(A(gw), dev),))


def state(*routes: KernelRoute, **kw: object) -> KernelState:
    return KernelState(routes=frozenset(routes), **kw)  # type: ignore[arg-type]


def test_fresh_install_then_restart_touches_nothing() -> None:
    async def go() -> None:
        k = FakeKernel()
        want = state(*(route(i) for i in range(10)))
        r1 = Reconciler(FakeRouteTable(k))
        r1.set_desired(want)
        rep = await r1.sync_once(full=True)
        assert rep.route_adds == 10 and rep.failures == 0
        assert k.owned(PROTO) == set(want.routes)
        k.ops.clear()
        r2 = Reconciler(FakeRouteTable(k))  # the restarted process
        r2.set_desired(want)
        rep = await r2.sync_once(full=True)
        assert rep.changes == 0
        assert set(k.ops) == {"dump"}

    asyncio.run(go())


def test_stale_owned_swept_changed_replaced_foreign_kept() -> None:
    async def go() -> None:
        k = FakeKernel()
        foreign = route(50, gw="192.0.2.99")
        k.add_foreign(foreign, proto=4)
        k.add_foreign(route(1), PROTO)  # stale, from a previous run
        k.add_foreign(route(2, gw="192.0.2.21"), PROTO)  # outdated next hop
        rec = Reconciler(FakeRouteTable(k))
        rec.set_desired(state(route(2), route(3)))
        rep = await rec.sync_once(full=True)
        assert (rep.route_adds, rep.route_replaces, rep.route_deletes) == (1, 1, 1)
        assert k.owned(PROTO) == {route(2), route(3)}
        assert k.foreign(PROTO) == {foreign.key: (4, foreign)}

    asyncio.run(go())


def test_a_whole_state_as_a_change_is_set_desired_and_nothing_else() -> None:
    async def go() -> None:
        k = FakeKernel()
        k.add_foreign(route(1), PROTO)  # stale, from a previous run
        rec = Reconciler(FakeRouteTable(k))
        neighbor = NeighborEntry("vxlan.calico", A("10.244.9.0"), "66:00:00:00:00:01")
        rec.set_whole(
            DesiredChange(upserts=(route(3), route(2)), base=state(neighbors=frozenset([neighbor])))
        )
        rep = await rec.sync_once(full=True)
        assert (rep.route_adds, rep.route_deletes) == (2, 1)
        assert k.owned(PROTO) == {route(2), route(3)}
        assert set(k.neighbors.values()) == {neighbor}
        for bad in (
            DesiredChange(upserts=(route(2),), removes=(route(3).key,)),
            DesiredChange(base=state(route(2))),
        ):
            with pytest.raises(ValueError):
                rec.set_whole(bad)

    asyncio.run(go())


def test_changes_before_the_whole_state_program_routes_but_sweep_nothing() -> None:
    """A restarted node programs what it learns before its peers finished
    sending (``apply_change`` before ``set_desired``): the last run's routes
    and neighbours stay until the whole state is given, a route is replaced
    in place, and a removed key goes at once."""

    async def go() -> None:
        k = FakeKernel()
        dev = "vxlan.mesh"
        old_n = NeighborEntry(dev, A("10.244.8.0"), "66:77:88:99:aa:02")
        k.neighbors[(dev, str(old_n.ip))] = old_n
        k.add_foreign(route(1), PROTO)  # the last run's, not learned again yet
        k.add_foreign(route(2, gw="192.0.2.21"), PROTO)  # learned again, elsewhere
        rec = Reconciler(FakeRouteTable(k))
        rec.apply_change(DesiredChange(upserts=(route(2), route(3), route(4))))
        rep = await rec.sync_once(full=True)
        assert (rep.route_adds, rep.route_replaces, rep.route_deletes) == (2, 1, 0)
        assert k.owned(PROTO) == {route(1), route(2), route(3), route(4)}
        assert set(k.neighbors.values()) == {old_n}
        rec.apply_change(DesiredChange(removes=(route(4).key,)))
        rep = await rec.sync_once(full=True)  # a full read sweeps nothing either
        assert (rep.route_deletes, rep.changes) == (1, 1)
        assert k.owned(PROTO) == {route(1), route(2), route(3)}
        rec.set_desired(state(route(2), route(3)))
        rep = await rec.sync_once(full=False)
        assert (rep.route_deletes, rep.neighbor_ops, rep.changes) == (1, 1, 2)
        assert k.owned(PROTO) == {route(2), route(3)} and not k.neighbors

    asyncio.run(go())


def test_never_overwrites_a_foreign_route_on_the_same_prefix() -> None:
    async def go() -> None:
        k = FakeKernel()
        foreign = route(7, gw="192.0.2.99")
        k.add_foreign(foreign, proto=4)
        rec = Reconciler(FakeRouteTable(k))
        rec.set_desired(state(route(7), route(8)))
        rep = await rec.sync_once(full=True)
        assert rep.failures == 1 and rep.route_adds == 1
        assert k.routes[foreign.key] == (4, foreign)
        assert rec.retries[("route", foreign.key)].errno == errno.EEXIST

    asyncio.run(go())


def test_one_bad_route_is_retried_with_backoff_and_blocks_nothing() -> None:
    async def go() -> None:
        clock = Clock()
        k = FakeKernel()
        k.inject("10.244.3.0/26", errno.EINVAL, times=2)
        rec = Reconciler(FakeRouteTable(k), clock=clock, backoff=Backoff(1.0, 2.0, 10.0))
        rec.set_desired(state(*(route(i) for i in range(6))))
        rep = await rec.sync_once(full=True)
        assert rep.route_adds == 5 and rep.failures == 1
        retry = rec.retries[("route", route(3).key)]
        assert (retry.attempts, retry.not_before) == (1, 1001.0)

        rep = await rec.sync_once(full=False)  # too early: held back, no kernel call
        assert rep.held_back == 1 and rep.changes == 0 and rep.failures == 0

        clock.now = 1001.0
        rep = await rec.sync_once(full=False)  # second injected failure
        assert rep.failures == 1
        assert rec.retries[("route", route(3).key)].not_before == 1003.0  # doubled

        clock.now = 1003.0
        rep = await rec.sync_once(full=False)
        assert rep.route_adds == 1 and not rec.retries
        assert k.owned(PROTO) == {route(i) for i in range(6)}

    asyncio.run(go())


def test_a_changed_desire_cancels_the_backoff_of_that_route() -> None:
    async def go() -> None:
        clock = Clock()
        k = FakeKernel(devices={"eth0"})
        rec = Reconciler(FakeRouteTable(k), clock=clock)
        rec.set_desired(state(route(1, dev="eth9")))
        rep = await rec.sync_once(full=True)
        assert rep.failures == 1  # ENODEV
        rec.set_desired(state(route(1)))
        rep = await rec.sync_once(full=False)
        assert rep.route_adds == 1 and not rec.retries

    asyncio.run(go())


def test_delete_of_an_already_gone_route_counts_as_done() -> None:
    async def go() -> None:
        k = FakeKernel()
        rec = Reconciler(FakeRouteTable(k))
        rec.set_desired(state(route(1), route(2)))
        await rec.sync_once(full=True)
        del k.routes[route(2).key]  # someone else removed it
        rec.set_desired(state(route(1)))
        rep = await rec.sync_once(full=False)
        assert rep.route_deletes == 1 and rep.failures == 0 and not rec.retries

    asyncio.run(go())


def test_batches_respect_batch_size() -> None:
    async def go() -> None:
        k = FakeKernel()
        rec = Reconciler(FakeRouteTable(k), batch_size=4)
        rec.set_desired(state(*(route(i) for i in range(10))))
        await rec.sync_once(full=True)
        assert k.ops["route_batches"] == 3

    asyncio.run(go())


class BreaksAt(FakeRouteTable):
    """The channel breaks on the ``at``-th batch of routes (1-based)."""

    def __init__(self, kernel: FakeKernel, at: int) -> None:
        super().__init__(kernel)
        self.calls = 0
        self.at = at

    async def apply_routes(self, ops, proto):  # type: ignore[no-untyped-def]
        self.calls += 1
        if self.calls == self.at:
            raise OSError(errno.EPIPE, "channel broke")
        return await super().apply_routes(ops, proto)


def test_a_channel_broken_mid_pass_settles_only_answered_batches_and_a_full_pass_repairs() -> None:
    async def go() -> None:
        k = FakeKernel()
        # batches go one ahead: the third is on its way when the second breaks
        rec = Reconciler(BreaksAt(k, at=2), batch_size=4)
        want = {route(i) for i in range(10)}
        rec.set_desired(state(*want))
        with pytest.raises(OSError, match="channel broke"):
            await rec.sync_once(full=True)
        assert len(rec.actual_routes) == 4  # the first batch, answered
        assert set(rec.actual_routes.values()) <= k.owned(PROTO)
        rep = await rec.sync_once(full=True)
        assert rep.failures == 0 and k.owned(PROTO) == want
        assert set(rec.actual_routes.values()) == want

    asyncio.run(go())


class WatchesGc(FakeRouteTable):
    """Records whether the cyclic GC was on during each read and each
    batch written."""

    def __init__(self, kernel: FakeKernel) -> None:
        super().__init__(kernel)
        self.gc_on: list[tuple[str, bool]] = []

    async def dump_owned(self, proto, table, known=None):  # type: ignore[no-untyped-def]
        self.gc_on.append(("read", gc.isenabled()))
        async for r in super().dump_owned(proto, table, known):
            yield r

    async def apply_routes(self, ops, proto):  # type: ignore[no-untyped-def]
        self.gc_on.append(("write", gc.isenabled()))
        return await super().apply_routes(ops, proto)


def test_a_pass_over_many_routes_runs_with_the_cyclic_gc_paused_a_small_one_does_not() -> None:
    def many(n: int) -> list[KernelRoute]:
        return [
            KernelRoute(
                N(f"10.{i >> 8}.{i & 255}.0/26"),
                RouteKind.DIRECT,
                (NextHop(A("192.0.2.20"), "eth0"),),
            )
            for i in range(n)
        ]

    async def go() -> None:
        gc.enable()
        table = WatchesGc(FakeKernel())
        rec = Reconciler(table)
        routes = many(6001)
        rec.set_desired(state(*routes[:6000]))
        await rec.sync_once(full=True)  # the read included: the tables are young
        assert table.gc_on[0] == ("read", False) and gc.isenabled()
        assert {on for _, on in table.gc_on} == {False}
        table.gc_on.clear()
        rec.apply_change(DesiredChange(upserts=(routes[6000],)))
        await rec.sync_once(full=False)
        assert table.gc_on == [("write", True)]
        table.gc_on.clear()
        rec.apply_change(DesiredChange(removes=tuple(r.key for r in routes[:5001])))
        await rec.sync_once(full=False)  # a peer's routes going: many keys
        assert table.gc_on and {on for _, on in table.gc_on} == {False} and gc.isenabled()

    was = gc.isenabled()
    try:
        asyncio.run(go())
    finally:
        (gc.enable if was else gc.disable)()


class BatchSpy(FakeRouteTable):
    """The fake table, keeping each batch the reconciler hands it."""

    def __init__(self, kernel: FakeKernel) -> None:
        super().__init__(kernel)
        self.batches: list[list[RouteOp]] = []

    async def apply_routes(self, ops: Sequence[RouteOp], proto: int) -> list[OpFailure[RouteOp]]:
        self.batches.append(list(ops))
        return await super().apply_routes(ops, proto)


def test_deletes_go_in_big_batches_in_the_order_their_keys_changed() -> None:
    """A peer lost is tens of thousands of deletes: they go in batches of
    ``delete_batch_size``, not of the upserts' ``batch_size``, in the order
    the changes removed them (no sort, and the same every run)."""

    async def go() -> None:
        k = FakeKernel()
        spy = BatchSpy(k)
        rec = Reconciler(spy, batch_size=4, delete_batch_size=6)
        rec.set_desired(state(*(route(i) for i in range(10))))
        await rec.sync_once(full=True)
        assert [len(b) for b in spy.batches] == [4, 4, 2]
        spy.batches.clear()
        order = [7, 2, 9, 0, 5, 3, 8, 1]
        rec.apply_change(DesiredChange(removes=tuple(route(i).key for i in order[:3])))
        rec.apply_change(DesiredChange(removes=tuple(route(i).key for i in order[3:])))
        rep = await rec.sync_once(full=False)
        assert rep.route_deletes == 8 and k.owned(PROTO) == {route(4), route(6)}
        assert [[op.route.key for op in b] for b in spy.batches] == [
            [route(i).key for i in order[:6]],
            [route(i).key for i in order[6:]],
        ]
        assert all(op.op is Op.DELETE for b in spy.batches for op in b)

    asyncio.run(go())


class HeldBatches(FakeRouteTable):
    """The fake table, answering each batch only when the test lets it."""

    def __init__(self, kernel: FakeKernel) -> None:
        super().__init__(kernel)
        self.waiting: list[asyncio.Future[None]] = []
        self.most_in_flight = 0

    async def apply_routes(self, ops: Sequence[RouteOp], proto: int) -> list[OpFailure[RouteOp]]:
        gate = asyncio.get_running_loop().create_future()
        self.waiting.append(gate)
        self.most_in_flight = max(self.most_in_flight, len(self.waiting))
        await gate
        return await super().apply_routes(ops, proto)


def test_batches_go_ahead_as_far_as_allowed_and_settle_in_order() -> None:
    async def go() -> None:
        k = FakeKernel()
        table = HeldBatches(k)
        rec = Reconciler(table, batch_size=2, batches_ahead=3)
        rec.set_desired(state(*(route(i) for i in range(20))))
        task = asyncio.ensure_future(rec.sync_once(full=True))
        for answered in range(10):
            for _ in range(20):  # loop turns enough for all it may send; no fifth goes
                await asyncio.sleep(0)
            assert len(table.waiting) == min(4, 10 - answered)
            assert len(rec.actual_routes) == 2 * answered  # settled in order
            table.waiting.pop(0).set_result(None)
        rep = await task
        assert rep.route_adds == 20 and table.most_in_flight == 4
        assert k.owned(PROTO) == {route(i) for i in range(20)}

    asyncio.run(go())


def test_vxlan_neighbors_and_fdb_are_reconciled() -> None:
    async def go() -> None:
        k = FakeKernel()
        dev = "vxlan.mesh"
        n1 = NeighborEntry(dev, A("10.244.9.0"), "66:77:88:99:aa:01")
        f1 = FdbEntry(dev, "66:77:88:99:aa:01", A("198.51.100.7"))
        old_n = NeighborEntry(dev, A("10.244.8.0"), "66:77:88:99:aa:02")
        old_f = FdbEntry(dev, "66:77:88:99:aa:02", A("198.51.100.8"))
        k.neighbors[(dev, str(old_n.ip))] = old_n
        k.fdb.add(old_f)
        vx = VxlanDevice(dev, 4096, 4789, A("192.0.2.10"), None, None, None, 1450)
        rec = Reconciler(FakeRouteTable(k))
        rec.set_desired(state(neighbors=frozenset({n1}), fdb=frozenset({f1}), vxlan=vx))
        rep = await rec.sync_once(full=True)
        assert (rep.neighbor_ops, rep.fdb_ops) == (2, 2)
        assert set(k.neighbors.values()) == {n1} and k.fdb == {f1}
        again = Reconciler(FakeRouteTable(k))
        again.set_desired(state(neighbors=frozenset({n1}), fdb=frozenset({f1}), vxlan=vx))
        assert (await again.sync_once(full=True)).changes == 0

    asyncio.run(go())


def test_tunnel_devices_applied_once_retried_on_failure_and_removed_when_off() -> None:
    async def go() -> None:
        clock = Clock()
        k = FakeKernel(devices={"eth0"})
        tunnels = FakeTunnels(k, fail=1)
        rec = Reconciler(FakeRouteTable(k), tunnels=tunnels, clock=clock)
        ipip = IpipDevice(A("10.244.1.1"), 1480)
        tun_route = KernelRoute(
            N("10.244.2.0/26"), RouteKind.IPIP, (NextHop(A("198.51.100.7"), "tunl0", True),), 1480
        )
        rec.set_desired(state(tun_route, route(3), ipip=ipip))
        rep = await rec.sync_once(full=True)
        # The device failed; the route through it too (ENODEV), the other went in.
        assert rep.failures == 2 and k.ipip is None
        assert k.owned(PROTO) == {route(3)}
        clock.now += 1
        rep = await rec.sync_once(full=False)
        assert rep.device_ops == 1 and k.ipip == ipip and rep.route_adds == 1
        rep = await rec.sync_once(full=False)
        assert rep.changes == 0 and k.ops["ipip"] == 1
        rec.set_desired(state())
        await rec.sync_once(full=False)
        assert k.ipip is None and not k.owned(PROTO) and not rec.retries

    asyncio.run(go())


def test_run_loop_waits_for_desired_resyncs_and_on_request() -> None:
    async def go() -> None:
        loop = asyncio.get_running_loop()
        k = FakeKernel()
        k.add_foreign(route(1), PROTO)  # owned, from a previous run
        rec = Reconciler(FakeRouteTable(k), resync_interval=90.0, clock=loop.time)
        task = asyncio.create_task(rec.run())
        await asyncio.sleep(600)  # no desired state yet: it waits, however long
        assert k.ops["dump"] == 0 and route(1).key in k.routes  # nothing swept yet
        rec.set_desired(state(route(1), route(2)))
        await asyncio.wait_for(rec.wait_converged(), 2)
        full_pass = loop.time()
        assert k.owned(PROTO) == {route(1), route(2)}
        assert rec.totals["route_add"] == 1 and rec.totals["route_delete"] == 0

        del k.routes[route(2).key]  # a link flap took it; the periodic resync restores it
        await asyncio.sleep(full_pass + 89.0 - loop.time())
        assert route(2).key not in k.routes  # not before the interval is up
        await asyncio.sleep(2.0)
        assert route(2).key in k.routes

        dumps = k.ops["dump"]
        rec.request_resync()  # as the node does after a link change
        await asyncio.sleep(0.001)  # the request alone wakes it, no timer due
        assert k.ops["dump"] > dumps
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    virtual_time.run(go())


@pytest.mark.parametrize("steps", [0, 1, 2, 3])
def test_run_ends_when_cancelled_in_the_moment_it_is_woken(steps: int) -> None:
    """Python 3.11's ``wait_for`` returns the inner result when the
    cancellation meets a wait that has just completed: the loop went on and
    a node's shutdown hung (the netlink host reader, whose loop is built
    alike, hung a test for 10 minutes). However many loop steps separate the
    wake-up from the cancellation, ``run`` ends."""

    async def go() -> None:
        loop = asyncio.get_running_loop()
        rec = Reconciler(FakeRouteTable(FakeKernel()), resync_interval=90.0, clock=loop.time)
        rec.set_desired(state(route(1)))
        task = asyncio.create_task(rec.run())
        await asyncio.wait_for(rec.wait_converged(), 2)
        for _ in range(5):
            await asyncio.sleep(0)  # run() is back waiting for work
        rec.request_resync()
        for _ in range(steps):
            await asyncio.sleep(0)
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=2)
        assert task in done and task.cancelled()

    asyncio.run(go())
