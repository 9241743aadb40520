"""In-memory implementations of the felix_lite ports, for tests.

``FakeKernel`` behaves like the kernel where the reconciler can tell:
one route per (table, prefix) whatever its protocol; ADD fails with EEXIST
on an occupied key, DELETE only removes a route of the given protocol
(ESRCH otherwise), a device that does not exist fails with ENODEV, and
errors can be injected per prefix. Dumped routes come back with their kind
blurred (any non-blackhole reads as DIRECT), as a netlink reader would, so
nothing may depend on ``kind`` surviving a round trip. It counts every
operation so tests can assert that a pass did nothing.
"""

from __future__ import annotations

import asyncio
import errno
from collections import Counter
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field, replace

from felix_lite.delta import decide_route_equal
from felix_lite.model import (
    FdbEntry,
    IpipDevice,
    KernelRoute,
    NeighborEntry,
    RouteKind,
    VxlanDevice,
)
from felix_lite.ports import FdbOp, NeighborOp, Op, OpFailure, RouteOp


@dataclass
class InjectedError:
    errno: int
    times: int | None = None  # None: fail until cleared


@dataclass
class FakeKernel:
    """The state and the counters; shared by a ``FakeRouteTable`` (and its
    successors, to model a process restart against the same kernel)."""

    routes: dict[tuple[int, str], tuple[int, KernelRoute]] = field(default_factory=dict)
    neighbors: dict[tuple[str, str], NeighborEntry] = field(default_factory=dict)
    fdb: set[FdbEntry] = field(default_factory=set)
    # None: every device exists. A set: only those (plus tunnel devices created).
    devices: set[str] | None = None
    errors: dict[str, InjectedError] = field(default_factory=dict)
    ops: Counter[str] = field(default_factory=Counter)
    ipip: IpipDevice | None = None
    vxlan: VxlanDevice | None = None
    vxlan6: VxlanDevice | None = None

    def add_foreign(self, route: KernelRoute, proto: int) -> None:
        self.routes[route.key] = (proto, route)

    def owned(self, proto: int) -> set[KernelRoute]:
        return {r for p, r in self.routes.values() if p == proto}

    def foreign(self, proto: int) -> dict[tuple[int, str], tuple[int, KernelRoute]]:
        return {k: v for k, v in self.routes.items() if v[0] != proto}

    def inject(self, dst: str, err: int, times: int | None = None) -> None:
        self.errors[dst] = InjectedError(err, times)

    def _injected(self, dst: str) -> int | None:
        e = self.errors.get(dst)
        if e is None:
            return None
        if e.times is not None:
            e.times -= 1
            if e.times <= 0:
                del self.errors[dst]
        return e.errno

    def _has_device(self, name: str) -> bool:
        if self.devices is None:
            return True
        tunnels = {d.name for d in (self.ipip, self.vxlan, self.vxlan6) if d is not None}
        return name in self.devices or name in tunnels

    def apply_route(self, op: RouteOp, proto: int) -> int | None:
        """Apply one op; the errno on failure."""
        r = op.route
        self.ops[op.op.value] += 1
        injected = self._injected(str(r.dst.cidr))
        if injected is not None:
            return injected
        if op.op is Op.DELETE:
            cur = self.routes.get(r.key)
            if cur is None or cur[0] != proto:
                return errno.ESRCH
            del self.routes[r.key]
            return None
        if any(not self._has_device(h.ifname) for h in r.nexthops):
            return errno.ENODEV
        if op.op is Op.ADD and r.key in self.routes:
            return errno.EEXIST
        self.routes[r.key] = (proto, r)
        return None


def _blur(r: KernelRoute) -> KernelRoute:
    kind = RouteKind.BLACKHOLE if r.kind is RouteKind.BLACKHOLE else RouteKind.DIRECT
    return replace(r, kind=kind, nexthops=tuple(sorted(r.nexthops, reverse=True)))


class FakeRouteTable:
    """``RouteTable`` over a ``FakeKernel``."""

    def __init__(self, kernel: FakeKernel | None = None) -> None:
        self.kernel = kernel if kernel is not None else FakeKernel()

    async def dump_owned(
        self, proto: int, table: int, known: Mapping[tuple[int, str], KernelRoute] | None = None
    ) -> AsyncIterator[KernelRoute]:
        self.kernel.ops["dump"] += 1
        for p, r in list(self.kernel.routes.values()):
            if p == proto and r.table == table:
                want = known.get(r.key) if known else None
                if want is not None and decide_route_equal(want, r):
                    yield want
                else:
                    yield _blur(r)
        await asyncio.sleep(0)

    async def apply_routes(self, ops: Sequence[RouteOp], proto: int) -> list[OpFailure[RouteOp]]:
        self.kernel.ops["route_batches"] += 1
        failures = []
        for op in ops:
            err = self.kernel.apply_route(op, proto)
            if err is not None:
                failures.append(OpFailure(op, err, errno.errorcode.get(err, str(err))))
        await asyncio.sleep(0)
        return failures

    async def dump_neighbors(self, ifname: str) -> list[NeighborEntry]:
        return [n for n in self.kernel.neighbors.values() if n.ifname == ifname]

    async def apply_neighbors(self, ops: Sequence[NeighborOp]) -> list[OpFailure[NeighborOp]]:
        failures = []
        for op in ops:
            n = op.entry
            self.kernel.ops[f"neigh_{op.op.value}"] += 1
            if not self.kernel._has_device(n.ifname):
                failures.append(OpFailure(op, errno.ENODEV, "ENODEV"))
            elif op.op is Op.DELETE:
                if self.kernel.neighbors.pop((n.ifname, str(n.ip)), None) is None:
                    failures.append(OpFailure(op, errno.ENOENT, "ENOENT"))
            else:
                self.kernel.neighbors[(n.ifname, str(n.ip))] = n
        return failures

    async def dump_fdb(self, ifname: str) -> list[FdbEntry]:
        return [e for e in self.kernel.fdb if e.ifname == ifname]

    async def apply_fdb(self, ops: Sequence[FdbOp]) -> list[OpFailure[FdbOp]]:
        failures = []
        for op in ops:
            e = op.entry
            self.kernel.ops[f"fdb_{op.op.value}"] += 1
            if not self.kernel._has_device(e.ifname):
                failures.append(OpFailure(op, errno.ENODEV, "ENODEV"))
            elif op.op is Op.DELETE:
                if e not in self.kernel.fdb:
                    failures.append(OpFailure(op, errno.ENOENT, "ENOENT"))
                self.kernel.fdb.discard(e)
            else:
                # The kernel's replace rewrites the destination of that MAC.
                self.kernel.fdb = {
                    x for x in self.kernel.fdb if (x.ifname, x.lladdr) != (e.ifname, e.lladdr)
                }
                self.kernel.fdb.add(e)
        return failures


class FakeTunnels:
    """``TunnelDevices`` over a ``FakeKernel``: remembers what it was told;
    removing a device drops the routes and entries that used it, as the
    kernel does."""

    def __init__(self, kernel: FakeKernel, fail: int = 0) -> None:
        self.kernel = kernel
        self.fail = fail  # fail this many calls first

    def _maybe_fail(self) -> None:
        if self.fail > 0:
            self.fail -= 1
            raise RuntimeError("injected tunnel failure")

    async def apply_ipip(self, desired: IpipDevice | None) -> None:
        self._maybe_fail()
        self.kernel.ops["ipip"] += 1
        if self.kernel.ipip is not None and desired is None:
            self._drop_device(self.kernel.ipip.name)
        self.kernel.ipip = desired

    async def apply_vxlan(self, desired: VxlanDevice | None) -> None:
        self._maybe_fail()
        self.kernel.ops["vxlan"] += 1
        old = self.kernel.vxlan
        if old is not None and (desired is None or desired.name != old.name):
            self._drop_device(old.name)
        self.kernel.vxlan = desired

    async def apply_vxlan6(self, desired: VxlanDevice | None) -> None:
        self._maybe_fail()
        self.kernel.ops["vxlan6"] += 1
        old = self.kernel.vxlan6
        if old is not None and (desired is None or desired.name != old.name):
            self._drop_device(old.name)
        self.kernel.vxlan6 = desired

    def _drop_device(self, name: str) -> None:
        k = self.kernel
        k.routes = {
            key: (p, r)
            for key, (p, r) in k.routes.items()
            if all(h.ifname != name for h in r.nexthops)
        }
        k.neighbors = {key: n for key, n in k.neighbors.items() if n.ifname != name}
        k.fdb = {e for e in k.fdb if e.ifname != name}
