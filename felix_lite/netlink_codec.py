"""rtnetlink route messages as bytes, packed and parsed with ``struct``.

This module owns the wire format felix_lite's fast path speaks: encoding
RTM_NEWROUTE (create-or-replace) and RTM_DELROUTE for one route, the
RTM_GETROUTE dump request, and parsing what the kernel sends back (NLMSG_ERROR
acknowledgements and RTM_NEWROUTE dump entries). It does no I/O.

Routes cross this boundary as ``WireRoute``: a KernelRoute with interface
indexes instead of names and addresses as text, which is what the kernel
knows. ``wire_from_kernel`` / ``kernel_from_wire`` translate at the edge.
pyroute2's message classes can do the same, but cost ~70 us per route to
encode (see notes/kernel-routes.md); these functions cost a few.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from netaddr import IPAddress, IPNetwork

from felix_lite.model import (
    DEFAULT_PROTO,
    MAIN_TABLE,
    KernelRoute,
    NextHop,
    RouteKind,
    net_fields,
    network_value,
)

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

AF_INET = socket.AF_INET
AF_INET6 = socket.AF_INET6

_HDR = struct.Struct("=IHHII")  # nlmsghdr: len, type, flags, seq, pid
_RTMSG = struct.Struct("=BBBBBBBBI")  # family dst_len src_len tos table proto scope type flags
_RTA = struct.Struct("=HH")
_RTA_U32 = struct.Struct("=HHI")
_RTA_METRICS_MTU = struct.Struct("=HHHHI")  # RTA_METRICS { RTAX_MTU u32 }
_RTNH = struct.Struct("=HBBi")  # rtnexthop: len flags hops ifindex
_ERR = struct.Struct("=i")
_U32 = struct.Struct("=I")
HDR_LEN = _HDR.size
_RTMSG_LEN = _RTMSG.size
_ADDR_LEN = {AF_INET: 4, AF_INET6: 16}
_RTA_GW4 = _RTA.pack(8, RTA_GATEWAY)
_RTA_GW6 = _RTA.pack(20, RTA_GATEWAY)
_RTA_DST4 = _RTA.pack(8, RTA_DST)
_RTA_DST6 = _RTA.pack(20, RTA_DST)

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
    text; ``flags`` are rtm_flags (RTNH_F_ONLINK for a single-path route)."""

    family: int
    dst: str
    dst_len: int
    type: int = RTN_UNICAST
    gateway: str | None = None
    oif: int | None = None
    flags: int = 0
    multipath: tuple[WireNexthop, ...] = ()
    mtu: int | None = None
    proto: int = DEFAULT_PROTO
    table: int = MAIN_TABLE

    @property
    def key(self) -> tuple[int, str]:
        """Same identity as ``KernelRoute.key``."""
        return (self.table, f"{self.dst}/{self.dst_len}")


@dataclass(frozen=True, slots=True)
class NetlinkReply:
    """An NLMSG_ERROR: ``error`` is 0 for an ACK, else a positive errno."""

    seq: int
    error: int
    message: str = ""


# ---------------------------------------------------------------- encoding


def _pad(n: int) -> int:
    return (n + 3) & ~3


def _addr(family: int, text: str) -> bytes:
    return socket.inet_pton(family, text)


def _table_fields(table: int) -> tuple[int, bytes]:
    """rtm_table holds 8 bits; larger ids go in RTA_TABLE with rtm_table unset."""
    if table < 256:
        return table, b""
    return RT_TABLE_UNSPEC, _RTA_U32.pack(8, RTA_TABLE, table)


def _multipath_attr(family: int, hops: tuple[WireNexthop, ...]) -> bytes:
    gw_hdr = _RTA_GW4 if family == AF_INET else _RTA_GW6
    body = []
    for nh in hops:
        gw = gw_hdr + _addr(family, nh.gateway) if nh.gateway else b""
        body.append(_RTNH.pack(8 + len(gw), nh.flags, nh.hops, nh.oif) + gw)
    payload = b"".join(body)
    return _RTA.pack(4 + len(payload), RTA_MULTIPATH) + payload


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
        _RTMSG.pack(
            family, route.dst_len, 0, 0, table, route.proto, scope, route.type, route.flags
        ),
        table_attr,
    ]
    if route.dst_len:
        parts.append((_RTA_DST4 if v4 else _RTA_DST6) + _addr(family, route.dst))
    if route.gateway is not None:
        parts.append((_RTA_GW4 if v4 else _RTA_GW6) + _addr(family, route.gateway))
    if route.oif is not None:
        parts.append(_RTA_U32.pack(8, RTA_OIF, route.oif))
    if route.multipath:
        parts.append(_multipath_attr(family, route.multipath))
    if route.mtu is not None:
        parts.append(_RTA_METRICS_MTU.pack(12, RTA_METRICS, 8, RTAX_MTU, route.mtu))
    return b"".join(parts)


def encode_delete_body(route: WireRoute) -> bytes:
    """rtmsg + attributes of an RTM_DELROUTE matching only the prefix, table
    and protocol: scope NOWHERE and type UNSPEC match any, and naming the
    protocol makes the kernel refuse to delete a same-prefix foreign route."""
    family = route.family
    table, table_attr = _table_fields(route.table)
    parts = [
        _RTMSG.pack(
            family, route.dst_len, 0, 0, table, route.proto, RT_SCOPE_NOWHERE, RTN_UNSPEC, 0
        ),
        table_attr,
    ]
    if route.dst_len:
        parts.append((_RTA_DST4 if family == AF_INET else _RTA_DST6) + _addr(family, route.dst))
    return b"".join(parts)


def frame(msg_type: int, flags: int, seq: int, body: bytes) -> bytes:
    """Prefix ``body`` with an nlmsghdr (pid 0: the kernel fills in ours)."""
    return _HDR.pack(HDR_LEN + len(body), msg_type, flags, seq, 0) + body


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
    body = _RTMSG.pack(family, 0, 0, 0, rt_table, proto, 0, 0, 0) + table_attr
    return frame(RTM_GETROUTE, NLM_F_REQUEST | NLM_F_DUMP, seq, body)


def iter_messages(buf: bytes | bytearray | memoryview) -> Iterator[tuple[int, int, int, int, int]]:
    """(type, flags, seq, payload_start, payload_end) for each nlmsghdr in
    ``buf``; offsets index ``buf`` so nothing is copied."""
    off = 0
    end = len(buf)
    unpack = _HDR.unpack_from
    while off + HDR_LEN <= end:
        length, mtype, flags, seq, _pid = unpack(buf, off)
        if length < HDR_LEN or off + length > end:
            raise ValueError(f"truncated netlink message at {off}: length {length}")
        yield mtype, flags, seq, off + HDR_LEN, off + length
        off += _pad(length)


def parse_error(
    buf: bytes | bytearray | memoryview, seq: int, flags: int, start: int, end: int
) -> NetlinkReply:
    """An NLMSG_ERROR payload: the negated errno, the request's header (and
    payload unless capped), then extended-ack TLVs if the kernel sent any."""
    (err,) = _ERR.unpack_from(buf, start)
    message = ""
    if flags & NLM_F_ACK_TLVS:
        (orig_len,) = _U32.unpack_from(buf, start + 4)
        off = start + 4 + (HDR_LEN if flags & NLM_F_CAPPED else _pad(orig_len))
        while off + 4 <= end:
            alen, atype = _RTA.unpack_from(buf, off)
            if alen < 4:
                break
            if atype & 0x3FFF == NLMSGERR_ATTR_MSG:
                message = bytes(buf[off + 4 : off + alen]).rstrip(b"\0").decode(errors="replace")
            off += _pad(alen)
    return NetlinkReply(seq=seq, error=-err, message=message)


def _ntop(family: int, buf: bytes | bytearray | memoryview, off: int, alen: int) -> str:
    return socket.inet_ntop(family, bytes(buf[off : off + alen]))


def _parse_multipath(
    buf: bytes | bytearray | memoryview, family: int, off: int, end: int
) -> tuple[WireNexthop, ...]:
    hops = []
    while off + 8 <= end:
        nh_len, nh_flags, nh_hops, ifindex = _RTNH.unpack_from(buf, off)
        if nh_len < 8:
            break
        gateway = None
        a = off + 8
        while a + 4 <= off + nh_len:
            alen, atype = _RTA.unpack_from(buf, a)
            if alen < 4:
                break
            if atype == RTA_GATEWAY:
                gateway = _ntop(family, buf, a + 4, alen - 4)
            a += _pad(alen)
        hops.append(WireNexthop(gateway=gateway, oif=ifindex, flags=nh_flags, hops=nh_hops))
        off += _pad(nh_len)
    return tuple(hops)


def _parse_mtu(buf: bytes | bytearray | memoryview, off: int, end: int) -> int | None:
    while off + 4 <= end:
        alen, atype = _RTA.unpack_from(buf, off)
        if alen < 4:
            break
        if atype == RTAX_MTU:
            return int(_U32.unpack_from(buf, off + 4)[0])
        off += _pad(alen)
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
    family, dst_len, _src, _tos, table, rproto, _scope, rtype, rflags = _RTMSG.unpack_from(
        buf, start
    )
    if (proto is not None and rproto != proto) or rflags & RTM_F_CLONED:
        return None
    alen_addr = _ADDR_LEN.get(family)
    if alen_addr is None:
        return None
    dst = "0.0.0.0" if family == AF_INET else "::"
    gateway: str | None = None
    oif: int | None = None
    multipath: tuple[WireNexthop, ...] = ()
    mtu: int | None = None
    off = start + _RTMSG_LEN
    unpack = _RTA.unpack_from
    while off + 4 <= end:
        alen, atype = unpack(buf, off)
        if alen < 4:
            break
        if atype == RTA_DST:
            dst = _ntop(family, buf, off + 4, alen_addr)
        elif atype == RTA_GATEWAY:
            gateway = _ntop(family, buf, off + 4, alen_addr)
        elif atype == RTA_OIF:
            oif = _U32.unpack_from(buf, off + 4)[0]
        elif atype == RTA_TABLE:
            table = _U32.unpack_from(buf, off + 4)[0]
        elif atype == RTA_MULTIPATH:
            multipath = _parse_multipath(buf, family, off + 4, off + alen)
        elif atype == RTA_METRICS:
            mtu = _parse_mtu(buf, off + 4, off + alen)
        off += _pad(alen)
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


# ------------------------------------------------- KernelRoute <-> WireRoute


def wire_from_kernel(
    route: KernelRoute, ifindex: Mapping[str, int], *, proto: int = DEFAULT_PROTO
) -> WireRoute:
    """Raises KeyError naming the interface when a next hop's device is unknown."""
    dst = route.dst
    family = AF_INET if dst.version == 4 else AF_INET6
    net = str(dst.network)
    if route.kind is RouteKind.BLACKHOLE or not route.nexthops:
        return WireRoute(family, net, dst.prefixlen, RTN_BLACKHOLE, mtu=route.mtu,
                         proto=proto, table=route.table)  # fmt: skip
    if len(route.nexthops) == 1:
        nh = route.nexthops[0]
        return WireRoute(
            family,
            net,
            dst.prefixlen,
            gateway=str(nh.gateway),
            oif=ifindex[nh.ifname],
            flags=RTNH_F_ONLINK if nh.onlink else 0,
            mtu=route.mtu,
            proto=proto,
            table=route.table,
        )
    hops = tuple(
        WireNexthop(
            gateway=str(nh.gateway),
            oif=ifindex[nh.ifname],
            flags=RTNH_F_ONLINK if nh.onlink else 0,
            hops=max(nh.weight, 1) - 1,
        )
        for nh in route.nexthops
    )
    return WireRoute(family, net, dst.prefixlen, multipath=hops, mtu=route.mtu, proto=proto,
                     table=route.table)  # fmt: skip


KindOf = Callable[[WireRoute, tuple[NextHop, ...]], RouteKind]


def default_kind_of(route: WireRoute, nexthops: tuple[NextHop, ...]) -> RouteKind:
    """Best guess of why a route read back exists. The kernel does not store
    the reason; a caller that knows its tunnel device names passes its own."""
    if route.type == RTN_BLACKHOLE:
        return RouteKind.BLACKHOLE
    names = {nh.ifname for nh in nexthops}
    if names == {"tunl0"}:
        return RouteKind.IPIP
    if names and all(n.startswith("vxlan") for n in names):
        return RouteKind.VXLAN
    return RouteKind.DIRECT


def kernel_from_wire(
    route: WireRoute,
    ifname: Mapping[int, str],
    kind_of: KindOf = default_kind_of,
) -> KernelRoute:
    """An unknown interface index becomes the name ``if<index>`` so the route
    still differs from anything desired and gets replaced."""

    def name(i: int) -> str:
        return ifname.get(i) or f"if{i}"

    if route.type == RTN_BLACKHOLE:
        nexthops: tuple[NextHop, ...] = ()
    elif route.multipath:
        nexthops = tuple(
            NextHop(
                gateway=IPAddress(nh.gateway),
                ifname=name(nh.oif),
                onlink=bool(nh.flags & RTNH_F_ONLINK),
                weight=nh.hops + 1,
            )
            for nh in route.multipath
            if nh.gateway is not None
        )
    elif route.gateway is not None and route.oif is not None:
        nexthops = (
            NextHop(
                gateway=IPAddress(route.gateway),
                ifname=name(route.oif),
                onlink=bool(route.flags & RTNH_F_ONLINK),
            ),
        )
    else:
        nexthops = ()
    return KernelRoute(
        dst=IPNetwork(f"{route.dst}/{route.dst_len}"),
        kind=kind_of(route, nexthops),
        nexthops=nexthops,
        mtu=route.mtu,
        table=route.table,
    )


# ------------------------------------- KernelRoute straight to/from bytes
#
# The hot paths (installing and re-reading 100k routes) skip WireRoute:
# building a dataclass per route and formatting/parsing addresses as text
# cost more than the kernel's own work. The result is the same bytes (and
# the same KernelRoute) as going through WireRoute; tests check that.


_V4_HEAD = struct.Struct("=BBBBBBBBIHH4s")  # rtmsg, then RTA_DST


class RouteEncoder:
    """Encodes KernelRoutes with next-hop attributes cached: a cluster has
    a few distinct next-hop sets and 100k routes share them."""

    def __init__(self, ifindex: Mapping[str, int], proto: int) -> None:
        self.ifindex = ifindex
        self.proto = proto
        self._hops: dict[tuple[NextHop, ...], tuple[bytes, int, int]] = {}
        self._last_key: tuple[NextHop, ...] | None = None
        self._last: tuple[bytes, int, int] = (b"", 0, RTN_BLACKHOLE)
        self._delete_heads: dict[tuple[bool, int, int], bytes] = {}  # (v4, plen, table)

    def _encode_hops(self, hops: tuple[NextHop, ...]) -> tuple[bytes, int, int]:
        """(attribute bytes, rtm_flags, rtm_type); KeyError for an unknown device."""
        if not hops:
            return b"", 0, RTN_BLACKHOLE
        family = AF_INET if hops[0].gateway.version == 4 else AF_INET6
        if len(hops) == 1:
            nh = hops[0]
            gw = (_RTA_GW4 if family == AF_INET else _RTA_GW6) + nh.gateway.packed
            attrs = gw + _RTA_U32.pack(8, RTA_OIF, self.ifindex[nh.ifname])
            return attrs, RTNH_F_ONLINK if nh.onlink else 0, RTN_UNICAST
        wire = tuple(
            WireNexthop(str(nh.gateway), self.ifindex[nh.ifname],
                        RTNH_F_ONLINK if nh.onlink else 0, max(nh.weight, 1) - 1)
            for nh in hops
        )  # fmt: skip
        return _multipath_attr(family, wire), 0, RTN_UNICAST

    def _hops_of(self, route: KernelRoute) -> tuple[bytes, int, int]:
        hops = route.nexthops
        if route.kind is RouteKind.BLACKHOLE:
            hops = ()
        if hops is self._last_key:
            return self._last
        got = self._hops.get(hops)
        if got is None:
            got = self._encode_hops(hops)
            if len(self._hops) > 65536:
                self._hops.clear()
            self._hops[hops] = got
        self._last_key, self._last = hops, got
        return got

    def new_body(self, route: KernelRoute) -> bytes:
        """What ``encode_route_body(wire_from_kernel(route))`` returns."""
        dst = route.dst
        version, plen, value = net_fields(dst)
        table = route.table
        attrs, flags, rtype = self._hops_of(route)
        if version == 4 and plen > 0 and table < 256:
            # The common case in one pack: rtmsg + RTA_DST.
            net = (value & (0xFFFFFFFF << (32 - plen)) & 0xFFFFFFFF).to_bytes(4, "big")
            head = _V4_HEAD.pack(AF_INET, plen, 0, 0, table, self.proto, RT_SCOPE_UNIVERSE,
                                 rtype, flags, 8, RTA_DST, net)  # fmt: skip
            body = head + attrs
            if route.mtu is None:
                return body
            return body + _RTA_METRICS_MTU.pack(12, RTA_METRICS, 8, RTAX_MTU, route.mtu)
        v4 = version == 4
        parts = [
            _RTMSG.pack(AF_INET if v4 else AF_INET6, plen, 0, 0, table if table < 256 else 0,
                        self.proto, RT_SCOPE_UNIVERSE, rtype, flags),
        ]  # fmt: skip
        if table >= 256:
            parts.append(_RTA_U32.pack(8, RTA_TABLE, table))
        if plen:
            if v4:
                parts.append(_RTA_DST4 + network_value(dst).to_bytes(4, "big"))
            else:
                parts.append(_RTA_DST6 + network_value(dst).to_bytes(16, "big"))
        parts.append(attrs)
        if route.mtu is not None:
            parts.append(_RTA_METRICS_MTU.pack(12, RTA_METRICS, 8, RTAX_MTU, route.mtu))
        return b"".join(parts)

    def delete_body(self, route: KernelRoute) -> bytes:
        """What ``encode_delete_body(wire_from_kernel(route))`` returns. All
        but the destination's address is the same for every prefix of one
        length in one table, and built once: a peer lost is 50k deletes."""
        version, plen, value = net_fields(route.dst)
        v4 = version == 4
        head = self._delete_heads.get((v4, plen, route.table))
        if head is None:
            head = self._delete_head(v4, plen, route.table)
        if not plen:
            return head
        host_bits = (32 if v4 else 128) - plen
        return head + (value >> host_bits << host_bits).to_bytes(4 if v4 else 16, "big")

    def _delete_head(self, v4: bool, plen: int, table: int) -> bytes:
        """The rtmsg, the table attribute if needed, and the destination
        attribute's header (none for a default route, which has no address)."""
        head = _RTMSG.pack(AF_INET if v4 else AF_INET6, plen, 0, 0, table if table < 256 else 0,
                           self.proto, RT_SCOPE_NOWHERE, RTN_UNSPEC, 0)  # fmt: skip
        if table >= 256:
            head += _RTA_U32.pack(8, RTA_TABLE, table)
        if plen:
            head += _RTA_DST4 if v4 else _RTA_DST6
        self._delete_heads[(v4, plen, table)] = head
        return head


_FAST_V4 = struct.Struct("=BBBBBBBBIHHIHH4sHH4sHHI")
_FAST_V4_MTU = struct.Struct("=BBBBBBBBIHHIHH4sHHHHIHH4sHHI")
_FAST_V4_TYPES = (8, RTA_TABLE, 8, RTA_DST, 8, RTA_GATEWAY, 8, RTA_OIF)


class RouteDecoder:
    """Parses dump messages straight into KernelRoutes (see ``parse_route``
    for the rules), with next hops built once per distinct value."""

    def __init__(
        self,
        ifname: Mapping[int, str],
        kind_of: KindOf = default_kind_of,
        known: Mapping[tuple[int, str], KernelRoute] | None = None,
    ) -> None:
        self.ifname = ifname
        self.kind_of = kind_of
        # Routes the caller already holds, by key: a dumped route equal to
        # one of them is answered with that object, with no prefix or route
        # built (a no-op resync of 100k routes is then a dict look-up and a
        # compare of the few fields the message carries, per route).
        self.known = known
        # id(known next hops) -> (those next hops, the decoded ones, equal?):
        # a table shares a few next-hop tuples; the tuple is held so that
        # its id is not reused while it is remembered.
        self._same: dict[int, tuple[tuple[NextHop, ...], tuple[NextHop, ...], bool]] = {}
        self._nh: dict[tuple[bytes, int, int, int], NextHop] = {}
        self._kind: dict[tuple[NextHop, ...], RouteKind] = {}
        # (gateway, oif, onlink) of a single-gateway IPv4 route -> its next
        # hops and kind, shared by every route through that gateway.
        self._single: dict[tuple[bytes, int, int], tuple[tuple[NextHop, ...], RouteKind]] = {}

    def _nexthop(self, family: int, gw: bytes, oif: int, flags: int, hops: int) -> NextHop:
        key = (gw, oif, flags & RTNH_F_ONLINK, hops)
        nh = self._nh.get(key)
        if nh is None:
            if len(self._nh) > 65536:
                self._nh.clear()
            nh = self._nh[key] = NextHop(
                gateway=IPAddress(int.from_bytes(gw, "big"), 4 if family == AF_INET else 6),
                ifname=self.ifname.get(oif) or f"if{oif}",
                onlink=bool(flags & RTNH_F_ONLINK),
                weight=hops + 1,
            )
        return nh

    def _fast_v4(self, buf: bytes, start: int, end: int, proto: int | None) -> KernelRoute | None:
        """The shape of nearly every route felix_lite reads back: IPv4, one
        gateway, as the kernel lays it out (TABLE, DST, [METRICS{MTU}],
        GATEWAY, OIF), decoded with one unpack. None: not that shape."""
        size = end - start
        if size == _FAST_V4.size:
            fields = _FAST_V4.unpack_from(buf, start)
            mtu = None
            attrs = fields[9:]
        elif size == _FAST_V4_MTU.size:
            fields = _FAST_V4_MTU.unpack_from(buf, start)
            if fields[15:19] != (12, RTA_METRICS, 8, RTAX_MTU):
                return None
            mtu = fields[19]
            attrs = fields[9:15] + fields[20:]
        else:
            return None
        family, dst_len, _s, _t, _tb, rproto, _sc, rtype, rflags = fields[:9]
        l1, t1, table, l2, t2, dst, l3, t3, gw, l4, t4, oif = attrs
        if (
            family != AF_INET
            or rtype != RTN_UNICAST
            or (l1, t1, l2, t2, l3, t3, l4, t4) != _FAST_V4_TYPES
            or (proto is not None and rproto != proto)
            or rflags & RTM_F_CLONED
        ):
            return None
        single = self._single.get((gw, oif, rflags & RTNH_F_ONLINK))
        if single is None:
            hops = (self._nexthop(AF_INET, gw, oif, rflags, 0),)
            if len(self._single) > 65536:
                self._single.clear()
            single = self._single[(gw, oif, rflags & RTNH_F_ONLINK)] = (
                hops,
                self.kind_of(WireRoute(family, "", dst_len), hops),
            )
        nexthops, kind = single
        if self.known:
            want = self.known.get((table, f"{socket.inet_ntop(AF_INET, dst)}/{dst_len}"))
            if (
                want is not None
                and want.mtu == mtu
                and want.kind is not RouteKind.BLACKHOLE
                and self._same_hops(want.nexthops, nexthops)
            ):
                return want
        return KernelRoute(
            IPNetwork((int.from_bytes(dst, "big"), dst_len), version=4), kind, nexthops, mtu, table
        )

    def _same_hops(self, want: tuple[NextHop, ...], have: tuple[NextHop, ...]) -> bool:
        """``decide_route_equal``'s next-hop test, remembered per pair."""
        if want is have:
            return True
        seen = self._same.get(id(want))
        if seen is not None and seen[0] is want and seen[1] is have:
            return seen[2]
        same = want == have or (len(want) == len(have) and set(want) == set(have))
        if len(self._same) > 1024:
            self._same.clear()
        self._same[id(want)] = (want, have, same)
        return same

    def parse(
        self, buf: bytes, start: int, end: int, proto: int | None = None
    ) -> KernelRoute | None:
        """None for a clone, another protocol's route, or a unicast route
        without a gateway (felix_lite never writes those)."""
        fast = self._fast_v4(buf, start, end, proto)
        if fast is not None:
            return fast
        family, dst_len, _s, _t, table, rproto, _sc, rtype, rflags = _RTMSG.unpack_from(buf, start)
        if (proto is not None and rproto != proto) or rflags & RTM_F_CLONED:
            return None
        if family == AF_INET:
            alen = 4
        elif family == AF_INET6:
            alen = 16
        else:
            return None
        dst = 0
        gw: bytes | None = None
        oif = 0
        mp: tuple[NextHop, ...] = ()
        mtu: int | None = None
        off = start + _RTMSG_LEN
        unpack = _RTA.unpack_from
        while off + 4 <= end:
            rlen, atype = unpack(buf, off)
            if rlen < 4:
                break
            if atype == RTA_DST:
                dst = int.from_bytes(buf[off + 4 : off + 4 + alen], "big")
            elif atype == RTA_GATEWAY:
                gw = buf[off + 4 : off + 4 + alen]
            elif atype == RTA_OIF:
                oif = _U32.unpack_from(buf, off + 4)[0]
            elif atype == RTA_TABLE:
                table = _U32.unpack_from(buf, off + 4)[0]
            elif atype == RTA_MULTIPATH:
                mp = tuple(
                    self._nexthop(family, socket.inet_pton(family, h.gateway), h.oif, h.flags,
                                  h.hops)
                    for h in _parse_multipath(buf, family, off + 4, off + rlen)
                    if h.gateway is not None
                )  # fmt: skip
            elif atype == RTA_METRICS:
                mtu = _parse_mtu(buf, off + 4, off + rlen)
            off += (rlen + 3) & ~3
        if rtype == RTN_BLACKHOLE:
            nexthops: tuple[NextHop, ...] = ()
        elif mp:
            nexthops = mp
        elif gw is not None:
            nexthops = (self._nexthop(family, gw, oif, rflags, 0),)
        else:
            return None
        kind = self._kind.get(nexthops) if rtype != RTN_BLACKHOLE else RouteKind.BLACKHOLE
        if kind is None:
            wire = WireRoute(family, "", dst_len, rtype)  # the kind depends on type and devices
            kind = self._kind[nexthops] = self.kind_of(wire, nexthops)
        return KernelRoute(
            dst=IPNetwork((dst, dst_len), version=4 if family == AF_INET else 6),
            kind=kind,
            nexthops=nexthops,
            mtu=mtu,
            table=table,
        )


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

_IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
_IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index


def groups_mask(*groups: int) -> int:
    mask = 0
    for g in groups:
        mask |= 1 << (g - 1)
    return mask


def encode_link_dump_request(seq: int) -> bytes:
    body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
    return frame(RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP, seq, body)


def encode_addr_dump_request(seq: int) -> bytes:
    body = _IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
    return frame(RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, seq, body)


@dataclass(frozen=True, slots=True)
class WireLink:
    index: int
    name: str
    mtu: int
    up: bool


def parse_link(buf: bytes | bytearray | memoryview, start: int, end: int) -> WireLink:
    """An RTM_NEWLINK / RTM_DELLINK payload."""
    _family, _type, index, flags, _change = _IFINFOMSG.unpack_from(buf, start)
    name, mtu = "", 0
    off = start + _IFINFOMSG.size
    while off + 4 <= end:
        alen, atype = _RTA.unpack_from(buf, off)
        if alen < 4:
            break
        if atype == IFLA_IFNAME:
            name = bytes(buf[off + 4 : off + alen]).rstrip(b"\0").decode(errors="replace")
        elif atype == IFLA_MTU:
            mtu = int(_U32.unpack_from(buf, off + 4)[0])
        off += _pad(alen)
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
    family, prefixlen, _flags, _scope, index = _IFADDRMSG.unpack_from(buf, start)
    alen_addr = _ADDR_LEN.get(family)
    if alen_addr is None:
        return None
    address = local = None
    off = start + _IFADDRMSG.size
    while off + 4 <= end:
        alen, atype = _RTA.unpack_from(buf, off)
        if alen < 4:
            break
        if atype == IFA_ADDRESS:
            address = _ntop(family, buf, off + 4, alen_addr)
        elif atype == IFA_LOCAL:
            local = _ntop(family, buf, off + 4, alen_addr)
        off += _pad(alen)
    chosen = local or address
    return None if chosen is None else WireAddress(index, family, chosen, prefixlen)


def route_protocol_at(buf: bytes | bytearray | memoryview, start: int) -> int:
    """rtm_protocol of the RTM_*ROUTE payload at ``start``: the one field a
    reader checks before deciding to decode anything else."""
    return int(buf[start + 5])


# rtm_protocol's offset in a whole message (nlmsghdr, then rtmsg's sixth byte)
ROUTE_PROTOCOL_OFFSET = HDR_LEN + 5
