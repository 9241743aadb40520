"""The real ``RouteTable`` port, over netlink.

This module owns the translation between the ports' named, typed values and
the kernel: interface names resolved to indexes (and back) at this edge,
routes written and streamed through ``netlink_bulk`` (the fast path), and
the few neighbour, FDB and link operations through ``rtnetlink.client``.

All netlink I/O runs on one worker thread per adapter (a single-thread
executor), so the event loop never blocks and the sockets are never used
by two threads at once. Route batches are encoded and framed on the
caller's thread (a millisecond or two per thousand routes), so encoding
one batch overlaps the kernel's work on the one before, and the worker
holds the GIL only between its sends. (The host's links and addresses are read by
``felix_lite.netlink_host``.)

A namespace name (``netns``) makes every socket live in that namespace
(see ``rtnetlink.sockets.netlink_socket``). The process itself stays where it
is.
"""

from __future__ import annotations

import asyncio
import errno
import math
import os
import socket
import time
from collections.abc import AsyncIterator, Callable, Generator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from operator import itemgetter
from typing import Any, TypeVar

from netaddr import IPAddress

from felix_lite import netlink_routes as nc
from felix_lite.inputs import IPIP_DEVICE, VXLAN_DEVICE
from felix_lite.model import FdbEntry, KernelRoute, NeighborEntry, NextHop, RouteKind
from felix_lite.netlink_bulk import (
    OP_ADD,
    OP_DELETE,
    OP_REPLACE,
    BulkRoutes,
    Frames,
)
from felix_lite.ports import FdbOp, NeighborOp, Op, OpFailure, RouteOp
from rtnetlink import attrs as na
from rtnetlink import routes as nr
from rtnetlink.client import RtnlClient

T = TypeVar("T")
Op_ = TypeVar("Op_", NeighborOp, FdbOp)
_op_kind = itemgetter(0)
_op_route = itemgetter(1)

LINKS_MAX_AGE = 1.0

# A batch encoded: (its messages framed, the ops they are, failures so far).
_Encoded = tuple[list[Frames], list[RouteOp], list[OpFailure[RouteOp]]]


class _Worker:
    """One thread that owns the sockets of an adapter."""

    def __init__(self, name: str) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        return self._pool.submit(fn, *args).result()

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True)


class DeviceKinds:
    """The reason a route read back exists, guessed from its devices (the
    kernel does not store it; only blackhole-or-not matters to the delta)."""

    def __init__(self, ipip_name: str = IPIP_DEVICE, vxlan_name: str = VXLAN_DEVICE) -> None:
        self.ipip_name = ipip_name
        self.vxlan_name = vxlan_name

    def __call__(self, route: nr.WireRoute, nexthops: tuple[NextHop, ...]) -> RouteKind:
        if route.type == nr.RTN_BLACKHOLE:
            return RouteKind.BLACKHOLE
        devices = {nh.ifname for nh in nexthops}
        if devices == {self.ipip_name}:
            return RouteKind.IPIP
        if devices == {self.vxlan_name}:
            return RouteKind.VXLAN
        return RouteKind.DIRECT


class NetlinkRouteTable:
    """``ports.RouteTable`` on the real kernel (optionally in ``netns``)."""

    def __init__(
        self,
        netns: str | None = None,
        *,
        ipip_name: str = IPIP_DEVICE,
        vxlan_name: str = VXLAN_DEVICE,
    ) -> None:
        self.netns = netns
        self._worker = _Worker("felix-netlink")
        self._kinds = DeviceKinds(ipip_name, vxlan_name)
        self._index: dict[str, int] = {}
        self._encoders: dict[int, nc.RouteEncoder] = {}  # per protocol
        self._bulk: BulkRoutes = self._worker.call(BulkRoutes, netns)
        self._rtnl = self._worker.call(RtnlClient, netns)
        self._links_read_at = -math.inf

    def close(self) -> None:
        def shut() -> None:
            self._bulk.close()
            self._rtnl.close()

        self._worker.call(shut)
        self._worker.shutdown()

    async def __aenter__(self) -> NetlinkRouteTable:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.close)

    # ----------------------------------------------------- on the worker

    def _refresh_links(self, *, max_age: float = 0.0) -> bool:
        """Re-read name <-> index unless read less than ``max_age`` s ago
        (True if it did). A stale index is harmless: the kernel refuses that
        route (ENODEV) and the reconciler retries it after a later refresh."""
        now = time.monotonic()
        if now - self._links_read_at < max_age:
            return False
        index = {link.name: link.index for link in self._rtnl.links()}
        if index != self._index:
            self._index = index  # encoders made with the old one are replaced on use
        self._links_read_at = now
        return True

    def _ifindex(self, ifname: str) -> int | None:
        return self._rtnl.link_index(ifname)

    def _encode_routes(self, ops: Sequence[RouteOp], proto: int, fresh: bool) -> _Encoded:
        """(messages framed, the ops they are, failures so far). A device name
        not in the links read raises KeyError, unless they were just read
        (``fresh``): then it is that route's ENODEV."""
        enc = self._encoder(proto)
        # A batch of one kind (the reconciler's are: upserts or deletes of
        # one pass) is encoded by a C loop; list.count matches by identity.
        kinds = list(map(_op_kind, ops))
        for kind, code, body in (
            (Op.ADD, OP_ADD, enc.new_body),
            (Op.REPLACE, OP_REPLACE, enc.new_body),
            (Op.DELETE, OP_DELETE, enc.delete_body),
        ):
            if kinds.count(kind) == len(kinds):
                try:
                    bodies = list(map(body, map(_op_route, ops)))
                except KeyError:
                    if not fresh:
                        raise
                    break  # op by op below, to name the route with no device
                return self._bulk.frame([code] * len(bodies), bodies), list(ops), []
        failures: list[OpFailure[RouteOp]] = []
        codes: list[int] = []
        bodies = []
        sent: list[RouteOp] = []
        for op in ops:
            kind, route = op
            try:
                if kind is Op.DELETE:
                    code, msg = OP_DELETE, enc.delete_body(route)
                else:
                    code, msg = OP_ADD if kind is Op.ADD else OP_REPLACE, enc.new_body(route)
            except KeyError as e:
                if not fresh:
                    raise
                failures.append(OpFailure(op, errno.ENODEV, f"no such device: {e.args[0]}"))
                continue
            codes.append(code)
            bodies.append(msg)
            sent.append(op)
        return self._bulk.frame(codes, bodies), sent, failures

    def _send_routes(self, encoded: _Encoded) -> list[OpFailure[RouteOp]]:
        frames, sent, failures = encoded
        for f in self._bulk.send_frames(frames):
            failures.append(OpFailure(sent[f.index], f.errno, f.message or _strerror(f.errno)))
        return failures

    def _encoder(self, proto: int) -> nc.RouteEncoder:
        enc = self._encoders.get(proto)
        # An encoder made before the links were read again carries their
        # old indexes (and caches next hops encoded with them).
        if enc is None or enc.ifindex is not self._index:
            enc = self._encoders[proto] = nc.RouteEncoder(self._index, proto)
        return enc

    def _dump_chunks(
        self, proto: int, table: int, known: Mapping[tuple[int, str], KernelRoute] | None
    ) -> Generator[list[KernelRoute], None, None]:
        self._refresh_links()
        decoder = nc.RouteDecoder({i: n for n, i in self._index.items()}, self._kinds, known)
        decode = decoder.parse

        def parse(buf: bytes, start: int, end: int) -> KernelRoute | None:
            r = decode(buf, start, end, proto)
            return r if r is not None and (not table or r.table == table) else None

        yield from self._bulk.dump_parsed(parse, proto, table)

    def _dump_neighbors(self, ifname: str) -> list[NeighborEntry]:
        idx = self._ifindex(ifname)
        if idx is None:
            return []
        return [
            NeighborEntry(ifname, IPAddress(m.dst), m.lladdr)
            for m in self._rtnl.neighbours(socket.AF_UNSPEC)
            if m.ifindex == idx and m.state & na.NUD_PERMANENT and m.dst and m.lladdr
        ]

    def _apply_each(
        self, ops: Sequence[Op_], ifname: Callable[[Op_], str], apply: Callable[[Op_, int], None]
    ) -> list[OpFailure[Op_]]:
        """Apply neighbour or FDB ops one by one; every refusal is that op's
        failure (errno from the kernel), the others go on."""
        failures: list[OpFailure[Op_]] = []
        for op in ops:
            idx = self._ifindex(ifname(op))
            if idx is None:
                failures.append(OpFailure(op, errno.ENODEV, f"no such device: {ifname(op)}"))
                continue
            try:
                apply(op, idx)
            except OSError as exc:  # the kernel's refusal, with its errno
                failures.append(OpFailure(op, exc.errno or errno.EIO, str(exc)))
        return failures

    def _apply_neighbors(self, ops: Sequence[NeighborOp]) -> list[OpFailure[NeighborOp]]:
        def apply(op: NeighborOp, idx: int) -> None:
            e = op.entry
            what = f"neigh {op.op.name.lower()} {e.ip} dev {e.ifname}"
            if op.op is Op.DELETE:
                self._rtnl.neigh_delete(na.neigh_body(idx, dst=str(e.ip)), what)
            else:
                body = na.neigh_body(idx, dst=str(e.ip), lladdr=e.lladdr, state=na.NUD_PERMANENT)
                self._rtnl.neigh_replace(body, what)

        return self._apply_each(ops, lambda op: op.entry.ifname, apply)

    def _dump_fdb(self, ifname: str) -> list[FdbEntry]:
        idx = self._ifindex(ifname)
        if idx is None:
            return []
        return [
            FdbEntry(ifname, m.lladdr, IPAddress(m.dst))
            for m in self._rtnl.neighbours(na.AF_BRIDGE)
            if m.ifindex == idx and m.dst and m.lladdr
        ]

    def _apply_fdb(self, ops: Sequence[FdbOp]) -> list[OpFailure[FdbOp]]:
        def apply(op: FdbOp, idx: int) -> None:
            e = op.entry
            what = f"fdb {op.op.name.lower()} {e.lladdr} dst {e.dst} dev {e.ifname}"
            # The device's own FDB (NTF_SELF), permanent: vxlan refuses
            # (EOPNOTSUPP) an entry that is neither.
            body = na.neigh_body(
                idx,
                dst=str(e.dst),
                lladdr=e.lladdr,
                state=na.NUD_PERMANENT | na.NUD_NOARP,
                flags=na.NTF_SELF,
                family=na.AF_BRIDGE,
            )
            if op.op is Op.DELETE:
                self._rtnl.neigh_delete(body, what)
            else:
                self._rtnl.neigh_replace(body, what)

        return self._apply_each(ops, lambda op: op.entry.ifname, apply)

    # ------------------------------------------------------------ the port

    async def dump_owned(
        self, proto: int, table: int, known: Mapping[tuple[int, str], KernelRoute] | None = None
    ) -> AsyncIterator[KernelRoute]:
        # ``known`` is read on the worker while the dump runs: the reconciler
        # does not change the mapping it passes until the dump is over.
        chunks = self._dump_chunks(proto, table, known)
        try:
            while True:
                chunk = await self._worker.run(next, chunks, None)
                if chunk is None:
                    return
                for route in chunk:
                    yield route
        finally:
            await self._worker.run(chunks.close)

    async def apply_routes(self, ops: Sequence[RouteOp], proto: int) -> list[OpFailure[RouteOp]]:
        # Encoded and framed here, on the caller's thread; only the send is
        # the worker's. The reconciler keeps batches ahead, so this one is
        # encoded while the kernel works on those before (a send releases
        # the GIL). The links
        # are read at most once a second for a batch that writes (deletes
        # name no device: a peer's routes go without waiting for them), and
        # at once when a name is unknown.
        fresh = False
        if time.monotonic() - self._links_read_at >= LINKS_MAX_AGE and any(
            op.op is not Op.DELETE for op in ops
        ):
            fresh = await self._worker.run(self._refresh_links)
        try:
            encoded = self._encode_routes(ops, proto, fresh)
        except KeyError:
            await self._worker.run(self._refresh_links)
            encoded = self._encode_routes(ops, proto, True)
        return await self._worker.run(self._send_routes, encoded)

    async def dump_neighbors(self, ifname: str) -> list[NeighborEntry]:
        return await self._worker.run(self._dump_neighbors, ifname)

    async def apply_neighbors(self, ops: Sequence[NeighborOp]) -> list[OpFailure[NeighborOp]]:
        return await self._worker.run(self._apply_neighbors, ops)

    async def dump_fdb(self, ifname: str) -> list[FdbEntry]:
        return await self._worker.run(self._dump_fdb, ifname)

    async def apply_fdb(self, ops: Sequence[FdbOp]) -> list[OpFailure[FdbOp]]:
        return await self._worker.run(self._apply_fdb, ops)


def _strerror(err: int) -> str:
    return os.strerror(err)
