"""Batched datagram system calls, ``recvmmsg(2)`` and ``sendmmsg(2)``,
through ctypes (Python's socket module lacks them), for ``bench.bfd_floor``
to measure what they would save a BFD speaker in Python over one system
call per packet (on this machine: nothing measurable, see the README's
BFD section; the speaker does not use them).

This module owns the C structures (``msghdr``, ``mmsghdr``, ``iovec``) and
the buffers they point into, allocated once per batch object and reused by
every call, so a batch costs one foreign call however many datagrams it
carries; the per-datagram work left is slicing and ``struct`` unpacking of
those buffers. What a ``RecvBatch`` reports for each datagram is what
``socket.recvmsg`` and ``bgpd.bfd.sockets.received_meta`` would (payload
truncated at the same size, source address, TTL or hop limit, kernel
receive time): ``tests/integration/test_bench_mmsg.py`` holds both paths
to the same answers, both families.

A ``SendBatch`` carries, per datagram, its destination (``sockaddr``) and
its source address as an ``IP_PKTINFO`` / ``IPV6_PKTINFO`` control message
(``pktinfo``), so one socket per family sends every session's packets from
the session's own local address.
"""

from __future__ import annotations

import ctypes
import errno
import socket
import struct

from bgpd.bfd.sockets import ANC_SPACE, SO_TIMESTAMPNS, TIMESPEC, TTL_CMSG, received_meta

IP_PKTINFO = 8  # linux/in.h; Python's socket module (3.11) does not name it


class iovec(ctypes.Structure):
    _fields_ = (("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t))


class msghdr(ctypes.Structure):
    _fields_ = (
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.c_void_p),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    )


class mmsghdr(ctypes.Structure):
    _fields_ = (("msg_hdr", msghdr), ("msg_len", ctypes.c_uint))


_libc = ctypes.CDLL(None, use_errno=True)
_recvmmsg = _libc.recvmmsg
_recvmmsg.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p)
_recvmmsg.restype = ctypes.c_int
_sendmmsg = _libc.sendmmsg
_sendmmsg.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int)
_sendmmsg.restype = ctypes.c_int

HDR_SIZE = ctypes.sizeof(mmsghdr)
_OFF_NAMELEN = msghdr.msg_namelen.offset
_OFF_CONTROLLEN = msghdr.msg_controllen.offset
_OFF_FLAGS = msghdr.msg_flags.offset
_OFF_LEN = mmsghdr.msg_len.offset
_SIZE_T = "Q" if ctypes.sizeof(ctypes.c_size_t) == 8 else "I"
_INT = struct.Struct("@i")
_IOV_LEN = struct.Struct("@" + _SIZE_T)
_OFF_IOV_LEN = iovec.iov_len.offset
# what a received datagram's header says, after the call: its name and
# control lengths, its flags and its length
_RESULT = struct.Struct(
    f"@{_OFF_NAMELEN}xI{_OFF_CONTROLLEN - _OFF_NAMELEN - 4}x{_SIZE_T}i"
    f"{_OFF_LEN - _OFF_FLAGS - 4}xI{HDR_SIZE - _OFF_LEN - 4}x"
)
_CMSGHDR = struct.Struct(f"@{_SIZE_T}ii")
_CMSG_ALIGN = ctypes.sizeof(ctypes.c_size_t)
NAME_SPACE = 32  # a sockaddr_in6 (28 bytes), aligned
CONTROL_SPACE = ANC_SPACE
# the control data nearly every datagram brings, in the order the kernel
# writes it: the receive time (SO_TIMESTAMPNS), then the TTL or hop limit
_USUAL = struct.Struct(f"@{_SIZE_T}iiqq{_SIZE_T}iii")
_USUAL_LENS = (socket.CMSG_LEN(TIMESPEC.size), socket.CMSG_LEN(4))
_SOURCE = {  # the source address's offset and length in the sockaddr
    socket.AF_INET: (4, 4),
    socket.AF_INET6: (8, 16),
}
assert TIMESPEC.size == 16 and _USUAL.size <= ANC_SPACE


def _errno_of(n: int) -> int:
    return ctypes.get_errno() if n < 0 else 0


class _Vector:
    """``capacity`` messages of one iovec each, every message's name,
    control data and data in its own ``slot`` bytes of one buffer, at the
    (offset, length) given for each."""

    def __init__(
        self,
        capacity: int,
        slot: int,
        *,
        name: tuple[int, int],
        control: tuple[int, int],
        data: tuple[int, int],
    ) -> None:
        self.hdrs = (mmsghdr * capacity)()
        self.iovs = (iovec * capacity)()
        self.buf = (ctypes.c_char * (slot * capacity))()
        base = ctypes.addressof(self.buf)
        for i in range(capacity):
            o = base + i * slot
            self.iovs[i].iov_base, self.iovs[i].iov_len = o + data[0], data[1]
            h = self.hdrs[i].msg_hdr
            h.msg_name, h.msg_namelen = o + name[0], name[1]
            h.msg_control, h.msg_controllen = o + control[0], control[1]
            h.msg_iov, h.msg_iovlen = ctypes.addressof(self.iovs[i]), 1
        self.addr = ctypes.addressof(self.hdrs)
        self.hdr_view = memoryview(self.hdrs).cast("B")
        self.iov_view = memoryview(self.iovs).cast("B")
        self.view = memoryview(self.buf).cast("B")


class RecvBatch:
    """Up to ``capacity`` datagrams per ``recvmmsg`` call from a socket of
    ``family`` opened by ``sockets.open_receiver``."""

    def __init__(self, family: socket.AddressFamily, capacity: int = 64, size: int = 512) -> None:
        self.family = family
        self.capacity = capacity
        self.size = size
        self._ttl_kind = TTL_CMSG[family]
        self._source = _SOURCE[family]
        self._slot = CONTROL_SPACE + NAME_SPACE + size
        self._vec = _Vector(
            capacity,
            self._slot,
            name=(CONTROL_SPACE, NAME_SPACE),
            control=(0, CONTROL_SPACE),
            data=(CONTROL_SPACE + NAME_SPACE, size),
        )
        self._hdr_view = self._vec.hdr_view
        self._view = self._vec.view
        # the kernel writes back the name and control lengths: restored from this
        self._pristine = memoryview(bytes(self._hdr_view))
        self._used = 0

    def read(self, fd: int) -> list[tuple[bytes, bytes | None, int | None, float | None]]:
        """The datagrams waiting on ``fd``, at most ``capacity``, each as
        (payload, source address packed as ``inet_pton`` packs it, TTL,
        kernel receive time in CLOCK_REALTIME seconds), the last three None
        when absent. Empty when none is waiting; fewer than ``capacity``
        means the socket is now empty. Raises OSError on an error other
        than EAGAIN/EINTR."""
        used = self._used * HDR_SIZE
        self._hdr_view[:used] = self._pristine[:used]
        n = _recvmmsg(fd, self._vec.addr, self.capacity, socket.MSG_DONTWAIT, None)
        if n <= 0:
            self._used = 0
            err = _errno_of(n)
            if err in (0, errno.EAGAIN, errno.EINTR):
                return []
            raise OSError(err, f"recvmmsg: {errno.errorcode.get(err, err)}")
        self._used = n
        view, slot, usual = self._view, self._slot, _USUAL
        ts_len, ttl_len = _USUAL_LENS
        ttl_level, ttl_type = self._ttl_kind
        src_off, src_len = self._source
        name_at = CONTROL_SPACE + src_off
        data_at = CONTROL_SPACE + NAME_SPACE
        out = []
        for i, (namelen, controllen, _flags, length) in enumerate(
            _RESULT.iter_unpack(self._hdr_view[: n * HDR_SIZE])
        ):
            o = i * slot
            data = view[o + data_at : o + data_at + length].tobytes()
            src = view[o + name_at : o + name_at + src_len].tobytes() if namelen else None
            ttl: int | None
            stamp: float | None
            if controllen == ANC_SPACE:
                l0, v0, t0, sec, nsec, l1, v1, t1, ttl = usual.unpack_from(view, o)
                if (
                    l0 == ts_len
                    and v0 == socket.SOL_SOCKET
                    and t0 == SO_TIMESTAMPNS
                    and l1 == ttl_len
                    and v1 == ttl_level
                    and t1 == ttl_type
                ):
                    out.append((data, src, ttl, sec + nsec * 1e-9))
                    continue
            ttl, stamp = received_meta(self._control(o, controllen))
            out.append((data, src, ttl, stamp))
        return out

    def _control(self, o: int, controllen: int) -> list[tuple[int, int, bytes]]:
        """The control messages at slot offset ``o`` as ``recvmsg`` lists them."""
        out, at, end = [], o, o + min(controllen, CONTROL_SPACE)
        while at + _CMSGHDR.size <= end:
            length, level, kind = _CMSGHDR.unpack_from(self._view, at)
            if length < _CMSGHDR.size or at + length > end:
                break
            out.append((level, kind, self._view[at + _CMSGHDR.size : at + length].tobytes()))
            at += (length + _CMSG_ALIGN - 1) & ~(_CMSG_ALIGN - 1)
        return out


def sockaddr(family: socket.AddressFamily, host: str, port: int) -> bytes:
    """``struct sockaddr_in`` / ``sockaddr_in6`` for ``host``:``port``."""
    packed = socket.inet_pton(family, host)
    if family == socket.AF_INET:
        return struct.pack("=H", family) + struct.pack("!H", port) + packed + bytes(8)
    return struct.pack("=H", family) + struct.pack("!HI", port, 0) + packed + bytes(4)


def pktinfo(family: socket.AddressFamily, local: str | None) -> bytes:
    """A control message that sends from ``local`` (None: the address the
    route to the destination picks), the interface left to the route."""
    if family == socket.AF_INET:
        addr = socket.inet_pton(family, local or "0.0.0.0")
        level, kind, data = socket.IPPROTO_IP, IP_PKTINFO, bytes(4) + addr + bytes(4)
    else:
        addr = socket.inet_pton(family, local or "::")
        level, kind, data = socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, addr + bytes(4)
    head = _CMSGHDR.pack(socket.CMSG_LEN(len(data)), level, kind)
    return (head + data).ljust(socket.CMSG_SPACE(len(data)), b"\0")


class SendBatch:
    """Datagrams queued with ``add`` and sent by ``flush`` in one
    ``sendmmsg`` call (more if one fails), each with its own destination
    and source address (``sockaddr``, ``pktinfo`` of this family)."""

    def __init__(self, family: socket.AddressFamily, capacity: int = 256, size: int = 256) -> None:
        self.family = family
        self.capacity = capacity
        self.size = size
        self._namelen = len(sockaddr(family, "::" if family == socket.AF_INET6 else "0.0.0.0", 0))
        self._controllen = len(pktinfo(family, None))
        self._head = NAME_SPACE + self._controllen
        self._slot = self._head + size
        self._vec = _Vector(
            capacity,
            self._slot,
            name=(0, self._namelen),
            control=(NAME_SPACE, self._controllen),
            data=(self._head, 0),  # each datagram's length is set by add
        )
        self._view = self._vec.view
        self._iov_view = self._vec.iov_view
        self._lens = [0] * capacity
        self.queued = 0

    def head(self, name: bytes, control: bytes) -> bytes:
        """What ``add`` takes for a destination and source: worked out once
        per session, not per datagram."""
        if len(name) != self._namelen or len(control) != self._controllen:
            raise ValueError(f"not a {self.family.name} sockaddr and pktinfo")
        return name.ljust(NAME_SPACE, b"\0") + control

    def add(self, head: bytes, payload: bytes) -> bool:
        """Queue ``payload`` for the destination and source in ``head``;
        False (nothing queued) when the batch is full."""
        i = self.queued
        if i == self.capacity:
            return False
        n = len(payload)
        if n > self.size:
            raise ValueError(f"a {n}-byte datagram: at most {self.size}")
        o = i * self._slot
        view = self._view
        view[o : o + self._head] = head
        view[o + self._head : o + self._head + n] = payload
        if self._lens[i] != n:
            self._lens[i] = n
            _IOV_LEN.pack_into(self._iov_view, i * ctypes.sizeof(iovec) + _OFF_IOV_LEN, n)
        self.queued = i + 1
        return True

    def flush(self, fd: int) -> list[tuple[int, int]]:
        """Send what is queued; the (index, errno) of each datagram that did
        not go out (the kernel stops a batch at the first failure: the rest
        are sent by further calls)."""
        failed = []
        done, n = 0, self.queued
        self.queued = 0
        while done < n:
            sent = _sendmmsg(fd, self._vec.addr + done * HDR_SIZE, n - done, socket.MSG_DONTWAIT)
            if sent > 0:
                done += sent
                continue
            err = _errno_of(sent)
            if err == errno.EINTR:
                continue
            failed.append((done, err or errno.EIO))
            done += 1
        return failed
