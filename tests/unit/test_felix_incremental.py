"""The incremental planner and the reconciler's incremental passes equal a
from-scratch rebuild after any sequence of route changes and host changes,
and one changed prefix costs one route's work, not a table's."""

from __future__ import annotations

import asyncio
import dataclasses
import gc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from netaddr import IPAddress, IPNetwork

from felix_lite import incremental, planner
from felix_lite.delta import route_signature
from felix_lite.fake_table import FakeKernel, FakeRouteTable
from felix_lite.incremental import IncrementalPlanner, best_changes
from felix_lite.inputs import (
    BestRoute,
    EncapMode,
    HostInterface,
    PlanInput,
    Pool,
    RemoteVtep,
    UnderlayRoute,
)
from felix_lite.model import DEFAULT_PROTO, DesiredChange, KernelRoute, KernelState
from felix_lite.planner import plan_kernel
from felix_lite.reconciler import Reconciler

A, N = IPAddress, IPNetwork
ETH0 = HostInterface("eth0", (N("192.0.2.10/24"),), 1500)
ETH0_NARROW = HostInterface("eth0", (N("192.0.2.10/24"),), 1400)
ETH1 = HostInterface("eth1", (N("198.51.100.10/24"),), 1500)
NEXT_HOPS = tuple(
    A(x) for x in ("192.0.2.20", "192.0.2.30", "198.51.100.7", "203.0.113.9", "192.0.2.10")
)
PREFIXES = (
    *(N(f"10.244.{i}.0/26") for i in range(12)),
    N("10.99.0.0/24"),
    N("10.244.3.5/26"),  # host bits: the same key as 10.244.3.0/26
)
MODES = ("Never", "CrossSubnet", "Always")

hosts = st.builds(
    lambda ifaces, ipip, vxlan, own, vteps, underlay: PlanInput(
        interfaces=ifaces,
        pools=(Pool(N("10.244.0.0/16"), EncapMode(ipip), EncapMode(vxlan)),),
        own_blocks=own,
        node_ip=A("192.0.2.10"),
        ipip_tunnel_address=A("10.244.0.1") if ipip != "Never" else None,
        vteps=vteps,
        underlay=underlay,
    ),
    st.sampled_from([(ETH0,), (ETH0_NARROW,), (ETH0, ETH1)]),
    st.sampled_from(MODES),
    st.just("Never"),
    st.sampled_from([(), (N("10.244.1.0/26"),), (N("10.244.1.0/26"), N("10.244.2.0/26"))]),
    st.sampled_from([(), (RemoteVtep(A("198.51.100.7"), A("10.244.9.0"), "66:77:88:99:aa:bb"),)]),
    st.sampled_from([(), (UnderlayRoute(N("0.0.0.0/0"), A("192.0.2.1"), "eth0"),)]),
)
vxlan_hosts = hosts.map(
    lambda h: dataclasses.replace(
        h,
        pools=(Pool(N("10.244.0.0/16"), EncapMode.NEVER, h.pools[0].ipip_mode),),
        ipip_tunnel_address=None,
        vxlan_tunnel_address=A("10.244.0.1"),
    )
)
bests = st.builds(
    lambda p, hops: BestRoute(p, tuple(hops)),
    st.sampled_from(PREFIXES),
    st.lists(st.sampled_from(NEXT_HOPS), max_size=3, unique=True),
)
steps = st.one_of(
    st.tuples(st.just("host"), st.one_of(hosts, vxlan_hosts)),
    st.tuples(st.just("routes"), st.lists(st.one_of(bests, st.sampled_from(PREFIXES)), max_size=5)),
)


def key(p: IPNetwork) -> tuple[int, int]:
    return (p.first, p.prefixlen)


def sig(routes: object) -> set[tuple[object, ...]]:
    return {route_signature(r) for r in routes}  # type: ignore[attr-defined]


def unroutable_set(us: object) -> set[tuple[str, str, str]]:
    return {(str(u.prefix.cidr), str(u.nexthop), u.reason) for u in us}  # type: ignore[attr-defined]


def apply(mirror: dict[tuple[int, str], KernelRoute], change: DesiredChange) -> None:
    for k in change.removes:
        mirror.pop(k, None)
    for r in change.upserts:
        mirror[r.key] = r


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(hosts, vxlan_hosts), st.lists(steps, max_size=12))
def test_incremental_plan_equals_a_plan_from_scratch(
    first: PlanInput, steps_: list[tuple[str, object]]
) -> None:
    plan = IncrementalPlanner(first)
    host = first
    table: dict[tuple[int, int], BestRoute] = {}
    mirror: dict[tuple[int, str], KernelRoute] = {}
    apply(mirror, plan.set_host(host))  # nothing held yet: the blackholes
    apply(mirror, DesiredChange(upserts=tuple(plan.state().routes)))
    for kind, arg in steps_:
        if kind == "host":
            host = arg  # type: ignore[assignment]
            change = plan.set_host(host)
        else:
            # in order, a prefix maybe several times: the last pair counts
            changes: list[tuple[IPNetwork, BestRoute | None]] = []
            for item in arg:  # type: ignore[attr-defined]
                if isinstance(item, BestRoute):
                    changes.append((item.prefix, item))
                    table[key(item.prefix)] = item
                else:
                    changes.append((item, None))
                    table.pop(key(item), None)
            change = plan.update(changes)
        apply(mirror, change)
        scratch = plan_kernel(dataclasses.replace(host, routes=tuple(table.values())))
        assert plan.state() == scratch.state
        assert change.base == dataclasses.replace(scratch.state, routes=frozenset())
        whole = plan.whole()  # the same state, as a change from nothing
        assert len(whole.upserts) == len(scratch.state.routes)
        assert frozenset(whole.upserts) == scratch.state.routes
        assert not whole.removes and whole.base == change.base
        assert set(mirror.values()) == set(scratch.state.routes)
        assert unroutable_set(plan.unroutable()) == unroutable_set(scratch.unroutable)
        assert plan.unroutable_count == len(scratch.unroutable)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(hosts, vxlan_hosts), st.lists(steps, max_size=10), st.data())
def test_reconciler_fed_changes_ends_where_a_full_resync_does(
    first: PlanInput, steps_: list[tuple[str, object]], data: st.DataObject
) -> None:
    """The kernel after incremental passes over the change stream is the
    kernel a fresh reconciler makes from the from-scratch plan."""

    async def go() -> None:
        kernel = FakeKernel()
        rec = Reconciler(FakeRouteTable(kernel))
        plan = IncrementalPlanner(first)
        host, table = first, {}
        rec.set_whole(plan.whole())  # as the node hands its planner's table over
        await rec.sync_once(full=True)
        for kind, arg in steps_:
            if kind == "host":
                host = arg
                rec.apply_change(plan.set_host(host))
            else:
                changes: list[tuple[IPNetwork, BestRoute | None]] = []
                for item in arg:  # type: ignore[attr-defined]
                    if isinstance(item, BestRoute):
                        changes.append((item.prefix, item))
                        table[key(item.prefix)] = item
                    else:
                        changes.append((item, None))
                        table.pop(key(item), None)
                rec.apply_change(plan.update(changes))
            if data.draw(st.booleans(), label="pass now"):
                report = await rec.sync_once(full=False)
                assert not report.full
        await rec.sync_once(full=False)
        scratch = plan_kernel(dataclasses.replace(host, routes=tuple(table.values()))).state
        assert sig(kernel.owned(DEFAULT_PROTO)) == sig(scratch.routes)
        assert set(kernel.neighbors.values()) == set(scratch.neighbors)
        # and a full resync finds nothing to do
        assert (await rec.sync_once(full=True)).changes == 0

    asyncio.run(go())


def test_one_more_prefix_plans_and_diffs_one_route(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a table held, one more prefix is planned once and diffed once:
    the work of the change, not of the table."""
    n = 5000
    host = PlanInput(interfaces=(ETH0,), pools=(Pool(N("10.0.0.0/8")),))
    table = [BestRoute(N((10 << 24 | i << 6, 26)), (A("192.0.2.20"),)) for i in range(n)]
    plan = IncrementalPlanner(host)
    kernel = FakeKernel()
    rec = Reconciler(FakeRouteTable(kernel))
    rec.set_desired(KernelState())

    async def go() -> None:
        rec.apply_change(plan.update(best_changes(table)))
        first = await rec.sync_once(full=False)
        assert first.route_adds == n

        planned: list[BestRoute] = []
        real_plan_one = incremental.plan_one

        def counting(ctx: planner.PlanContext, best: BestRoute, text: str | None = None):  # type: ignore[no-untyped-def]
            planned.append(best)
            return real_plan_one(ctx, best, text)

        compared: list[int] = []
        real_equal = KernelRoute.__eq__

        def counting_eq(a: KernelRoute, b: object) -> bool:
            compared.append(1)
            return real_equal(a, b)

        monkeypatch.setattr(incremental, "plan_one", counting)
        monkeypatch.setattr(KernelRoute, "__eq__", counting_eq)
        extra = BestRoute(N("11.0.0.0/26"), (A("192.0.2.30"),))
        rec.apply_change(plan.update([(extra.prefix, extra)]))
        report = await rec.sync_once(full=False)
        assert planned == [extra]
        assert report.route_adds == 1 and report.changes == 1
        assert len(compared) <= 4
        assert len(kernel.owned(DEFAULT_PROTO)) == n + 1

    asyncio.run(go())


def test_an_underlay_change_re_plans_only_the_routes_that_use_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    host = PlanInput(
        interfaces=(ETH0,),
        pools=(Pool(N("10.244.0.0/16")),),
        underlay=(UnderlayRoute(N("0.0.0.0/0"), A("192.0.2.1"), "eth0"),),
    )
    direct = BestRoute(N("10.244.1.0/26"), (A("192.0.2.20"),))
    fabric = BestRoute(N("10.244.2.0/26"), (A("198.51.100.7"),))
    plan = IncrementalPlanner(host)
    plan.update(best_changes([direct, fabric]))
    planned: list[BestRoute] = []
    real_plan_one = incremental.plan_one

    def counting(ctx: planner.PlanContext, best: BestRoute, text: str | None = None):  # type: ignore[no-untyped-def]
        planned.append(best)
        return real_plan_one(ctx, best, text)

    monkeypatch.setattr(incremental, "plan_one", counting)
    moved = dataclasses.replace(
        host, underlay=(UnderlayRoute(N("0.0.0.0/0"), A("192.0.2.254"), "eth0"),)
    )
    change = plan.set_host(moved)
    assert planned == [fabric]
    (route,) = change.upserts
    assert route.nexthops[0].gateway == A("192.0.2.254")
    assert plan.state() == plan_kernel(dataclasses.replace(moved, routes=(direct, fabric))).state


def test_planning_runs_with_the_cyclic_gc_paused_and_restores_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    host = PlanInput(interfaces=(ETH0,), pools=(Pool(N("10.244.0.0/16")),))
    seen: list[bool] = []
    real_plan_one = incremental.plan_one

    def watching(ctx: planner.PlanContext, best: BestRoute, text: str | None = None):  # type: ignore[no-untyped-def]
        seen.append(gc.isenabled())
        return real_plan_one(ctx, best, text)

    monkeypatch.setattr(incremental, "plan_one", watching)
    gc.enable()
    plan = IncrementalPlanner(host)
    plan.update(best_changes([BestRoute(N("10.244.1.0/26"), (A("192.0.2.20"),))]))
    plan.set_host(dataclasses.replace(host, interfaces=(ETH0_NARROW,)))
    assert seen == [False, False] and gc.isenabled()
