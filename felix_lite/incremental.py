"""The incremental planner: owns the desired kernel state between full
plans and changes it by what changed, at a cost proportional to the change.
Pure: no I/O, no clock.

- ``set_host(inp)``: the host and cluster facts (interfaces, pools, own
  blocks, VTEPs, underlay, tunnel addresses: a ``PlanInput`` whose
  ``routes`` are ignored). Equal to the last ones: nothing to do. Different:
  every held route is planned again (O(table), the rare case: a link, a
  pool, a block, a node) and only the routes that came out different leave.
- ``update(changes)``: (prefix, best route) pairs, ``None`` when withdrawn
  (the last pair of a prefix counts); only those prefixes are planned again
  (O(change), the common case).

Both return a ``DesiredChange`` for the reconciler, and pause the cyclic
GC while they plan (``felix_lite.gc_pause``: a whole table's objects make
no cycles). ``state()`` (and ``whole()``, the same as a change from
nothing) and ``unroutable()`` are the whole picture (O(table): for a full resync and for
tests); after any sequence of calls they equal ``plan_kernel`` of the same
host and routes (tests/unit/test_felix_incremental.py).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Hashable, Iterable, Iterator
from typing import TypeVar, cast

from netaddr import IPNetwork

from felix_lite.gc_pause import gc_paused
from felix_lite.inputs import BestRoute, PlanInput
from felix_lite.model import (
    DesiredChange,
    FdbEntry,
    KernelRoute,
    KernelState,
    NeighborEntry,
    RouteKind,
    prefix_text,
)
from felix_lite.planner import PlanContext, PlannedHop, Unroutable, plan_context, plan_one

# What one best route planned into: its route (None: nothing installable),
# the hops it uses (for neighbour and FDB reference counts) and its problems.
# Held as the route alone in the common case (no neighbour, FDB entry or
# problem to remember): a tuple per route is ~12 MB at 100k.
_Planned = tuple[KernelRoute | None, tuple[PlannedHop, ...], tuple[Unroutable, ...]]
_NOTHING: _Planned = (None, (), ())


def _alone(hops: Iterable[PlannedHop]) -> bool:
    """Whether a route through ``hops`` is held as the route alone: none
    of them brings a neighbour or FDB entry to count."""
    for h in hops:  # noqa: SIM110 - not all(genexpr): this runs for every route planned
        if h.neighbor is not None or h.fdb is not None:
            return False
    return True


def _held(planned: _Planned) -> KernelRoute | _Planned:
    route, hops, problems = planned
    if route is None or problems or not _alone(hops):
        return planned
    return route


def _unheld(held: KernelRoute | _Planned) -> _Planned:
    return (held, (), ()) if isinstance(held, KernelRoute) else held


K = TypeVar("K", bound=Hashable)


class IncrementalPlanner:
    def __init__(self, host: PlanInput) -> None:
        self._ctx: PlanContext = plan_context(_host_only(host))
        self._best: dict[str, BestRoute] = {}  # by prefix text
        self._planned: dict[str, KernelRoute | _Planned] = {}
        self._neighbors: Counter[NeighborEntry] = Counter()
        self._fdb: Counter[FdbEntry] = Counter()
        self._unroutable_count = 0
        self._new_unroutable: list[Unroutable] = []

    # ---- changes ----------------------------------------------------------

    def set_host(self, host: PlanInput) -> DesiredChange:
        host = _host_only(host)
        if host == self._ctx.inp:
            return DesiredChange(base=self._base())
        with gc_paused():
            return self._set_host(host)

    def _set_host(self, host: PlanInput) -> DesiredChange:
        # Only fabric routes (and routes that could not be planned) look at
        # the underlay: a change there alone re-plans just those.
        underlay_only = host == dataclasses.replace(self._ctx.inp, underlay=host.underlay)
        old_blackholes = self._ctx.blackholes
        self._ctx = plan_context(host)
        upserts: list[KernelRoute] = []
        removes: list[tuple[int, str]] = []
        new_blackholes = self._ctx.blackholes
        for text, hole in old_blackholes.items():
            if new_blackholes.get(text) != hole:
                removes.append(hole.key)
        for text, hole in new_blackholes.items():
            if old_blackholes.get(text) != hole:
                upserts.append(hole)
        for text, best in self._best.items():
            if underlay_only and not _uses_underlay(_unheld(self._planned.get(text, _NOTHING))):
                continue
            self._replan(text, best, upserts, removes)
        return DesiredChange(tuple(upserts), tuple(removes), self._base())

    def update(self, changes: Iterable[tuple[IPNetwork, BestRoute | None]]) -> DesiredChange:
        with gc_paused():
            return self._update(changes)

    def _update(self, changes: Iterable[tuple[IPNetwork, BestRoute | None]]) -> DesiredChange:
        upserts: list[KernelRoute] = []
        removes: list[tuple[int, str]] = []
        # one replan a prefix, of its last pair: a route planned and gone
        # again in one change must not leave as both an upsert and a remove
        last = {prefix_text(prefix): best for prefix, best in changes}
        planned, blackholes, ctx = self._planned, self._ctx.blackholes, self._ctx
        # A planner's first table (a node's start, every route at once): all
        # is new, and ``last`` less its withdrawals becomes what is held, not
        # copied into it pair by pair.
        fresh = not self._best
        for text, best in last.items():
            if best is None:
                if fresh or self._best.pop(text, None) is None:
                    continue
                held = planned.get(text)
                if isinstance(held, KernelRoute):
                    # the common withdrawal (a peer going down: 50k of them):
                    # a route alone, no hop or problem counted; _replan's way
                    del planned[text]
                    if text not in blackholes:
                        removes.append(held.key)
                else:
                    self._replan(text, None, upserts, removes)
                continue
            if not fresh:
                self._best[text] = best
            if text in planned:
                self._replan(text, best, upserts, removes)
                continue
            route, hops, problems = plan_one(ctx, best, text)
            if route is not None and not problems and _alone(hops):
                # A new prefix planned into a route alone (a node's start:
                # every route): nothing to count, forget or remove.
                planned[text] = route
                upserts.append(route)
            else:
                self._settle(text, None, (route, tuple(hops), tuple(problems)), upserts, removes)
        if fresh:
            for text in [t for t, b in last.items() if b is None]:
                del last[text]
            self._best = cast(dict[str, BestRoute], last)  # no None left
        return DesiredChange(tuple(upserts), tuple(removes), self._base())

    # ---- the whole picture ------------------------------------------------

    def state(self) -> KernelState:
        return dataclasses.replace(self._base(), routes=frozenset(self._routes()))

    def whole(self) -> DesiredChange:
        """``state()`` as one change from nothing, for ``Reconciler.set_whole``:
        every route in the order planned, which is about their order in
        memory (the order a pass walks them best), with no set to build
        and sort back into that order; the rest is its base."""
        return DesiredChange(upserts=tuple(self._routes()), base=self._base())

    def _routes(self) -> list[KernelRoute]:
        routes = list(self._ctx.blackholes.values())
        for held in self._planned.values():
            route = held if isinstance(held, KernelRoute) else held[0]
            if route is not None:
                routes.append(route)
        return routes

    def unroutable(self) -> tuple[Unroutable, ...]:
        return tuple(
            u for p in self._planned.values() if not isinstance(p, KernelRoute) for u in p[2]
        )

    def take_new_unroutable(self) -> list[Unroutable]:
        """What could not be installed among the routes planned since the
        last call (for the log: each problem once, when it appears)."""
        new, self._new_unroutable = self._new_unroutable, []
        return new

    @property
    def unroutable_count(self) -> int:
        return self._unroutable_count

    @property
    def host(self) -> PlanInput:
        return self._ctx.inp

    # ---- internals --------------------------------------------------------

    def _replan(
        self,
        text: str,
        best: BestRoute | None,
        upserts: list[KernelRoute],
        removes: list[tuple[int, str]],
    ) -> None:
        held = self._planned.get(text)
        if best is None:
            new = _NOTHING
        else:
            route, hops, problems = plan_one(self._ctx, best, text)
            new = (route, tuple(hops), tuple(problems))
        self._settle(text, held, new, upserts, removes)

    def _settle(
        self,
        text: str,
        held: KernelRoute | _Planned | None,
        new: _Planned,
        upserts: list[KernelRoute],
        removes: list[tuple[int, str]],
    ) -> None:
        """Hold ``new`` for ``text`` in place of ``held``: counts, problems,
        and the upsert or remove that takes the desired state there."""
        old = _NOTHING if held is None else _unheld(held)
        if new[0] is None and new[2] == ():
            self._planned.pop(text, None)
        else:
            self._planned[text] = _held(new)
        self._count(old, -1)
        self._count(new, +1)
        if new[2] and new[2] != old[2]:
            self._new_unroutable.extend(new[2])
        old_route, new_route = old[0], new[0]
        if new_route is not None and (old_route is None or old_route != new_route):
            upserts.append(new_route)
        # A route that gave way to a blackhole for its prefix leaves by the
        # blackhole's upsert, not by a remove of the key they share.
        if (
            old_route is not None
            and (new_route is None or new_route.key != old_route.key)
            and old_route.key[1] not in self._ctx.blackholes
        ):
            removes.append(old_route.key)

    def _count(self, planned: _Planned, sign: int) -> None:
        self._unroutable_count += sign * len(planned[2])
        for h in planned[1]:
            if h.neighbor is not None:
                _add(self._neighbors, h.neighbor, sign)
            if h.fdb is not None:
                _add(self._fdb, h.fdb, sign)

    def _base(self) -> KernelState:
        return KernelState(
            neighbors=frozenset(self._neighbors),
            fdb=frozenset(self._fdb),
            ipip=self._ctx.ipip,
            vxlan=self._ctx.vxlan,
            vxlan6=self._ctx.vxlan6,
        )


def _add(counts: Counter[K], key: K, sign: int) -> None:
    n = counts[key] + sign
    if n > 0:
        counts[key] = n
    else:
        del counts[key]


def _uses_underlay(planned: _Planned) -> bool:
    route, _, problems = planned
    return bool(problems) or route is None or route.kind is RouteKind.FABRIC


def _host_only(inp: PlanInput) -> PlanInput:
    return inp if not inp.routes else dataclasses.replace(inp, routes=())


def best_changes(routes: Iterable[BestRoute]) -> Iterator[tuple[IPNetwork, BestRoute | None]]:
    """A whole table as changes, for a planner that starts empty. Lazy, so
    that its pairs are made inside the planner's collector pause: a list of
    100k made before it cost a collection that freed nothing."""
    return ((b.prefix, b) for b in routes)
