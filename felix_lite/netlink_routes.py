"""felix_lite's KernelRoutes as rtnetlink route messages, and back.

This module owns the translation between the routes felix_lite plans and
reconciles (``KernelRoute``, devices by name) and the route messages the
kernel speaks (``rtnetlink.routes``: ``WireRoute``, interface indexes):
``wire_from_kernel`` / ``kernel_from_wire`` at the edge, and which kind a
route read back is (``default_kind_of``; the kernel does not store why a
route exists), and the hot paths' ``RouteEncoder`` / ``RouteDecoder``,
which go straight between KernelRoutes and bytes with no WireRoute between
(the same bytes and routes; the tests check that). It does no I/O.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable, Mapping

from netaddr import IPAddress, IPNetwork

from felix_lite.model import (
    DEFAULT_PROTO,
    KernelRoute,
    NextHop,
    RouteKind,
    net_fields,
    network_value,
)
from rtnetlink.routes import (
    RT_SCOPE_NOWHERE,
    RT_SCOPE_UNIVERSE,
    RTA_DST,
    RTA_DST4,
    RTA_DST6,
    RTA_GATEWAY,
    RTA_GW4,
    RTA_GW6,
    RTA_METRICS,
    RTA_METRICS_MTU,
    RTA_MULTIPATH,
    RTA_OIF,
    RTA_TABLE,
    RTA_U32,
    RTAX_MTU,
    RTM_F_CLONED,
    RTMSG,
    RTMSG_LEN,
    RTN_BLACKHOLE,
    RTN_UNICAST,
    RTN_UNSPEC,
    RTNH_F_ONLINK,
    WireNexthop,
    WireRoute,
    multipath_attr,
    parse_mtu,
    parse_multipath,
)
from rtnetlink.wire import AF_INET, AF_INET6, RTA, U32

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
            gw = (RTA_GW4 if family == AF_INET else RTA_GW6) + nh.gateway.packed
            attrs = gw + RTA_U32.pack(8, RTA_OIF, self.ifindex[nh.ifname])
            return attrs, RTNH_F_ONLINK if nh.onlink else 0, RTN_UNICAST
        wire = tuple(
            WireNexthop(str(nh.gateway), self.ifindex[nh.ifname],
                        RTNH_F_ONLINK if nh.onlink else 0, max(nh.weight, 1) - 1)
            for nh in hops
        )  # fmt: skip
        return multipath_attr(family, wire), 0, RTN_UNICAST

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
            return body + RTA_METRICS_MTU.pack(12, RTA_METRICS, 8, RTAX_MTU, route.mtu)
        v4 = version == 4
        parts = [
            RTMSG.pack(AF_INET if v4 else AF_INET6, plen, 0, 0, table if table < 256 else 0,
                        self.proto, RT_SCOPE_UNIVERSE, rtype, flags),
        ]  # fmt: skip
        if table >= 256:
            parts.append(RTA_U32.pack(8, RTA_TABLE, table))
        if plen:
            if v4:
                parts.append(RTA_DST4 + network_value(dst).to_bytes(4, "big"))
            else:
                parts.append(RTA_DST6 + network_value(dst).to_bytes(16, "big"))
        parts.append(attrs)
        if route.mtu is not None:
            parts.append(RTA_METRICS_MTU.pack(12, RTA_METRICS, 8, RTAX_MTU, route.mtu))
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
        head = RTMSG.pack(AF_INET if v4 else AF_INET6, plen, 0, 0, table if table < 256 else 0,
                           self.proto, RT_SCOPE_NOWHERE, RTN_UNSPEC, 0)  # fmt: skip
        if table >= 256:
            head += RTA_U32.pack(8, RTA_TABLE, table)
        if plen:
            head += RTA_DST4 if v4 else RTA_DST6
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
        family, dst_len, _s, _t, table, rproto, _sc, rtype, rflags = RTMSG.unpack_from(buf, start)
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
        off = start + RTMSG_LEN
        unpack = RTA.unpack_from
        while off + 4 <= end:
            rlen, atype = unpack(buf, off)
            if rlen < 4:
                break
            if atype == RTA_DST:
                dst = int.from_bytes(buf[off + 4 : off + 4 + alen], "big")
            elif atype == RTA_GATEWAY:
                gw = buf[off + 4 : off + 4 + alen]
            elif atype == RTA_OIF:
                oif = U32.unpack_from(buf, off + 4)[0]
            elif atype == RTA_TABLE:
                table = U32.unpack_from(buf, off + 4)[0]
            elif atype == RTA_MULTIPATH:
                mp = tuple(
                    self._nexthop(family, socket.inet_pton(family, h.gateway), h.oif, h.flags,
                                  h.hops)
                    for h in parse_multipath(buf, family, off + 4, off + rlen)
                    if h.gateway is not None
                )  # fmt: skip
            elif atype == RTA_METRICS:
                mtu = parse_mtu(buf, off + 4, off + rlen)
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
