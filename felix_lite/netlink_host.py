"""``NetlinkHost``: felix_lite's reader of the host, over netlink.

One long-lived socket joins the link, address and route groups
(RTNLGRP_LINK, RTNLGRP_IPV4_IFADDR/IPV6_IFADDR, RTNLGRP_IPV4_ROUTE/
IPV6_ROUTE) and the event loop reads it (``add_reader``); every message
goes to ``HostState``. A full read (link, address and route dumps on a
short-lived socket, in a worker thread) happens at start, when
notifications were lost (ENOBUFS: the socket overflowed) and every
``resync_interval`` seconds as a safety net; and after a link change,
because IPv4 removes the routes through a link that goes down without
telling anyone. The subscription is opened
before the dumps and what it queued meanwhile is applied after them, so
no change falls between the two.

Our own routes would be most of the route notifications (100k on a full
install): a classic BPF filter on the socket drops RTM_NEWROUTE and
RTM_DELROUTE of our protocol inside the kernel, so they cost nothing here.

``on_change`` is called on the event loop with the set of kinds that
changed (a handler: it should only mark work dirty).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import logging
import socket
import struct
import time
from collections.abc import Callable

from felix_lite.host_state import HostChange, HostState
from felix_lite.inputs import HostInterface, UnderlayRoute
from felix_lite.netlink_bulk import RCVBUF
from rtnetlink import routes as nr
from rtnetlink import wire as nw
from rtnetlink.sockets import SO_RCVBUFFORCE, netlink_socket

log = logging.getLogger(__name__)

SO_ATTACH_FILTER = 26
RECV_SIZE = 1 << 20
GROUPS = nw.groups_mask(
    nw.RTNLGRP_LINK,
    nw.RTNLGRP_IPV4_IFADDR,
    nw.RTNLGRP_IPV6_IFADDR,
    nw.RTNLGRP_IPV4_ROUTE,
    nw.RTNLGRP_IPV6_ROUTE,
)
_FILTER = struct.Struct("=HBBI")  # struct sock_filter: code, jt, jf, k


def own_routes_filter(proto: int) -> bytes:
    """Classic BPF: drop route messages of protocol ``proto``, pass the rest.
    Byte loads only (word loads would be byte-swapped); a notification is
    one message per datagram, so fixed offsets hold."""
    ld_b_abs, jeq_k, ret_k = 0x30, 0x15, 0x06
    prog = [
        (ld_b_abs, 0, 0, 4),  # nlmsg_type, low byte (both types are < 256)
        (jeq_k, 1, 0, nr.RTM_NEWROUTE),
        (jeq_k, 0, 3, nr.RTM_DELROUTE),
        (ld_b_abs, 0, 0, nr.ROUTE_PROTOCOL_OFFSET),
        (jeq_k, 0, 1, proto),
        (ret_k, 0, 0, 0),  # drop
        (ret_k, 0, 0, 0xFFFFFFFF),  # pass whole
    ]
    return b"".join(_FILTER.pack(*ins) for ins in prog)


def _attach_filter(sock: socket.socket, program: bytes) -> None:
    buf = ctypes.create_string_buffer(program)
    fprog = struct.pack("HL", len(program) // _FILTER.size, ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


def _subscribe(netns: str | None, proto: int, rcvbuf: int) -> socket.socket:
    sock = netlink_socket(netns, groups=GROUPS)
    try:
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        _attach_filter(sock, own_routes_filter(proto))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _dump_into(state: HostState, netns: str | None) -> None:
    """Links, then addresses, then routes (of both families) into ``state``."""
    sock = netlink_socket(netns)
    try:
        sock.settimeout(30)
        requests = (
            nw.encode_link_dump_request(1),
            nw.encode_addr_dump_request(2),
            nr.encode_dump_request(socket.AF_INET, 3, table=state.table),
            nr.encode_dump_request(socket.AF_INET6, 4, table=state.table),
        )
        for seq, request in enumerate(requests, start=1):
            sock.send(request)
            done = False
            while not done:
                data = sock.recv(RECV_SIZE)
                for mtype, flags, mseq, start, end in nw.iter_messages(data):
                    if mseq != seq:
                        continue
                    if mtype == nw.NLMSG_DONE:
                        done = True
                    elif mtype == nw.NLMSG_ERROR:
                        reply = nw.parse_error(data, mseq, flags, start, end)
                        if reply.error:
                            raise OSError(reply.error, f"host dump: {reply.message}")
                        done = True
                    else:
                        state.apply(mtype, data, start, end)
    finally:
        sock.close()


class NetlinkHost:
    def __init__(
        self,
        netns: str | None = None,
        *,
        own_proto: int,
        table: int,
        resync_interval: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
        rcvbuf: int = RCVBUF,
    ) -> None:
        self.netns = netns
        self.own_proto = own_proto
        self.table = table
        self.resync_interval = resync_interval
        self._clock = clock
        self._rcvbuf = rcvbuf
        self._state = HostState(own_proto, table)
        self._ready = asyncio.Event()
        self._error: Exception | None = None
        self.full_reads = 0
        self.notifications = 0
        self.lost = 0  # times the socket overflowed (each one a full read)

    def interfaces(self) -> list[HostInterface]:
        return self._state.interfaces()

    def underlay(self) -> list[UnderlayRoute]:
        return self._state.underlay()

    async def wait_ready(self) -> None:
        """Until the first full read is in; raises what ended ``run`` first."""
        await self._ready.wait()
        if self._error is not None:
            raise self._error

    async def run(self, on_change: Callable[[set[HostChange]], None]) -> None:
        """Read the host until cancelled."""
        try:
            await self._run(on_change)
        except Exception as e:
            self._error = e
            self._ready.set()
            raise

    async def _run(self, on_change: Callable[[set[HostChange]], None]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            sock = await asyncio.to_thread(_subscribe, self.netns, self.own_proto, self._rcvbuf)
            readable = asyncio.Event()
            loop.add_reader(sock.fileno(), readable.set)
            try:
                await self._full_read(sock, on_change)
                await self._follow(sock, readable, on_change)
            except OSError as e:
                if e.errno != errno.ENOBUFS:
                    raise
                self.lost += 1
                log.info("netlink notifications were lost; reading the host again")
            finally:
                loop.remove_reader(sock.fileno())
                sock.close()

    async def _full_read(
        self, sock: socket.socket, on_change: Callable[[set[HostChange]], None]
    ) -> None:
        fresh = HostState(self.own_proto, self.table)
        await asyncio.to_thread(_dump_into, fresh, self.netns)
        self._drain(sock, fresh)  # what changed during the dumps, in order
        old, self._state = self._state, fresh
        self.full_reads += 1
        changed: set[HostChange] = set()
        if old.interfaces() != fresh.interfaces():
            changed |= {HostChange.LINKS, HostChange.ADDRESSES}
        if old.underlay() != fresh.underlay():
            changed.add(HostChange.UNDERLAY)
        self._ready.set()
        if changed:
            on_change(changed)

    async def _follow(
        self,
        sock: socket.socket,
        readable: asyncio.Event,
        on_change: Callable[[set[HostChange]], None],
    ) -> None:
        next_full = self._clock() + self.resync_interval
        while True:
            timeout = max(0.0, next_full - self._clock())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await readable.wait()
            if self._clock() >= next_full:
                await self._full_read(sock, on_change)
                next_full = self._clock() + self.resync_interval
                continue
            readable.clear()
            changed = self._drain(sock, self._state)
            if changed:
                on_change(changed)
            if HostChange.LINKS in changed:
                # IPv4 drops the routes through a link that goes down without
                # a notification for each: read them again.
                await self._full_read(sock, on_change)

    def _drain(self, sock: socket.socket, state: HostState) -> set[HostChange]:
        """Apply every queued notification; raises ENOBUFS when some were lost."""
        changed: set[HostChange] = set()
        while True:
            try:
                data = sock.recv(RECV_SIZE)
            except BlockingIOError:
                return changed
            for mtype, _flags, _seq, start, end in nw.iter_messages(data):
                self.notifications += 1
                kind = state.apply(mtype, data, start, end)
                if kind is not None:
                    changed.add(kind)
