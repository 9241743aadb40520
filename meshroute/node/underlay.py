"""The host's own routes (those felix_lite does not own), which the planner
uses to hand an off-subnet next hop to the fabric (pools in ``Never`` mode).
Read with pyroute2 off the event loop."""

from __future__ import annotations

import asyncio
from typing import Any

from netaddr import IPAddress, IPNetwork
from pyroute2 import IPRoute

from felix_lite.inputs import UnderlayRoute


def _read(proto_owned: int, table: int, netns: str | None) -> list[UnderlayRoute]:
    out = []
    with IPRoute(netns=netns) if netns else IPRoute() as ipr:
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        for r in ipr.get_routes(family=2, table=table):
            if r["proto"] == proto_owned or r["type"] != 1:
                continue
            oif = r.get_attr("RTA_OIF")
            if oif not in names:
                continue
            dst = r.get_attr("RTA_DST") or "0.0.0.0"
            gw: Any = r.get_attr("RTA_GATEWAY")
            out.append(
                UnderlayRoute(
                    IPNetwork(f"{dst}/{r['dst_len']}"),
                    IPAddress(gw) if gw else None,
                    names[oif],
                )
            )
    return out


async def read_underlay(
    proto_owned: int, table: int, netns: str | None = None
) -> list[UnderlayRoute]:
    return await asyncio.to_thread(_read, proto_owned, table, netns)
