"""rtnetlink attributes (TLVs), addresses and neighbours as bytes.

This module owns the generic attribute encoding every rtnetlink message
shares (``attr`` and its typed helpers, ``parse_attrs``) and the address
(RTM_NEWADDR/DELADDR) and neighbour (RTM_NEWNEIGH/DELNEIGH/GETNEIGH, the
bridge FDB's too) message bodies the node's few non-route operations need.
Pure functions, no I/O: ``client`` sends them; routes are ``routes``' and
links ``links``'.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Mapping
from dataclasses import dataclass

from rtnetlink import wire as nw

# <linux/netlink.h>
NLA_TYPE_MASK = 0x3FFF  # strips NLA_F_NESTED / NLA_F_NET_BYTEORDER
NLA_F_NESTED = 0x8000

# <linux/if_addr.h>
IFA_ADDRESS = 1
IFA_LOCAL = 2
IFA_F_NODAD = 0x02

# <linux/neighbour.h>
RTM_NEWNEIGH = 28
RTM_DELNEIGH = 29
RTM_GETNEIGH = 30
NDA_DST = 1
NDA_LLADDR = 2
NUD_NOARP = 0x40
NUD_PERMANENT = 0x80
NTF_SELF = 0x02
AF_BRIDGE = 7  # the bridge FDB's family (socket.AF_BRIDGE is not everywhere)

RTM_NEWADDR = 20
RTM_DELADDR = 21

_U16 = struct.Struct("=H")
_NDMSG = struct.Struct("=BxxxiHBB")  # family, (pad), ifindex, state, flags, type


def _pad(n: int) -> int:
    return (n + 3) & ~3


# ------------------------------------------------------------ attributes


def attr(atype: int, payload: bytes = b"") -> bytes:
    """One attribute, padded to 4 bytes (the length field excludes the pad)."""
    n = 4 + len(payload)
    return nw.RTA.pack(n, atype) + payload + bytes(_pad(n) - n)


def attr_u8(atype: int, value: int) -> bytes:
    return attr(atype, bytes((value,)))


def attr_u16(atype: int, value: int) -> bytes:
    return attr(atype, _U16.pack(value))


def attr_be16(atype: int, value: int) -> bytes:
    return attr(atype, value.to_bytes(2, "big"))


def attr_u32(atype: int, value: int) -> bytes:
    return attr(atype, nw.U32.pack(value))


def attr_str(atype: int, value: str) -> bytes:
    """A NUL-terminated string (NLA_STRING and NLA_NUL_STRING accept it)."""
    return attr(atype, value.encode() + b"\0")


def attr_nested(atype: int, *children: bytes) -> bytes:
    return attr(atype | NLA_F_NESTED, b"".join(children))


def parse_attrs(buf: bytes | bytearray | memoryview, start: int, end: int) -> dict[int, bytes]:
    """The attributes in ``buf[start:end]`` by type (flags stripped; a
    repeated type keeps its last value)."""
    out: dict[int, bytes] = {}
    off = start
    while off + 4 <= end:
        alen, atype = nw.RTA.unpack_from(buf, off)
        if alen < 4 or off + alen > end:
            break
        out[atype & NLA_TYPE_MASK] = bytes(buf[off + 4 : off + alen])
        off += _pad(alen)
    return out


def u32_of(payload: bytes) -> int:
    return int(nw.U32.unpack_from(payload)[0])


def u16_of(payload: bytes) -> int:
    return int(_U16.unpack_from(payload)[0])


def str_of(payload: bytes) -> str:
    return payload.split(b"\0", 1)[0].decode(errors="replace")


def mac_text(payload: bytes) -> str:
    return ":".join(f"{b:02x}" for b in payload)


def mac_bytes(text: str) -> bytes:
    return bytes(int(part, 16) for part in text.split(":"))


def ip_bytes(text: str) -> tuple[int, bytes]:
    """(family, packed) of an IPv4 or IPv6 address in text."""
    family = socket.AF_INET6 if ":" in text else socket.AF_INET
    return family, socket.inet_pton(family, text)


def ip_text(family: int, payload: bytes) -> str:
    return socket.inet_ntop(family, payload)


# ------------------------------------------------------------- addresses


def addr_body(index: int, address: str, prefixlen: int, *, flags: int = 0) -> bytes:
    """ifaddrmsg + attributes of RTM_NEWADDR / RTM_DELADDR. IPv4 carries the
    address as IFA_LOCAL and IFA_ADDRESS (as ``ip addr`` sends it: on a
    broadcast link they are equal); IPv6 as IFA_ADDRESS alone."""
    family, packed = ip_bytes(address)
    body = nw.IFADDRMSG.pack(family, prefixlen, flags, 0, index)
    if family == socket.AF_INET:
        body += attr(IFA_LOCAL, packed)
    return body + attr(IFA_ADDRESS, packed)


# ------------------------------------------------------------ neighbours


@dataclass(frozen=True, slots=True)
class WireNeighbour:
    """A neighbour (or, family AF_BRIDGE, an FDB entry) as the kernel
    reports it; ``dst`` and ``lladdr`` are text or None when absent."""

    family: int
    ifindex: int
    state: int
    flags: int
    dst: str | None
    lladdr: str | None


def neigh_body(
    ifindex: int,
    *,
    dst: str,
    lladdr: str | None = None,
    state: int = 0,
    flags: int = 0,
    family: int | None = None,
) -> bytes:
    """ndmsg + NDA_DST (+ NDA_LLADDR) of RTM_NEWNEIGH / RTM_DELNEIGH. The
    family is the address's unless given (AF_BRIDGE for an FDB entry,
    whose NDA_DST is the remote VTEP)."""
    dst_family, packed = ip_bytes(dst)
    body = _NDMSG.pack(family or dst_family, ifindex, state, flags, 0) + attr(NDA_DST, packed)
    if lladdr is not None:
        body += attr(NDA_LLADDR, mac_bytes(lladdr))
    return body


def neigh_dump_body(family: int) -> bytes:
    """RTM_GETNEIGH dump of one family: a bare ndmsg (the kernel reads a
    header of exactly this size as no filter; callers filter by ifindex)."""
    return _NDMSG.pack(family, 0, 0, 0, 0)


def parse_neigh(buf: bytes | bytearray | memoryview, start: int, end: int) -> WireNeighbour:
    family, ifindex, state, flags, _type = _NDMSG.unpack_from(buf, start)
    attrs: Mapping[int, bytes] = parse_attrs(buf, start + _NDMSG.size, end)
    raw_dst = attrs.get(NDA_DST)
    dst = None
    if raw_dst is not None and len(raw_dst) in (4, 16):
        dst = ip_text(socket.AF_INET if len(raw_dst) == 4 else socket.AF_INET6, raw_dst)
    raw_ll = attrs.get(NDA_LLADDR)
    return WireNeighbour(
        family, ifindex, state, flags, dst, mac_text(raw_ll) if raw_ll is not None else None
    )
