"""The sockets of the BFD edge: receivers on the well-known ports that report
each packet's TTL (IP_RECVTTL / IPV6_RECVHOPLIMIT) and the time the kernel
received it (SO_TIMESTAMPNS, so a packet read late still restarts the
detection time from when it came), and per-session senders bound to a
source port in 49152-65535 with TTL 255 (RFC 5881 §4, §5; RFC 5883 §2),
connected to their peer where a route exists. Sockets can be opened inside
a named network namespace: the opening thread enters it, the socket stays
there."""

from __future__ import annotations

import contextlib
import random
import socket
import struct
import sys
from typing import TypeVar

from netaddr import IPAddress

SINGLE_HOP_PORT = 3784
MULTIHOP_PORT = 4784
SOURCE_PORTS = range(49152, 65536)
TTL = 255
IP_RECVTTL = 12  # linux/in.h; Python's socket module (3.11) does not name it
SO_TIMESTAMPNS = 35  # asm-generic/socket.h (SCM_TIMESTAMPNS is the same); not named either
RECEIVE_BUFFER = 1 << 20  # packets wait here between batched reads
ANC_SPACE = socket.CMSG_SPACE(4) + socket.CMSG_SPACE(16)  # TTL, then a timespec
TIMESPEC = struct.Struct("@qq")
TTL_CMSG = {  # the (level, type) of the TTL's control message, by family
    socket.AF_INET: (socket.IPPROTO_IP, socket.IP_TTL),
    socket.AF_INET6: (socket.IPPROTO_IPV6, socket.IPV6_HOPLIMIT),
}
TTL_255 = TTL.to_bytes(4, sys.byteorder)  # that message's data for TTL 255
_TTL_KINDS = frozenset(TTL_CMSG.values())
T = TypeVar("T")


def family_of(addr: IPAddress) -> socket.AddressFamily:
    return socket.AF_INET6 if addr.version == 6 else socket.AF_INET


def open_receiver(family: socket.AddressFamily, port: int) -> socket.socket:
    s = socket.socket(family, socket.SOCK_DGRAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVHOPLIMIT, 1)
            s.bind(("::", port))
        else:
            s.setsockopt(socket.IPPROTO_IP, IP_RECVTTL, 1)
            s.bind(("0.0.0.0", port))
        s.setblocking(False)
    except BaseException:
        s.close()
        raise
    return s


def open_sender(local: IPAddress | None, family: socket.AddressFamily) -> socket.socket:
    """A socket bound to a free source port in 49152-65535, sending TTL 255."""
    s = socket.socket(family, socket.SOCK_DGRAM)
    try:
        host = str(local) if local is not None else ("::" if family == socket.AF_INET6 else "")
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, TTL)
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_TCLASS, 0xC0)
        else:
            s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, TTL)
            s.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, 0xC0)  # CS6, as routing traffic
        start = random.randrange(len(SOURCE_PORTS))
        for i in range(len(SOURCE_PORTS)):
            port = SOURCE_PORTS[(start + i) % len(SOURCE_PORTS)]
            try:
                s.bind((host, port))
                break
            except OSError as e:
                if e.errno != 98:  # EADDRINUSE: try the next port
                    raise
        else:
            raise OSError("no free BFD source port in 49152-65535")
        s.setblocking(False)
    except BaseException:
        s.close()
        raise
    return s


def received_meta(ancdata: list[tuple[int, int, bytes]]) -> tuple[int | None, float | None]:
    """The TTL (hop limit) and the kernel's receive time (CLOCK_REALTIME
    seconds) in a packet's ancillary data, each None when absent."""
    ttl: int | None = None
    stamp: float | None = None
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= 16:
            sec, nsec = TIMESPEC.unpack_from(data)
            stamp = sec + nsec * 1e-9
        elif (level, kind) in _TTL_KINDS and len(data) >= 4:
            ttl = int.from_bytes(data[:4], sys.byteorder)
    return ttl, stamp


def connect_if_routed(s: socket.socket, peer: str, port: int) -> bool:
    """Fix the socket's destination (a plain ``send`` then skips the address
    parsing and the route lookup of ``sendto``); False when there is no
    route yet, and the caller keeps using ``sendto``."""
    try:
        s.connect((peer, port))
    except OSError:
        return False
    return True


def close_quietly(s: socket.socket) -> None:
    with contextlib.suppress(OSError):
        s.close()
