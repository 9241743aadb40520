"""rtnetlink route messages as bytes, packed and parsed with ``struct``.

This module owns the route messages: encoding RTM_NEWROUTE
(create-or-replace, or create only) and RTM_DELROUTE for one route, the
RTM_GETROUTE dump request, and parsing the RTM_NEWROUTE entries the kernel
sends back. Routes cross this boundary as ``WireRoute``: interface indexes,
not names, and addresses as text, which is what the kernel knows. It does no
I/O; the framing and the kernel's answers are ``rtnetlink.wire``'s.
pyroute2's message classes can do the same, but cost ~70 us per route to
encode (see notes/kernel-routes.md); these functions cost a few.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

from rtnetlink.wire import (
    ADDR_LEN,
    AF_INET,
    HDR_LEN,
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_EXCL,
    NLM_F_REPLACE,
    NLM_F_REQUEST,
    RTA,
    U32,
    frame,
    ntop,
    pad,
)

# <linux/rtnetlink.h>
RTM_NEWROUTE = 24
RTM_DELROUTE = 25
RTM_GETROUTE = 26
RTN_UNSPEC = 0
RTN_UNICAST = 1
RTN_BLACKHOLE = 6
RT_SCOPE_UNIVERSE = 0
RT_SCOPE_LINK = 253
RT_SCOPE_NOWHERE = 255
RT_TABLE_UNSPEC = 0
RT_TABLE_COMPAT = 252
RTM_F_CLONED = 0x200
RTNH_F_ONLINK = 0x4
RTA_DST = 1
RTA_OIF = 4
RTA_GATEWAY = 5
RTA_PRIORITY = 6
RTA_METRICS = 8
RTA_MULTIPATH = 9
RTA_TABLE = 15
RTAX_MTU = 2

RT_TABLE_MAIN = 254
RTPROT_BOOT = 3  # what the kernel and ``ip route`` assume when none is named

RTMSG = struct.Struct("=BBBBBBBBI")  # family dst_len src_len tos table proto scope type flags
RTMSG_LEN = RTMSG.size
RTA_U32 = struct.Struct("=HHI")
RTA_METRICS_MTU = struct.Struct("=HHHHI")  # RTA_METRICS { RTAX_MTU u32 }
_RTNH = struct.Struct("=HBBi")  # rtnexthop: len flags hops ifindex
RTA_GW4 = RTA.pack(8, RTA_GATEWAY)
RTA_GW6 = RTA.pack(20, RTA_GATEWAY)
RTA_DST4 = RTA.pack(8, RTA_DST)
RTA_DST6 = RTA.pack(20, RTA_DST)

REPLACE_ROUTE_FLAGS = NLM_F_REQUEST | NLM_F_CREATE | NLM_F_REPLACE
ADD_ROUTE_FLAGS = NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL  # fails on a taken key
DEL_ROUTE_FLAGS = NLM_F_REQUEST


@dataclass(frozen=True, slots=True)
class WireNexthop:
    """One rtnexthop of an RTA_MULTIPATH; ``hops`` is weight - 1."""

    gateway: str | None
    oif: int
    flags: int = 0
    hops: int = 0


@dataclass(frozen=True, slots=True)
class WireRoute:
    """A route as rtnetlink carries it. ``dst`` is the network address as
    text; ``flags`` are rtm_flags (RTNH_F_ONLINK for a single-path route).
    ``proto`` and ``table`` default to the kernel's own (RTPROT_BOOT, main):
    the wire knows no owner, so a caller that owns its routes names its
    protocol."""

    family: int
    dst: str
    dst_len: int
    type: int = RTN_UNICAST
    gateway: str | None = None
    oif: int | None = None
    flags: int = 0
    multipath: tuple[WireNexthop, ...] = ()
    mtu: int | None = None
    proto: int = RTPROT_BOOT
    table: int = RT_TABLE_MAIN

    @property
    def key(self) -> tuple[int, str]:
        """Same identity as ``KernelRoute.key``."""
        return (self.table, f"{self.dst}/{self.dst_len}")


# ---------------------------------------------------------------- encoding


def _addr(family: int, text: str) -> bytes:
    return socket.inet_pton(family, text)


def _table_fields(table: int) -> tuple[int, bytes]:
    """rtm_table holds 8 bits; larger ids go in RTA_TABLE with rtm_table unset."""
    if table < 256:
        return table, b""
    return RT_TABLE_UNSPEC, RTA_U32.pack(8, RTA_TABLE, table)


def multipath_attr(family: int, hops: tuple[WireNexthop, ...]) -> bytes:
    """RTA_MULTIPATH of ``hops`` (felix_lite's encoder builds its own next
    hops with it too)."""
    gw_hdr = RTA_GW4 if family == AF_INET else RTA_GW6
    body = []
    for nh in hops:
        gw = gw_hdr + _addr(family, nh.gateway) if nh.gateway else b""
        body.append(_RTNH.pack(8 + len(gw), nh.flags, nh.hops, nh.oif) + gw)
    payload = b"".join(body)
    return RTA.pack(4 + len(payload), RTA_MULTIPATH) + payload


def encode_route_body(route: WireRoute) -> bytes:
    """rtmsg + attributes of an RTM_NEWROUTE for ``route`` (no nlmsghdr)."""
    family = route.family
    table, table_attr = _table_fields(route.table)
    v4 = family == AF_INET
    if route.type == RTN_UNICAST and route.gateway is None and not route.multipath:
        scope = RT_SCOPE_LINK  # a device route: the destination is on the link
    else:
        scope = RT_SCOPE_UNIVERSE
    parts = [
        RTMSG.pack(family, route.dst_len, 0, 0, table, route.proto, scope, route.type, route.flags),
        table_attr,
    ]
    if route.dst_len:
        parts.append((RTA_DST4 if v4 else RTA_DST6) + _addr(family, route.dst))
    if route.gateway is not None:
        parts.append((RTA_GW4 if v4 else RTA_GW6) + _addr(family, route.gateway))
    if route.oif is not None:
        parts.append(RTA_U32.pack(8, RTA_OIF, route.oif))
    if route.multipath:
        parts.append(multipath_attr(family, route.multipath))
    if route.mtu is not None:
        parts.append(RTA_METRICS_MTU.pack(12, RTA_METRICS, 8, RTAX_MTU, route.mtu))
    return b"".join(parts)


def encode_delete_body(route: WireRoute) -> bytes:
    """rtmsg + attributes of an RTM_DELROUTE matching only the prefix, table
    and protocol: scope NOWHERE and type UNSPEC match any, and naming the
    protocol makes the kernel refuse to delete a same-prefix foreign route."""
    family = route.family
    table, table_attr = _table_fields(route.table)
    parts = [
        RTMSG.pack(
            family, route.dst_len, 0, 0, table, route.proto, RT_SCOPE_NOWHERE, RTN_UNSPEC, 0
        ),
        table_attr,
    ]
    if route.dst_len:
        parts.append((RTA_DST4 if family == AF_INET else RTA_DST6) + _addr(family, route.dst))
    return b"".join(parts)


def encode_new_route(
    route: WireRoute, seq: int, *, replace: bool = True, ack: bool = True
) -> bytes:
    """Create-or-replace by default; ``replace=False`` creates only (EEXIST
    when any route, ours or foreign, holds the key)."""
    flags = (REPLACE_ROUTE_FLAGS if replace else ADD_ROUTE_FLAGS) | (NLM_F_ACK if ack else 0)
    return frame(RTM_NEWROUTE, flags, seq, encode_route_body(route))


def encode_del_route(route: WireRoute, seq: int, *, ack: bool = True) -> bytes:
    flags = DEL_ROUTE_FLAGS | (NLM_F_ACK if ack else 0)
    return frame(RTM_DELROUTE, flags, seq, encode_delete_body(route))


def encode_dump_request(family: int, seq: int, *, proto: int = 0, table: int = 0) -> bytes:
    """RTM_GETROUTE dump. With NETLINK_GET_STRICT_CHK on the socket the kernel
    filters by ``proto`` and ``table`` itself; without it they are ignored
    (the parser filters again, so both work)."""
    rt_table, table_attr = _table_fields(table)
    body = RTMSG.pack(family, 0, 0, 0, rt_table, proto, 0, 0, 0) + table_attr
    return frame(RTM_GETROUTE, NLM_F_REQUEST | NLM_F_DUMP, seq, body)


def parse_multipath(
    buf: bytes | bytearray | memoryview, family: int, off: int, end: int
) -> tuple[WireNexthop, ...]:
    """The rtnexthops of the RTA_MULTIPATH payload at ``buf[off:end]``."""
    hops = []
    while off + 8 <= end:
        nh_len, nh_flags, nh_hops, ifindex = _RTNH.unpack_from(buf, off)
        if nh_len < 8:
            break
        gateway = None
        a = off + 8
        while a + 4 <= off + nh_len:
            alen, atype = RTA.unpack_from(buf, a)
            if alen < 4:
                break
            if atype == RTA_GATEWAY:
                gateway = ntop(family, buf, a + 4, alen - 4)
            a += pad(alen)
        hops.append(WireNexthop(gateway=gateway, oif=ifindex, flags=nh_flags, hops=nh_hops))
        off += pad(nh_len)
    return tuple(hops)


def parse_mtu(buf: bytes | bytearray | memoryview, off: int, end: int) -> int | None:
    """RTAX_MTU of the RTA_METRICS payload at ``buf[off:end]``, if there."""
    while off + 4 <= end:
        alen, atype = RTA.unpack_from(buf, off)
        if alen < 4:
            break
        if atype == RTAX_MTU:
            return int(U32.unpack_from(buf, off + 4)[0])
        off += pad(alen)
    return None


def parse_route(
    buf: bytes | bytearray | memoryview,
    start: int,
    end: int,
    *,
    proto: int | None = None,
) -> WireRoute | None:
    """The RTM_NEWROUTE payload at ``buf[start:end]`` as a WireRoute, or None
    when it is a cached clone or (with ``proto``) another protocol's route.
    The protocol is checked before any attribute is decoded: a dump of a
    table full of foreign routes costs little."""
    family, dst_len, _src, _tos, table, rproto, _scope, rtype, rflags = RTMSG.unpack_from(
        buf, start
    )
    if (proto is not None and rproto != proto) or rflags & RTM_F_CLONED:
        return None
    alen_addr = ADDR_LEN.get(family)
    if alen_addr is None:
        return None
    dst = "0.0.0.0" if family == AF_INET else "::"
    gateway: str | None = None
    oif: int | None = None
    multipath: tuple[WireNexthop, ...] = ()
    mtu: int | None = None
    off = start + RTMSG_LEN
    unpack = RTA.unpack_from
    while off + 4 <= end:
        alen, atype = unpack(buf, off)
        if alen < 4:
            break
        if atype == RTA_DST:
            dst = ntop(family, buf, off + 4, alen_addr)
        elif atype == RTA_GATEWAY:
            gateway = ntop(family, buf, off + 4, alen_addr)
        elif atype == RTA_OIF:
            oif = U32.unpack_from(buf, off + 4)[0]
        elif atype == RTA_TABLE:
            table = U32.unpack_from(buf, off + 4)[0]
        elif atype == RTA_MULTIPATH:
            multipath = parse_multipath(buf, family, off + 4, off + alen)
        elif atype == RTA_METRICS:
            mtu = parse_mtu(buf, off + 4, off + alen)
        off += pad(alen)
    if rtype == RTN_BLACKHOLE:
        oif = None  # the kernel hangs IPv6 blackholes on lo; not part of the route
    return WireRoute(
        family=family,
        dst=dst,
        dst_len=dst_len,
        type=rtype,
        gateway=gateway,
        oif=oif,
        flags=rflags,
        multipath=multipath,
        mtu=mtu,
        proto=rproto,
        table=table,
    )


def route_protocol_at(buf: bytes | bytearray | memoryview, start: int) -> int:
    """rtm_protocol of the RTM_*ROUTE payload at ``start``: the one field a
    reader checks before deciding to decode anything else."""
    return int(buf[start + 5])


# rtm_protocol's offset in a whole message (nlmsghdr, then rtmsg's sixth byte)
ROUTE_PROTOCOL_OFFSET = HDR_LEN + 5
