"""Desired versus actual: what to add, replace and delete. Pure.

"Actual" only ever holds what felix_lite owns (routes of its protocol,
neighbours and FDB entries on its VXLAN device), so nothing foreign can end
up in a delete list. A route whose key the kernel does not hold for us is
an ADD (create-exclusive: it fails instead of overwriting a foreign route);
a key we hold with different content is a REPLACE (atomic, no gap); an owned
key nobody wants any more is a DELETE. Equal routes produce no operation,
which is what lets a restarted process converge without touching traffic.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import partial
from itertools import repeat
from typing import cast

from felix_lite.model import FdbEntry, KernelRoute, NeighborEntry, RouteKind
from felix_lite.ports import FdbOp, NeighborOp, Op, RouteOp

RouteKey = tuple[int, str]
NeighborKey = tuple[str, str]


def route_signature(r: KernelRoute) -> tuple[object, ...]:
    """What the kernel can tell apart about a route. ``kind`` is left out
    except for blackhole-or-not: read back from the kernel, an onlink route
    over tunl0 and one over another device look the same to the adapter, and
    they should, because the kernel forwards them by their next hops alone.
    Next-hop order is left out too: a multipath route is a set."""
    return (
        r.table,
        str(r.dst.cidr),
        r.kind is RouteKind.BLACKHOLE,
        frozenset(r.nexthops),
        r.mtu,
    )


def decide_route_equal(desired: KernelRoute, actual: KernelRoute) -> bool:
    """True when the kernel's route already is the desired one (same table,
    prefix, blackhole-ness, next-hop set with gateway, device, onlink and
    weight, and MTU): no operation is needed. Field by field, cheapest
    first: a 100k-route resync calls this for every route whose kind the
    adapter guessed differently."""
    if (
        desired.key != actual.key
        or desired.mtu != actual.mtu
        or (desired.kind is RouteKind.BLACKHOLE) != (actual.kind is RouteKind.BLACKHOLE)
    ):
        return False
    want, have = desired.nexthops, actual.nexthops
    return want == have or (len(want) == len(have) and set(want) == set(have))


def neighbor_key(n: NeighborEntry) -> NeighborKey:
    return (n.ifname, str(n.ip))


@dataclass(frozen=True)
class KernelDelta:
    """The operations that take actual to desired, in the order they are
    safe to apply: FDB deletes (a MAC that moves), neighbour and FDB
    upserts, route adds/replaces (make before break), route deletes,
    neighbour deletes (after the routes that used them are gone)."""

    route_upserts: tuple[RouteOp, ...] = ()
    route_deletes: tuple[RouteOp, ...] = ()
    neighbor_upserts: tuple[NeighborOp, ...] = ()
    neighbor_deletes: tuple[NeighborOp, ...] = ()
    fdb_upserts: tuple[FdbOp, ...] = ()
    fdb_deletes: tuple[FdbOp, ...] = ()

    @property
    def empty(self) -> bool:
        return not (
            self.route_upserts
            or self.route_deletes
            or self.neighbor_upserts
            or self.neighbor_deletes
            or self.fdb_upserts
            or self.fdb_deletes
        )

    @property
    def size(self) -> int:
        return (
            len(self.route_upserts)
            + len(self.route_deletes)
            + len(self.neighbor_upserts)
            + len(self.neighbor_deletes)
            + len(self.fdb_upserts)
            + len(self.fdb_deletes)
        )


def plan_route_ops(
    desired: Mapping[RouteKey, KernelRoute], actual: Mapping[RouteKey, KernelRoute]
) -> tuple[list[RouteOp], list[RouteOp]]:
    """(adds and replaces, deletes), in the order of the mappings: no route
    of ours depends on another being written first, and sorting a 100k-route
    start cost more than planning it."""
    if not actual:  # a start on an empty table: every route is an ADD
        return route_ops(Op.ADD, desired.values()), []
    upserts: list[RouteOp] = []
    for key, want in desired.items():
        have = actual.get(key)
        if have is None:
            upserts.append(RouteOp(Op.ADD, want))
        # Identity and plain equality first: after our own writes, and for
        # most routes read back, they settle it without building signatures.
        elif have is not want and have != want and not decide_route_equal(want, have):
            upserts.append(RouteOp(Op.REPLACE, want))
    deletes = [RouteOp(Op.DELETE, have) for key, have in actual.items() if key not in desired]
    return upserts, deletes


# RouteOp's own __new__ is a Python function; tuple.__new__ of the class,
# mapped, builds a whole table's ops in C (a third of the time).
_route_op = cast(Callable[[tuple[Op, KernelRoute]], RouteOp], partial(tuple.__new__, RouteOp))


def route_ops(op: Op, routes: Iterable[KernelRoute]) -> list[RouteOp]:
    """``[RouteOp(op, r) for r in routes]``, built in C."""
    return list(map(_route_op, zip(repeat(op), routes)))


def plan_route_ops_for(
    keys: Iterable[RouteKey],
    desired: Mapping[RouteKey, KernelRoute],
    actual: Mapping[RouteKey, KernelRoute],
) -> tuple[list[RouteOp], list[RouteOp]]:
    """``plan_route_ops`` restricted to ``keys`` (the keys whose desire
    changed): the same operations for those keys, at a cost of the keys.
    Deletes come in the order of ``keys``, unsorted: sorting a peer's 50k
    withdrawn keys cost more than finding them, and order does not matter
    to a delete."""
    upserts: list[RouteOp] = []
    deletes: list[RouteOp] = []
    delete = Op.DELETE  # an enum member read costs a lookup per key
    for key in keys:
        want, have = desired.get(key), actual.get(key)
        if want is None:
            if have is not None:
                deletes.append(RouteOp(delete, have))
        elif have is None:
            upserts.append(RouteOp(Op.ADD, want))
        elif have is not want and have != want and not decide_route_equal(want, have):
            upserts.append(RouteOp(Op.REPLACE, want))
    upserts.sort(key=lambda op: op.route.key)
    return upserts, deletes


def plan_neighbor_ops(
    desired: Iterable[NeighborEntry], actual: Iterable[NeighborEntry]
) -> tuple[list[NeighborOp], list[NeighborOp]]:
    """Neighbours are keyed by (device, address): a changed MAC is one upsert."""
    want = set(desired)
    have = set(actual)
    want_keys = {neighbor_key(n) for n in want}
    upserts = [NeighborOp(Op.REPLACE, n) for n in sorted(want - have)]
    deletes = [NeighborOp(Op.DELETE, n) for n in sorted(have) if neighbor_key(n) not in want_keys]
    return upserts, deletes


def plan_fdb_ops(
    desired: Iterable[FdbEntry], actual: Iterable[FdbEntry]
) -> tuple[list[FdbOp], list[FdbOp]]:
    """FDB entries are whole values (a MAC may be listed towards several
    destinations); unwanted ones are deleted before wanted ones are written."""
    want = set(desired)
    have = set(actual)
    return (
        [FdbOp(Op.REPLACE, e) for e in sorted(want - have)],
        [FdbOp(Op.DELETE, e) for e in sorted(have - want)],
    )


def index_routes(routes: Iterable[KernelRoute]) -> dict[RouteKey, KernelRoute]:
    return {r.key: r for r in routes}


def plan_delta(
    desired_routes: Mapping[RouteKey, KernelRoute],
    actual_routes: Mapping[RouteKey, KernelRoute],
    desired_neighbors: Iterable[NeighborEntry] = (),
    actual_neighbors: Iterable[NeighborEntry] = (),
    desired_fdb: Iterable[FdbEntry] = (),
    actual_fdb: Iterable[FdbEntry] = (),
) -> KernelDelta:
    r_up, r_del = plan_route_ops(desired_routes, actual_routes)
    n_up, n_del = plan_neighbor_ops(desired_neighbors, actual_neighbors)
    f_up, f_del = plan_fdb_ops(desired_fdb, actual_fdb)
    return KernelDelta(
        route_upserts=tuple(r_up),
        route_deletes=tuple(r_del),
        neighbor_upserts=tuple(n_up),
        neighbor_deletes=tuple(n_del),
        fdb_upserts=tuple(f_up),
        fdb_deletes=tuple(f_del),
    )
