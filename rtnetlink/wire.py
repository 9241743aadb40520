"""Netlink messages as bytes: what every rtnetlink message shares.

This module owns the nlmsghdr framing (``frame``, ``iter_messages``), the
kernel's answers (NLMSG_ERROR as ``NetlinkReply`` with the extended-ack
reason, NLMSG_DONE), the attribute header message bodies are built of, the
rtnetlink multicast groups a listener joins (``groups_mask``), and the short
link and address messages a reader of the host's interfaces needs (their
dump requests, ``WireLink``, ``WireAddress``). Route messages are
``rtnetlink.routes``'; whole links, addresses and neighbours as the node
makes them ``rtnetlink.links``' and ``rtnetlink.attrs``'. Pure functions,
no I/O.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

# <linux/netlink.h>
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300
NLM_F_REPLACE = 0x100
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLM_F_CAPPED = 0x100  # on NLMSG_ERROR: the request was not echoed
NLM_F_ACK_TLVS = 0x200  # on NLMSG_ERROR: extended-ack attributes follow
NLMSGERR_ATTR_MSG = 1

AF_INET = socket.AF_INET
AF_INET6 = socket.AF_INET6

HDR = struct.Struct("=IHHII")  # nlmsghdr: len, type, flags, seq, pid
HDR_LEN = HDR.size
RTA = struct.Struct("=HH")  # rtattr: len, type
U32 = struct.Struct("=I")
ERRNO = struct.Struct("=i")  # NLMSG_ERROR and NLMSG_DONE open with a negated errno
ADDR_LEN = {AF_INET: 4, AF_INET6: 16}


@dataclass(frozen=True, slots=True)
class NetlinkReply:
    """An NLMSG_ERROR: ``error`` is 0 for an ACK, else a positive errno."""

    seq: int
    error: int
    message: str = ""


def pad(n: int) -> int:
    """``n`` rounded up to the 4-byte alignment of messages and attributes."""
    return (n + 3) & ~3


def frame(msg_type: int, flags: int, seq: int, body: bytes) -> bytes:
    """Prefix ``body`` with an nlmsghdr (pid 0: the kernel fills in ours)."""
    return HDR.pack(HDR_LEN + len(body), msg_type, flags, seq, 0) + body


def iter_messages(buf: bytes | bytearray | memoryview) -> Iterator[tuple[int, int, int, int, int]]:
    """(type, flags, seq, payload_start, payload_end) for each nlmsghdr in
    ``buf``; offsets index ``buf`` so nothing is copied."""
    off = 0
    end = len(buf)
    unpack = HDR.unpack_from
    while off + HDR_LEN <= end:
        length, mtype, flags, seq, _pid = unpack(buf, off)
        if length < HDR_LEN or off + length > end:
            raise ValueError(f"truncated netlink message at {off}: length {length}")
        yield mtype, flags, seq, off + HDR_LEN, off + length
        off += pad(length)


def parse_error(
    buf: bytes | bytearray | memoryview, seq: int, flags: int, start: int, end: int
) -> NetlinkReply:
    """An NLMSG_ERROR payload: the negated errno, the request's header (and
    payload unless capped), then extended-ack TLVs if the kernel sent any."""
    (err,) = ERRNO.unpack_from(buf, start)
    message = ""
    if flags & NLM_F_ACK_TLVS:
        (orig_len,) = U32.unpack_from(buf, start + 4)
        off = start + 4 + (HDR_LEN if flags & NLM_F_CAPPED else pad(orig_len))
        while off + 4 <= end:
            alen, atype = RTA.unpack_from(buf, off)
            if alen < 4:
                break
            if atype & 0x3FFF == NLMSGERR_ATTR_MSG:
                message = bytes(buf[off + 4 : off + alen]).rstrip(b"\0").decode(errors="replace")
            off += pad(alen)
    return NetlinkReply(seq=seq, error=-err, message=message)


def ntop(family: int, buf: bytes | bytearray | memoryview, off: int, alen: int) -> str:
    """The address of ``family`` at ``buf[off : off + alen]`` as text."""
    return socket.inet_ntop(family, bytes(buf[off : off + alen]))


# ------------------------------------------- links, addresses, notifications

RTM_NEWLINK = 16
RTM_DELLINK = 17
RTM_GETLINK = 18
RTM_NEWADDR = 20
RTM_DELADDR = 21
RTM_GETADDR = 22
IFLA_IFNAME = 3
IFLA_MTU = 4
IFA_ADDRESS = 1
IFA_LOCAL = 2
IFF_UP = 0x1
# multicast groups (RTNLGRP_*), numbered from 1; a socket joins them by
# bit (1 << (group - 1)) in its bind address
RTNLGRP_LINK = 1
RTNLGRP_IPV4_IFADDR = 5
RTNLGRP_IPV4_ROUTE = 7
RTNLGRP_IPV6_IFADDR = 9
RTNLGRP_IPV6_ROUTE = 11

IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index


def groups_mask(*groups: int) -> int:
    mask = 0
    for g in groups:
        mask |= 1 << (g - 1)
    return mask


def encode_link_dump_request(seq: int) -> bytes:
    body = IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
    return frame(RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP, seq, body)


def encode_addr_dump_request(seq: int) -> bytes:
    body = IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
    return frame(RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, seq, body)


@dataclass(frozen=True, slots=True)
class WireLink:
    index: int
    name: str
    mtu: int
    up: bool


def parse_link(buf: bytes | bytearray | memoryview, start: int, end: int) -> WireLink:
    """An RTM_NEWLINK / RTM_DELLINK payload."""
    _family, _type, index, flags, _change = IFINFOMSG.unpack_from(buf, start)
    name, mtu = "", 0
    off = start + IFINFOMSG.size
    while off + 4 <= end:
        alen, atype = RTA.unpack_from(buf, off)
        if alen < 4:
            break
        if atype == IFLA_IFNAME:
            name = bytes(buf[off + 4 : off + alen]).rstrip(b"\0").decode(errors="replace")
        elif atype == IFLA_MTU:
            mtu = int(U32.unpack_from(buf, off + 4)[0])
        off += pad(alen)
    return WireLink(index, name, mtu, bool(flags & IFF_UP))


@dataclass(frozen=True, slots=True)
class WireAddress:
    index: int
    family: int
    address: str
    prefixlen: int


def parse_addr(buf: bytes | bytearray | memoryview, start: int, end: int) -> WireAddress | None:
    """An RTM_NEWADDR / RTM_DELADDR payload; IFA_LOCAL (ours on a
    point-to-point link) wins over IFA_ADDRESS (the peer's there)."""
    family, prefixlen, _flags, _scope, index = IFADDRMSG.unpack_from(buf, start)
    alen_addr = ADDR_LEN.get(family)
    if alen_addr is None:
        return None
    address = local = None
    off = start + IFADDRMSG.size
    while off + 4 <= end:
        alen, atype = RTA.unpack_from(buf, off)
        if alen < 4:
            break
        if atype == IFA_ADDRESS:
            address = ntop(family, buf, off + 4, alen_addr)
        elif atype == IFA_LOCAL:
            local = ntop(family, buf, off + 4, alen_addr)
        off += pad(alen)
    chosen = local or address
    return None if chosen is None else WireAddress(index, family, chosen, prefixlen)
