"""The route table reconciler: owns desired and actual kernel state and
applies the difference through the ports.

- ``set_desired`` (a whole new state; ``set_whole``: the same, its routes
  already in the order to walk them) and ``apply_change`` (a
  ``DesiredChange``: routes by key plus the small rest) only store what
  they are given and mark the reconciler dirty; the loop in ``run`` does the
  work, so a burst of updates costs one pass.
- A *full* pass (at start, every ``resync_interval`` seconds, after a link or
  address change, after a broken channel) re-reads what we own from the
  kernel (mark and sweep): equal routes are left alone, missing ones added,
  stale ones deleted. In between, *incremental* passes diff desired against
  what the reconciler believes the kernel holds, for the route keys changed
  since the last pass only (plus those waiting for a retry): one changed
  route costs one comparison, not a table's (after ``set_desired`` every
  key counts as changed).
- Nothing is swept before the first ``set_desired``: a restarted process
  must not delete what it is about to want again. Changes given before it
  (``apply_change``: a node programming routes while its peers still send
  their tables) are applied key by key: their routes are added or replaced,
  and a route is deleted only when a change removes its key; neighbour and
  FDB entries are only added. The first ``set_desired`` says the desired
  state is whole, and the next pass sweeps what it does not hold.
- Each failed item is retried with exponential backoff, keyed by what it
  is (route key, neighbour, FDB entry); the rest of its batch and of the
  pass goes on. A changed desire for that key cancels its backoff.
- Every kernel call goes through the async ports, and diffs of big tables
  run in a worker thread, so the event loop never stalls on this.
  Upserts go to the port ``batch_size`` at a time, deletes in far bigger
  batches (``delete_batch_size``): a lost peer's tens of thousands of them
  cost one or two round trips to the netlink thread, in the order their
  keys changed. Up to ``batches_ahead`` batches go out before the oldest is
  answered (and settled, in order), so the netlink thread never waits for
  this one between batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import logging
import math
import time
from collections import Counter, deque
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from operator import attrgetter, itemgetter
from typing import Any, TypeVar

from felix_lite.delta import (
    KernelDelta,
    RouteKey,
    decide_route_equal,
    index_routes,
    plan_delta,
    plan_route_ops_for,
)
from felix_lite.gc_pause import gc_paused
from felix_lite.inputs import VXLAN_DEVICE
from felix_lite.model import (
    DEFAULT_PROTO,
    MAIN_TABLE,
    DesiredChange,
    FdbEntry,
    IpipDevice,
    KernelRoute,
    KernelState,
    NeighborEntry,
    VxlanDevice,
)
from felix_lite.ports import (
    FdbOp,
    NeighborOp,
    Op,
    OpFailure,
    RouteOp,
    RouteTable,
    TunnelDevices,
)

log = logging.getLogger(__name__)

T = TypeVar("T", RouteOp, NeighborOp, FdbOp)

# A delete that finds nothing to delete has reached its goal.
_GONE = frozenset({errno.ESRCH, errno.ENOENT})
# Diffs bigger than this run in a worker thread.
_THREAD_DIFF_ABOVE = 5000


@dataclass(frozen=True)
class Backoff:
    initial: float = 0.2
    factor: float = 2.0
    maximum: float = 30.0

    def delay(self, attempts: int) -> float:
        return min(self.maximum, self.initial * self.factor ** max(0, attempts - 1))


@dataclass(frozen=True)
class Retry:
    item: Hashable  # the op (or device pair) that failed
    attempts: int
    not_before: float
    errno: int
    message: str


@dataclass(frozen=True)
class PassReport:
    full: bool
    route_adds: int = 0
    route_replaces: int = 0
    route_deletes: int = 0
    neighbor_ops: int = 0
    fdb_ops: int = 0
    device_ops: int = 0
    failures: int = 0
    held_back: int = 0
    seconds: float = 0.0  # wall time of the pass

    @property
    def changes(self) -> int:
        return (
            self.route_adds
            + self.route_replaces
            + self.route_deletes
            + self.neighbor_ops
            + self.fdb_ops
            + self.device_ops
        )


_op_kind = itemgetter(0)
_op_route = itemgetter(1)
_route_key = attrgetter("key")


def _retrieve(fut: asyncio.Future[Any]) -> None:
    """Mark an abandoned batch's outcome as seen (the pass failed already)."""
    if not fut.cancelled():
        fut.exception()


def _retry_key(op: RouteOp | NeighborOp | FdbOp) -> Hashable:
    if isinstance(op, RouteOp):
        return ("route", op.route.key)
    if isinstance(op, NeighborOp):
        return ("neigh", op.entry.ifname, str(op.entry.ip))
    return ("fdb", op.entry)


class Reconciler:
    def __init__(
        self,
        routes: RouteTable,
        *,
        tunnels: TunnelDevices | None = None,
        proto: int = DEFAULT_PROTO,
        table: int = MAIN_TABLE,
        resync_interval: float = 90.0,
        batch_size: int = 1000,
        delete_batch_size: int = 32768,
        batches_ahead: int = 3,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.monotonic,
        vxlan_devices: Iterable[str] = (VXLAN_DEVICE,),
    ) -> None:
        self._routes = routes
        self._tunnels = tunnels
        self.proto = proto
        self.table = table
        self.resync_interval = resync_interval
        self.batch_size = batch_size
        self.delete_batch_size = delete_batch_size
        self.batches_ahead = batches_ahead
        self.backoff = backoff or Backoff()
        self._clock = clock
        # Devices whose permanent neighbours and FDB entries are ours, read
        # back on every full pass even when the desired state does not
        # mention them, so a restart also sweeps what a previous run left.
        self.vxlan_devices = frozenset(vxlan_devices)

        # Everything but the routes (neighbours, FDB, devices); the routes
        # are in _desired_routes, changed by key through _pending.
        self._desired: KernelState | None = None
        self._desired_routes: dict[RouteKey, KernelRoute] = {}
        self._pending: list[DesiredChange] = []
        # a dict, not a set: the keys keep the order they changed in, so a
        # pass's deletes need no sort to come out the same every run
        self._changed_keys: dict[RouteKey, None] = {}
        self._all_changed = True
        self._whole = False  # set_desired came: passes may sweep
        self._generation = 0  # counts every change of the desired state
        self._actual_routes: dict[RouteKey, KernelRoute] = {}
        self._actual_neighbors: set[NeighborEntry] = set()
        self._actual_fdb: set[FdbEntry] = set()
        self._read_all_equal = False
        self._applied_devices: (
            tuple[IpipDevice | None, VxlanDevice | None, VxlanDevice | None] | None
        ) = None
        self.retries: dict[Hashable, Retry] = {}
        self._full_due = True
        self._last_full = -math.inf
        self._dirty = asyncio.Event()
        self._converged = asyncio.Event()
        self.totals: Counter[str] = Counter()
        self.pass_count: Counter[str] = Counter()  # by "full" / "incremental"
        self.pass_seconds: dict[str, float] = {"full": 0.0, "incremental": 0.0}

    # --- handlers: cheap, only mark dirty --------------------------------

    def set_desired(self, state: KernelState) -> None:
        """A whole new desired state (a full rebuild): every key is diffed."""
        # Indexed in address order (id), which is about the order the
        # routes were made in, not in the set's hash order: the pass then
        # walks memory in order, where the hash order cost a cache miss per
        # object touched (~1.5 us a route of a 100k-route start's pass).
        routes = tuple(sorted(state.routes, key=id))
        self.set_whole(DesiredChange(routes, (), dataclasses.replace(state, routes=frozenset())))

    def set_whole(self, whole: DesiredChange) -> None:
        """``set_desired`` of the state ``whole`` makes from nothing: its
        upserts are every route, in the order a pass should walk them (a
        planner's order: see ``IncrementalPlanner.whole``), its base the
        rest."""
        if whole.removes or whole.base.routes:
            raise ValueError("a whole state is its upserts and a base without routes")
        routes = index_routes(whole.upserts)
        foreign = set(map(itemgetter(0), routes)) - {self.table}  # no Python call per route
        if foreign:
            log.warning("ignoring desired routes in tables %s", sorted(foreign))
            routes = {key: r for key, r in routes.items() if key[0] == self.table}
        # The routes live on in _desired_routes only: a second copy of a
        # 100k-route set is ~4 MB.
        self._desired = whole.base
        self._desired_routes = routes
        self._pending.clear()
        self._changed_keys.clear()
        self._all_changed = True
        self._whole = True
        self._changed()

    def apply_change(self, change: DesiredChange) -> None:
        """Change the desired state by ``change`` (applied to the routes at
        the start of the next pass, in the order given). Before the first
        ``set_desired`` it starts from an empty state and sweeps nothing
        (see the module docstring)."""
        if self._desired is None:
            self._desired = change.base
        self._pending.append(change)
        self._changed()

    def _changed(self) -> None:
        self._generation += 1
        self._converged.clear()
        self._dirty.set()

    def _merge_pending(self) -> None:
        """Fold the pending changes into the desired routes, on the loop and
        never while a diff runs in a worker thread."""
        pending, self._pending = self._pending, []
        routes, keys = self._desired_routes, self._changed_keys
        for change in pending:
            for key in change.removes:
                routes.pop(key, None)
                keys[key] = None
            for r in change.upserts:
                if r.table != self.table:
                    log.warning("ignoring a desired route in table %d", r.table)
                    continue
                routes[r.key] = r
                keys[r.key] = None
            self._desired = change.base

    def request_resync(self) -> None:
        self._full_due = True
        self._converged.clear()
        self._dirty.set()

    @property
    def actual_routes(self) -> dict[RouteKey, KernelRoute]:
        return dict(self._actual_routes)

    async def wait_converged(self) -> None:
        """Return once a pass ended with nothing left to do or retry."""
        await self._converged.wait()

    # --- the loop --------------------------------------------------------

    async def run(self) -> None:
        """Reconcile until cancelled."""
        failures = 0
        while True:
            await self._wait_for_work()
            if self._desired is None:
                continue
            full = self._full_due or self._clock() - self._last_full >= self.resync_interval
            try:
                await self.sync_once(full=full)
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception:
                # A broken channel: our belief about the kernel is suspect.
                failures += 1
                delay = self.backoff.delay(failures)
                log.exception("reconcile pass failed; full resync in %.1fs", delay)
                self._full_due = True
                await asyncio.sleep(delay)
                self._dirty.set()

    async def _wait_for_work(self) -> None:
        if self._desired is None:
            await self._dirty.wait()
            self._dirty.clear()
            return
        deadlines = [self._last_full + self.resync_interval]
        deadlines += [r.not_before for r in self.retries.values()]
        timeout = max(0.0, min(deadlines) - self._clock())
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._dirty.wait()
        self._dirty.clear()

    # --- one pass --------------------------------------------------------

    async def sync_once(self, *, full: bool) -> PassReport:
        """One reconcile pass. ``full`` re-reads the kernel first."""
        if self._desired is None:
            raise RuntimeError("sync_once before set_desired")
        self._merge_pending()
        desired = self._desired
        generation = self._generation
        desired_routes = self._desired_routes
        # Taken before the first await: what changes during this pass waits
        # (in _pending, or as a new _all_changed) for the next one, and the
        # routes diffed below never move under a worker thread.
        whole = self._whole
        all_changed = whole and (self._all_changed or full)
        if whole:
            self._all_changed = False
        keys, self._changed_keys = self._changed_keys, {}
        if not all_changed:
            for k in self.retries:
                if isinstance(k, tuple) and k[0] == "route":
                    keys[k[1]] = None
        size = len(desired_routes) + len(self._actual_routes) if all_changed else len(keys)
        # A pass over many routes allocates per route (the read, the ops,
        # the messages), and the tables it walks were just built: no cyclic
        # collection from end to end (its I/O is bounded by the socket's
        # timeout). At 100k routes the collections it spared cost ~0.1 s of
        # a 1 s start and freed nothing; the node then freezes what it holds
        # (meshroute.runtime.heap), so most never run.
        with gc_paused() if size > _THREAD_DIFF_ABOVE else contextlib.nullcontext():
            return await self._pass(
                desired, generation, desired_routes, whole, all_changed, keys, full
            )

    async def _pass(
        self,
        desired: KernelState,
        generation: int,
        desired_routes: dict[RouteKey, KernelRoute],
        whole: bool,
        all_changed: bool,
        keys: dict[RouteKey, None],
        full: bool,
    ) -> PassReport:
        counts: Counter[str] = Counter()
        started = time.perf_counter()

        await self._apply_devices(desired, full, counts)
        if full:
            await self._read_kernel(desired)
            self._last_full = self._clock()
            self._full_due = False

        if all_changed:
            if full and self._read_all_equal and generation == self._generation:
                # The read found every desired route, equal, and nothing
                # else: no route operation to plan (the common resync).
                delta = self._plan(desired, {}, {})
            elif len(desired_routes) + len(self._actual_routes) > _THREAD_DIFF_ABOVE:
                delta = await asyncio.to_thread(self._plan, desired, desired_routes)
            else:
                delta = self._plan(desired, desired_routes)
        else:
            delta = self._plan_keys(desired, keys)
            if not whole:  # what was not given yet may still be wanted
                delta = dataclasses.replace(delta, neighbor_deletes=(), fdb_deletes=())

        await self._apply_fdb(delta.fdb_deletes, counts)
        await self._apply_neighbors(delta.neighbor_upserts, counts)
        await self._apply_fdb(delta.fdb_upserts, counts)
        await self._apply_routes(delta.route_upserts, counts, self.batch_size)
        await self._apply_routes(delta.route_deletes, counts, self.delete_batch_size)
        await self._apply_neighbors(delta.neighbor_deletes, counts)

        report = PassReport(
            full=full,
            route_adds=counts["route_add"],
            route_replaces=counts["route_replace"],
            route_deletes=counts["route_delete"],
            neighbor_ops=counts["neighbor"],
            fdb_ops=counts["fdb"],
            device_ops=counts["device"],
            failures=counts["failure"],
            held_back=counts["held_back"],
            seconds=time.perf_counter() - started,
        )
        self.totals.update(counts)
        kind = "full" if full else "incremental"
        self.pass_count[kind] += 1
        self.pass_seconds[kind] += report.seconds
        if report.failures:
            log.warning("pass left %d failed items (retrying with backoff)", len(self.retries))
        if not self.retries and not self._dirty.is_set() and generation == self._generation:
            self._converged.set()
        return report

    def _plan(
        self,
        desired: KernelState,
        desired_routes: dict[RouteKey, KernelRoute],
        actual_routes: dict[RouteKey, KernelRoute] | None = None,
    ) -> KernelDelta:
        with gc_paused():  # one op per route of a big diff: no cycles among them
            return plan_delta(
                desired_routes,
                self._actual_routes if actual_routes is None else actual_routes,
                desired.neighbors,
                self._actual_neighbors,
                desired.fdb,
                self._actual_fdb,
            )

    def _plan_keys(self, desired: KernelState, keys: Iterable[RouteKey]) -> KernelDelta:
        r_up, r_del = plan_route_ops_for(keys, self._desired_routes, self._actual_routes)
        small = self._plan(desired, {}, {})
        return dataclasses.replace(small, route_upserts=tuple(r_up), route_deletes=tuple(r_del))

    async def _read_kernel(self, desired: KernelState) -> None:
        routes: dict[RouteKey, KernelRoute] = {}
        desired_routes = self._desired_routes
        equal = 0
        async for r in self._routes.dump_owned(self.proto, self.table, desired_routes):
            want = desired_routes.get(r.key)
            # Keep the desired object when the kernel's route equals it: the
            # dumped copy is freed at once (a 100k-route table is held once,
            # not twice) and the diff settles it by identity. The adapter may
            # already have answered with that object (see ``dump_owned``).
            if r is want or (want is not None and decide_route_equal(want, r)):
                routes[r.key] = want
                equal += 1
            else:
                routes[r.key] = r
        self._read_all_equal = equal == len(desired_routes) == len(routes)
        devices = set(self.vxlan_devices)
        devices |= {n.ifname for n in desired.neighbors} | {e.ifname for e in desired.fdb}
        devices |= {n.ifname for n in self._actual_neighbors}
        devices |= {e.ifname for e in self._actual_fdb}
        devices |= {d.name for d in (desired.vxlan, desired.vxlan6) if d is not None}
        neighbors: set[NeighborEntry] = set()
        fdb: set[FdbEntry] = set()
        for dev in sorted(devices):
            neighbors.update(await self._routes.dump_neighbors(dev))
            fdb.update(await self._routes.dump_fdb(dev))
        self._actual_routes = routes
        self._actual_neighbors = neighbors
        self._actual_fdb = fdb

    async def _apply_devices(self, desired: KernelState, full: bool, counts: Counter[str]) -> None:
        if self._tunnels is None:
            return
        want = (desired.ipip, desired.vxlan, desired.vxlan6)
        if not full and self._applied_devices == want:
            return
        key = ("devices",)
        if not self._ready(key, want, counts):
            return
        try:
            await self._tunnels.apply_ipip(desired.ipip)
            await self._tunnels.apply_vxlan(desired.vxlan)
            await self._tunnels.apply_vxlan6(desired.vxlan6)
        except Exception as e:  # one device failing must not hold up the routes
            err = getattr(e, "errno", None) or getattr(e, "code", None)
            self._failed(key, want, err if isinstance(err, int) else 0, str(e), counts)
            return
        if self._applied_devices != want:
            counts["device"] += 1
        self._applied_devices = want
        self.retries.pop(key, None)

    # --- backoff bookkeeping ---------------------------------------------

    def _ready(self, key: Hashable, item: Hashable, counts: Counter[str]) -> bool:
        r = self.retries.get(key)
        if r is None:
            return True
        if r.item != item:
            del self.retries[key]  # the desire changed: try the new one now
            return True
        if self._clock() >= r.not_before:
            return True
        counts["held_back"] += 1
        return False

    def _failed(
        self, key: Hashable, item: Hashable, err: int, message: str, counts: Counter[str]
    ) -> None:
        prev = self.retries.get(key)
        attempts = prev.attempts + 1 if prev is not None and prev.item == item else 1
        delay = self.backoff.delay(attempts)
        self.retries[key] = Retry(item, attempts, self._clock() + delay, err, message)
        counts["failure"] += 1
        log.debug("%r failed (%s %s); retry %d in %.1fs", item, err, message, attempts, delay)

    def _ready_ops(self, ops: Iterable[T], counts: Counter[str]) -> list[T]:
        if not self.retries:  # the usual case; 100k route keys are not free
            return list(ops)
        return [op for op in ops if self._ready(_retry_key(op), op, counts)]

    # --- applying --------------------------------------------------------

    async def _apply_routes(
        self, ops: Sequence[RouteOp], counts: Counter[str], batch_size: int
    ) -> None:
        # Deletes go in far bigger batches than upserts: a peer gone is tens
        # of thousands of them, and each batch is a round trip to the netlink
        # worker thread, which a loaded machine may take milliseconds to
        # schedule (the netlink layer still frames them into sends of a few
        # thousand messages).
        ready = self._ready_ops(ops, counts)
        batches = [ready[i : i + batch_size] for i in range(0, len(ready), batch_size)]
        # Batches ahead: the adapter writes the next ones while this thread
        # settles one (the kernel's share runs without the GIL), so it never
        # waits for this thread to wake up between batches, nor runs dry
        # when a loaded machine leaves this thread unscheduled for a while.
        # Settled in order, each once answered.
        Sent = tuple[
            list[RouteOp], dict[RouteKey, KernelRoute], asyncio.Future[list[OpFailure[RouteOp]]]
        ]

        def send(batch: list[RouteOp]) -> Sent:
            # Indexed now, while the encoder is about to read the same routes:
            # settling then merges a dict (its hashes stored) and touches no
            # route again, long after the cache forgot them.
            routes = list(map(_op_route, batch))
            index = dict(zip(map(_route_key, routes), routes, strict=True))
            return batch, index, asyncio.ensure_future(self._routes.apply_routes(batch, self.proto))

        sent: deque[Sent] = deque()
        started = 0
        try:
            while sent or started < len(batches):
                while started < len(batches) and len(sent) <= self.batches_ahead:
                    sent.append(send(batches[started]))
                    started += 1
                done, index, answer = sent.popleft()
                self._settle_routes(done, index, await answer, counts)
        finally:
            for _, _, left in sent:  # a broken channel: the pass ends here
                left.cancel()
                left.add_done_callback(_retrieve)

    def _settle_routes(
        self,
        batch: Sequence[RouteOp],
        index: dict[RouteKey, KernelRoute],
        failures: Sequence[OpFailure[RouteOp]],
        counts: Counter[str],
    ) -> None:
        """Store what ``batch`` (its routes by key in ``index``) did."""
        failed = self._record(batch, failures, counts)
        actual = self._actual_routes
        if failed:  # the rare case: only then is an op looked up
            batch = [op for op in batch if op not in failed]
            for op in failed:
                index.pop(op.route.key, None)  # a pass has one op a key
        # Counted and stored by C loops (list.count matches by identity
        # first). A batch is all upserts or all deletes: a pass sends them apart.
        kinds = list(map(_op_kind, batch))
        adds, deletes = kinds.count(Op.ADD), kinds.count(Op.DELETE)
        replaces = len(kinds) - adds - deletes
        if not deletes:
            actual.update(index)
        else:
            assert deletes == len(kinds), "a batch mixes upserts and deletes"
            for key in index:
                actual.pop(key, None)
        counts["route_add"] += adds
        counts["route_replace"] += replaces
        counts["route_delete"] += deletes

    async def _apply_neighbors(self, ops: Sequence[NeighborOp], counts: Counter[str]) -> None:
        ready = self._ready_ops(ops, counts)
        if not ready:
            return
        failed = self._record(ready, await self._routes.apply_neighbors(ready), counts)
        for op in ready:
            if failed and op in failed:
                continue
            n = op.entry
            self._actual_neighbors = {
                x for x in self._actual_neighbors if (x.ifname, x.ip) != (n.ifname, n.ip)
            }
            if op.op is not Op.DELETE:
                self._actual_neighbors.add(n)
            counts["neighbor"] += 1

    async def _apply_fdb(self, ops: Sequence[FdbOp], counts: Counter[str]) -> None:
        ready = self._ready_ops(ops, counts)
        if not ready:
            return
        failed = self._record(ready, await self._routes.apply_fdb(ready), counts)
        for op in ready:
            if failed and op in failed:
                continue
            e = op.entry
            if op.op is Op.DELETE:
                self._actual_fdb.discard(e)
            else:
                self._actual_fdb = {
                    x for x in self._actual_fdb if (x.ifname, x.lladdr) != (e.ifname, e.lladdr)
                }
                self._actual_fdb.add(e)
            counts["fdb"] += 1

    def _record(
        self, batch: Sequence[T], failures: Sequence[OpFailure[T]], counts: Counter[str]
    ) -> set[T]:
        """Note failures for backoff, clear retries of what succeeded, and
        return the ops that did not reach their goal."""
        failed: set[T] = set()
        for f in failures:
            if f.item.op is Op.DELETE and f.errno in _GONE:
                continue  # already gone: the goal is reached
            failed.add(f.item)
            self._failed(_retry_key(f.item), f.item, f.errno, f.message, counts)
        if self.retries:
            for op in batch:
                if not (failed and op in failed):
                    self.retries.pop(_retry_key(op), None)
        return failed
