"""Property: from any kernel start state, the reconciler leaves exactly the
desired routes plus the ones it does not own; a second pass and a restart
change nothing."""

from __future__ import annotations

import asyncio
import errno

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from netaddr import IPAddress, IPNetwork

from felix_lite.delta import route_signature
from felix_lite.fake_table import FakeKernel, FakeRouteTable
from felix_lite.model import (
    DEFAULT_PROTO,
    KernelRoute,
    KernelState,
    NeighborEntry,
    NextHop,
    RouteKind,
)
from felix_lite.reconciler import Reconciler

PROTO = DEFAULT_PROTO
FOREIGN_PROTOS = (2, 4, 12, 16, 186)
MUTATING = ("add", "replace", "delete", "neigh_replace", "neigh_delete", "fdb_replace")

prefixes = st.integers(0, 40).map(lambda i: IPNetwork(f"10.244.{i}.0/26"))
hops = st.builds(
    NextHop,
    gateway=st.sampled_from(["192.0.2.20", "192.0.2.30", "198.51.100.7"]).map(IPAddress),
    ifname=st.sampled_from(["eth0", "eth1", "tunl0"]),
    onlink=st.booleans(),
    weight=st.sampled_from([1, 2]),
)


@st.composite
def routes(draw: st.DrawFn, dst: IPNetwork) -> KernelRoute:
    if draw(st.integers(0, 5)) == 0:
        return KernelRoute(dst, RouteKind.BLACKHOLE)
    nexthops = tuple(draw(st.lists(hops, min_size=1, max_size=3, unique=True)))
    return KernelRoute(
        dst,
        draw(st.sampled_from([RouteKind.DIRECT, RouteKind.IPIP, RouteKind.FABRIC])),
        nexthops,
        draw(st.sampled_from([None, 1480])),
    )


@st.composite
def route_sets(draw: st.DrawFn) -> list[KernelRoute]:
    dsts = draw(st.lists(prefixes, unique=True, max_size=12))
    return [draw(routes(d)) for d in dsts]


neighbors = st.frozensets(
    st.builds(
        NeighborEntry,
        ifname=st.just("vxlan.mesh"),
        ip=st.sampled_from(["10.244.100.0", "10.244.101.0"]).map(IPAddress),
        lladdr=st.sampled_from(["66:77:88:99:aa:01", "66:77:88:99:aa:02"]),
    ),
    max_size=2,
).map(lambda ns: frozenset({n.ip: n for n in sorted(ns)}.values()))


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def sig(routes: object) -> set[tuple[object, ...]]:
    return {route_signature(r) for r in routes}  # type: ignore[attr-defined]


async def converge(rec: Reconciler, clock: Clock) -> None:
    """Run passes (first one full) until only unfixable failures are left."""
    await rec.sync_once(full=True)
    for _ in range(20):
        if all(r.errno == errno.EEXIST for r in rec.retries.values()):
            return
        clock.now += 60.0
        await rec.sync_once(full=False)
    raise AssertionError(f"did not converge: {rec.retries}")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    owned=route_sets(),
    foreign=route_sets(),
    foreign_protos=st.lists(st.sampled_from(FOREIGN_PROTOS), min_size=12, max_size=12),
    desired=route_sets(),
    flaky=st.lists(prefixes, max_size=3),
    start_neighbors=neighbors,
    want_neighbors=neighbors,
)
def test_any_start_state_converges_to_desired_plus_not_ours(
    owned: list[KernelRoute],
    foreign: list[KernelRoute],
    foreign_protos: list[int],
    desired: list[KernelRoute],
    flaky: list[IPNetwork],
    start_neighbors: frozenset[NeighborEntry],
    want_neighbors: frozenset[NeighborEntry],
) -> None:
    kernel = FakeKernel()
    for r in owned:
        kernel.add_foreign(r, PROTO)
    for r, p in zip(foreign, foreign_protos, strict=False):
        kernel.add_foreign(r, p)  # foreign wins a key both drew
    for n in start_neighbors:
        kernel.neighbors[(n.ifname, str(n.ip))] = n
    for dst in flaky:
        kernel.inject(str(dst), errno.EBUSY, times=1)  # transient per-route failure
    foreign_before = kernel.foreign(PROTO)
    want = KernelState(routes=frozenset(desired), neighbors=want_neighbors)
    # A desired prefix held by a foreign route cannot be installed without
    # overwriting it, which is exactly what must never happen.
    installable = {r for r in desired if r.key not in foreign_before}

    async def go() -> None:
        clock = Clock()
        rec = Reconciler(FakeRouteTable(kernel), clock=clock)
        rec.set_desired(want)
        await converge(rec, clock)

        assert sig(kernel.owned(PROTO)) == sig(installable)
        assert kernel.foreign(PROTO) == foreign_before
        assert set(kernel.neighbors.values()) == want_neighbors
        blocked = set(rec.retries)
        assert blocked == {("route", r.key) for r in desired if r.key in foreign_before}

        # A second pass, full or not, changes nothing.
        kernel.ops.clear()
        for full in (False, True):
            report = await rec.sync_once(full=full)
            assert report.changes == 0
        assert not any(kernel.ops[m] for m in MUTATING)

        # A restarted process (no memory) adds, replaces and deletes nothing
        # except retrying what a foreign route blocks.
        kernel.ops.clear()
        restarted = Reconciler(FakeRouteTable(kernel), clock=clock)
        restarted.set_desired(want)
        report = await restarted.sync_once(full=True)
        assert (report.route_adds, report.route_replaces, report.route_deletes) == (0, 0, 0)
        assert report.neighbor_ops == 0
        assert kernel.ops["delete"] == kernel.ops["replace"] == 0
        assert kernel.ops["add"] == len(blocked)
        assert sig(kernel.owned(PROTO)) == sig(installable)

    asyncio.run(go())
