"""The host's own routes (those felix_lite does not own), which the planner
uses to hand an off-subnet next hop to the fabric (pools in ``Never`` mode).
Read off the event loop, on every felix pass.

The table holds felix_lite's own routes too, up to one per remote block
(100k in the ingest benchmark), and the kernel cannot filter a dump by
"protocol is not ours". So the dump goes through felix_lite's raw netlink
reader and each message's fixed header is checked before anything else is
decoded: our routes cost one ``unpack`` each. (pyroute2 decoded every route
into objects first: 1.1-1.8 s per pass at 10k routes, the bulk of the
latency of any single route change.)
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable, Mapping

from netaddr import IPAddress, IPNetwork
from pyroute2 import IPRoute

from felix_lite import netlink_codec as nc
from felix_lite.inputs import UnderlayRoute
from felix_lite.netlink_bulk import BulkRoutes

# rtmsg: family dst_len src_len tos table protocol scope type flags
_RTMSG = struct.Struct("=BBBBBBBBI")
_RTA = struct.Struct("=HH")
_U32 = struct.Struct("=I")


def _link_names(netns: str | None) -> dict[int, str]:
    with IPRoute(netns=netns) if netns else IPRoute() as ipr:
        return {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}


def route_parser(
    proto_owned: int, table: int, names: Mapping[int, str]
) -> Callable[[bytes, int, int], UnderlayRoute | None]:
    """``parse(buf, start, end)`` of one RTM_NEWROUTE payload: an IPv4
    unicast route of ``table`` through a known link and not ours, else None."""
    header = _RTMSG.unpack_from
    rta = _RTA.unpack_from
    u32 = _U32.unpack_from
    first = _RTMSG.size

    def parse(buf: bytes, start: int, end: int) -> UnderlayRoute | None:
        family, dst_len, _, _, rt_table, proto, _, rtype, _ = header(buf, start)
        if proto == proto_owned or rtype != nc.RTN_UNICAST or family != nc.AF_INET:
            return None
        dst = gateway = 0
        oif = -1  # none: multipath, or no device
        in_table = rt_table
        off = start + first
        while off + 4 <= end:
            length, kind = rta(buf, off)
            if length < 4:
                break
            if kind == nc.RTA_DST:
                dst = int.from_bytes(buf[off + 4 : off + 8], "big")
            elif kind == nc.RTA_GATEWAY:
                gateway = int.from_bytes(buf[off + 4 : off + 8], "big")
            elif kind == nc.RTA_OIF:
                oif = int(u32(buf, off + 4)[0])
            elif kind == nc.RTA_TABLE:
                in_table = int(u32(buf, off + 4)[0])
            off += (length + 3) & ~3
        if in_table != table or oif not in names:
            return None
        return UnderlayRoute(
            IPNetwork((dst, dst_len), version=4),
            IPAddress(gateway, 4) if gateway else None,
            names[oif],
        )

    return parse


def _read(proto_owned: int, table: int, netns: str | None) -> list[UnderlayRoute]:
    parse = route_parser(proto_owned, table, _link_names(netns))
    bulk = BulkRoutes(netns)
    try:
        chunks = bulk.dump_parsed(parse, 0, table, families=(nc.AF_INET,))
        return [r for chunk in chunks for r in chunk]
    finally:
        bulk.close()


async def read_underlay(
    proto_owned: int, table: int, netns: str | None = None
) -> list[UnderlayRoute]:
    return await asyncio.to_thread(_read, proto_owned, table, netns)
