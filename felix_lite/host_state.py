"""The host as felix_lite reads it: links, their addresses, and the
underlay routes (unicast routes of our table that another protocol owns).
Pure: it applies rtnetlink messages (dump replies and notifications alike,
RTM_NEW*/RTM_DEL* of links, addresses and routes) and answers what the
planner needs (``interfaces``, ``underlay``). ``NetlinkHost`` feeds it.

Each ``apply`` says what kind of thing changed, if anything, so a caller
re-plans only when it must and resyncs the kernel only when a link changed
(the kernel drops routes through a link that goes down).
"""

from __future__ import annotations

import enum
import socket
from dataclasses import dataclass

from netaddr import IPAddress, IPNetwork

from felix_lite.inputs import HostInterface, UnderlayRoute
from rtnetlink import routes as nr
from rtnetlink import wire as nw

_NEW = {nw.RTM_NEWLINK, nw.RTM_NEWADDR, nr.RTM_NEWROUTE}
_ROUTE_MSGS = {nr.RTM_NEWROUTE, nr.RTM_DELROUTE}


class HostChange(enum.Enum):
    LINKS = "links"
    ADDRESSES = "addresses"
    UNDERLAY = "underlay"


# (family, destination text, length, tos, table, priority): what the kernel
# tells one route from another in a table
RouteId = tuple[int, str, int, int, int, int]


class HostState:
    def __init__(self, own_proto: int, table: int) -> None:
        self.own_proto = own_proto
        self.table = table
        self._links: dict[int, nw.WireLink] = {}
        self._addrs: dict[tuple[int, int, str, int], IPNetwork] = {}
        self._routes: dict[RouteId, tuple[IPNetwork, IPAddress | None, int]] = {}

    # ---- applying messages --------------------------------------------------

    def apply(self, mtype: int, buf: bytes, start: int, end: int) -> HostChange | None:
        """One rtnetlink message's payload; what it changed, or None."""
        new = mtype in _NEW
        if mtype in (nw.RTM_NEWLINK, nw.RTM_DELLINK):
            return self._apply_link(nw.parse_link(buf, start, end), new)
        if mtype in (nw.RTM_NEWADDR, nw.RTM_DELADDR):
            addr = nw.parse_addr(buf, start, end)
            return None if addr is None else self._apply_addr(addr, new)
        if mtype in _ROUTE_MSGS:
            if nr.route_protocol_at(buf, start) == self.own_proto:
                return None  # ours: never underlay, whatever else it is
            return self._apply_route(buf, start, end, new)
        return None

    def _apply_link(self, link: nw.WireLink, new: bool) -> HostChange | None:
        old = self._links.get(link.index)
        if new:
            if old == link:
                return None
            self._links[link.index] = link
        else:
            if old is None:
                return None
            del self._links[link.index]
            for k in [k for k in self._addrs if k[0] == link.index]:
                del self._addrs[k]
        return HostChange.LINKS

    def _apply_addr(self, a: nw.WireAddress, new: bool) -> HostChange | None:
        key = (a.index, a.family, a.address, a.prefixlen)
        if new:
            if key in self._addrs:
                return None
            self._addrs[key] = IPNetwork(f"{a.address}/{a.prefixlen}")
        elif self._addrs.pop(key, None) is None:
            return None
        return HostChange.ADDRESSES

    def _apply_route(self, buf: bytes, start: int, end: int, new: bool) -> HostChange | None:
        r = parse_underlay_route(buf, start, end)
        if r is None or r.table != self.table:
            return None
        if not new or r.route is None:
            # gone, or (after a replace) no longer a single-device unicast route
            return HostChange.UNDERLAY if self._routes.pop(r.id, None) is not None else None
        if self._routes.get(r.id) == r.route:
            return None
        self._routes[r.id] = r.route
        return HostChange.UNDERLAY

    # ---- reading ------------------------------------------------------------

    def interfaces(self) -> list[HostInterface]:
        by_link: dict[int, list[IPNetwork]] = {}
        for (index, *_), net in self._addrs.items():
            by_link.setdefault(index, []).append(net)
        return [
            HostInterface(
                name=link.name,
                addresses=tuple(
                    sorted(by_link.get(i, ()), key=lambda n: (n.version, n.value, n.prefixlen))
                ),
                mtu=link.mtu,
                up=link.up,
            )
            for i, link in sorted(self._links.items())
        ]

    def underlay(self) -> list[UnderlayRoute]:
        """Routes through a link we know, in a stable order."""
        out = [
            UnderlayRoute(dst, gw, self._links[oif].name)
            for dst, gw, oif in self._routes.values()
            if oif in self._links
        ]
        out.sort(key=_underlay_order)
        return out


@dataclass(frozen=True, slots=True)
class _ParsedRoute:
    id: RouteId
    table: int
    # (destination, gateway, output link) of a single-device unicast route;
    # None for any other kind (multipath, blackhole, local...)
    route: tuple[IPNetwork, IPAddress | None, int] | None


def _underlay_order(u: UnderlayRoute) -> tuple[int, int, int, str, str]:
    return (u.dst.version, u.dst.value, u.dst.prefixlen, str(u.gateway), u.ifname)


def parse_underlay_route(buf: bytes, start: int, end: int) -> _ParsedRoute | None:
    """The fields of an RTM_*ROUTE payload that identify it and that an
    underlay route keeps (the metric too: two default routes differ by it)."""
    family, dst_len, _src, tos, table, _proto, _scope, rtype, rflags = nr.RTMSG.unpack_from(
        buf, start
    )
    alen_addr = {socket.AF_INET: 4, socket.AF_INET6: 16}.get(family)
    if alen_addr is None or rflags & nr.RTM_F_CLONED:
        return None
    dst = b"\0" * alen_addr
    gateway: bytes | None = None
    oif: int | None = None
    priority = 0
    off = start + nr.RTMSG.size
    while off + 4 <= end:
        alen, atype = nw.RTA.unpack_from(buf, off)
        if alen < 4:
            break
        if atype == nr.RTA_DST:
            dst = bytes(buf[off + 4 : off + 4 + alen_addr])
        elif atype == nr.RTA_GATEWAY:
            gateway = bytes(buf[off + 4 : off + 4 + alen_addr])
        elif atype == nr.RTA_OIF:
            oif = int(nw.U32.unpack_from(buf, off + 4)[0])
        elif atype == nr.RTA_TABLE:
            table = int(nw.U32.unpack_from(buf, off + 4)[0])
        elif atype == nr.RTA_PRIORITY:
            priority = int(nw.U32.unpack_from(buf, off + 4)[0])
        off += (alen + 3) & ~3
    dst_text = socket.inet_ntop(family, dst)
    rid: RouteId = (family, dst_text, dst_len, tos, table, priority)
    if rtype != nr.RTN_UNICAST or oif is None:
        return _ParsedRoute(rid, table, None)
    version = 4 if family == socket.AF_INET else 6
    gw = IPAddress(int.from_bytes(gateway, "big"), version) if gateway else None
    return _ParsedRoute(rid, table, (IPNetwork(f"{dst_text}/{dst_len}", version=version), gw, oif))
