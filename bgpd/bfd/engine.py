"""The Python side of BFD's compiled per-packet path (``engine.c``): loading
it, and the structures that cross between the two.

The engine is a thread of its own; every call here takes its lock briefly
and returns. ``Handover`` is what a session's ``Running`` value says the
thread may do alone (send the periodic packet, take the quiet payload,
watch the detection time); ``Event`` is what it hands back: a packet it did
not match, or an expired detection time. The sockets stay Python's: the
engine reads and writes their descriptors and never closes them.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import os
import socket
from dataclasses import dataclass
from typing import Final

from bgpd.bfd.running import Running

MAX_PAYLOAD: Final = 512
MAX_SHORT: Final = 64
QUEUE: Final = 1024  # events waiting for Python; beyond, packets are dropped and counted
PACKET: Final = 1
EXPIRED: Final = 2


class _Session(ctypes.Structure):
    _fields_ = [
        ("id", ctypes.c_uint32),
        ("fd", ctypes.c_int32),
        ("connected", ctypes.c_int32),
        ("family", ctypes.c_int32),
        ("port", ctypes.c_int32),
        ("peer", ctypes.c_uint8 * 16),
        ("multihop", ctypes.c_int32),
        ("min_ttl", ctypes.c_int32),
        ("sending", ctypes.c_int32),
        ("next_tx", ctypes.c_double),
        ("interval", ctypes.c_double),
        ("top", ctypes.c_double),
        ("soonest", ctypes.c_double),
        ("late", ctypes.c_double),
        ("has_detect", ctypes.c_int32),
        ("detect_at", ctypes.c_double),
        ("detect_s", ctypes.c_double),
        ("tx_len", ctypes.c_int32),
        ("tx", ctypes.c_uint8 * MAX_SHORT),
        ("rx_len", ctypes.c_int32),
        ("rx", ctypes.c_uint8 * MAX_SHORT),
    ]


class _Times(ctypes.Structure):
    _fields_ = [
        ("next_tx", ctypes.c_double),
        ("has_detect", ctypes.c_int32),
        ("detect_at", ctypes.c_double),
        ("last_quiet", ctypes.c_double),
        ("sent", ctypes.c_uint64),
        ("received", ctypes.c_uint64),
        ("send_errors", ctypes.c_uint64),
    ]


class _Event(ctypes.Structure):
    _fields_ = [
        ("kind", ctypes.c_int32),
        ("id", ctypes.c_uint32),
        ("at", ctypes.c_double),
        ("ttl", ctypes.c_int32),
        ("multihop", ctypes.c_int32),
        ("family", ctypes.c_int32),
        ("src", ctypes.c_uint8 * 16),
        ("len", ctypes.c_int32),
        ("data", ctypes.c_uint8 * MAX_PAYLOAD),
    ]


@dataclass(frozen=True, slots=True)
class Route:
    """Where a session's packets go and whose packets it takes."""

    disc: int
    sock: socket.socket
    connected: bool
    peer: bytes  # packed, 4 or 16 bytes
    port: int
    multihop: bool
    minimum_ttl: int


@dataclass(frozen=True, slots=True)
class Counters:
    sent: int
    received: int
    send_errors: int


@dataclass(frozen=True, slots=True)
class Times:
    next_tx: float
    detect_at: float | None
    last_quiet: float | None  # when the engine last took a quiet payload
    counters: Counters


@dataclass(frozen=True, slots=True)
class Packet:
    data: bytes
    ttl: int | None
    source: str
    multihop: bool
    at: float


@dataclass(frozen=True, slots=True)
class Expired:
    disc: int


class EngineMissing(RuntimeError):
    pass


def _load() -> ctypes.CDLL:
    spec = importlib.util.find_spec("bgpd.bfd._engine")
    if spec is None or spec.origin is None:
        raise EngineMissing(
            "BFD's compiled path (bgpd/bfd/engine.c) is not built: "
            "install meshroute with pip and a C compiler (scripts/bootstrap does)"
        )
    lib = ctypes.CDLL(spec.origin)
    p = ctypes.c_void_p
    lib.mr_new.argtypes, lib.mr_new.restype = [ctypes.c_uint32], p
    lib.mr_event_fd.argtypes, lib.mr_event_fd.restype = [p], ctypes.c_int
    lib.mr_add_receiver.argtypes = [p, ctypes.c_int, ctypes.c_int]
    lib.mr_start.argtypes = [p]
    lib.mr_free.argtypes, lib.mr_free.restype = [p], None
    lib.mr_put.argtypes = [p, ctypes.POINTER(_Session)]
    lib.mr_get.argtypes = [p, ctypes.c_uint32, ctypes.c_int, ctypes.POINTER(_Times)]
    lib.mr_drop.argtypes = [p, ctypes.c_uint32]
    lib.mr_take.argtypes = [p, ctypes.POINTER(_Event), ctypes.c_int]
    lib.mr_overflow.argtypes, lib.mr_overflow.restype = [p], ctypes.c_uint64
    for name in ("mr_add_receiver", "mr_start", "mr_put", "mr_get", "mr_drop", "mr_take"):
        getattr(lib, name).restype = ctypes.c_int
    return lib


_lib: ctypes.CDLL | None = None


def _library() -> ctypes.CDLL:
    global _lib
    if _lib is None:
        _lib = _load()
    return _lib


def _check(rc: int, what: str) -> int:
    if rc < 0:
        raise OSError(-rc, f"BFD engine {what}: {os.strerror(-rc)}")
    return rc


class Engine:
    """One engine thread; ``close`` stops it (the sockets stay open)."""

    def __init__(self, queue: int = QUEUE) -> None:
        self._lib = _library()
        handle = self._lib.mr_new(queue)
        if not handle:
            raise OSError("BFD engine: out of memory or descriptors")
        self._h: int | None = handle
        self._events = (_Event * queue)()
        self._times = _Times()

    def _handle(self) -> int:
        if self._h is None:
            raise RuntimeError("BFD engine closed")
        return self._h

    def fileno(self) -> int:
        """Readable while events wait: read it (``clear``), then ``take``."""
        return int(self._lib.mr_event_fd(self._handle()))

    def add_receiver(self, sock: socket.socket, multihop: bool) -> None:
        _check(self._lib.mr_add_receiver(self._handle(), sock.fileno(), multihop), "receiver")

    def start(self) -> None:
        _check(self._lib.mr_start(self._handle()), "start")

    def close(self) -> None:
        if self._h is not None:
            self._lib.mr_free(self._h)
            self._h = None

    def put(self, route: Route, run: Running) -> None:
        """Hands the session over as ``run`` now stands (and ends a hold)."""
        s = _Session()
        s.id = route.disc
        s.fd = route.sock.fileno()
        s.connected = route.connected
        s.family = route.sock.family
        s.port = route.port
        ctypes.memmove(s.peer, route.peer, len(route.peer))
        s.multihop = route.multihop
        s.min_ttl = route.minimum_ttl
        c = run.cadence
        if c is not None:
            s.sending = 1
            s.next_tx = run.next_tx
            s.interval, s.top, s.soonest, s.late = c.interval_s, c.top, c.soonest_s, run.late
            _copy(s.tx, run.tx_bytes)
            s.tx_len = len(run.tx_bytes)
        if run.detect_at is not None:
            s.has_detect, s.detect_at = 1, run.detect_at
        s.detect_s = run.detect_s
        q = run.quiet_rx
        if q is not None and len(q) <= MAX_SHORT:
            _copy(s.rx, q)
            s.rx_len = len(q)
        _check(self._lib.mr_put(self._handle(), ctypes.byref(s)), "put")

    def _get(self, disc: int, hold: bool) -> Times | None:
        t = self._times
        if self._lib.mr_get(self._handle(), disc, hold, ctypes.byref(t)) < 0:
            return None
        return Times(
            t.next_tx,
            t.detect_at if t.has_detect else None,
            t.last_quiet or None,
            Counters(t.sent, t.received, t.send_errors),
        )

    def hold(self, disc: int) -> Times | None:
        """The session's times, and the engine leaves it alone until ``put``."""
        return self._get(disc, True)

    def counters(self, disc: int) -> Counters | None:
        t = self._get(disc, False)
        return t.counters if t is not None else None

    def drop(self, disc: int) -> None:
        """Once this returns, the engine never touches the session's socket."""
        self._lib.mr_drop(self._handle(), disc)

    def clear(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.read(self.fileno(), 8)

    def take(self) -> list[Packet | Expired]:
        buf = self._events
        n = self._lib.mr_take(self._handle(), buf, len(buf))
        out: list[Packet | Expired] = []
        for e in buf[:n]:
            if e.kind == EXPIRED:
                out.append(Expired(e.id))
                continue
            family = socket.AF_INET if e.family == socket.AF_INET else socket.AF_INET6
            size = 4 if family == socket.AF_INET else 16
            out.append(
                Packet(
                    ctypes.string_at(e.data, e.len),
                    e.ttl if e.ttl >= 0 else None,
                    socket.inet_ntop(family, bytes(e.src[:size])),
                    bool(e.multihop),
                    e.at,
                )
            )
        return out

    def overflow(self) -> int:
        """Packets dropped because the queue to Python was full."""
        return int(self._lib.mr_overflow(self._handle()))


def _copy(dst: ctypes.Array[ctypes.c_uint8], data: bytes) -> None:
    ctypes.memmove(dst, data, len(data))
