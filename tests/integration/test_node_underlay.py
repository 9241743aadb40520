"""The node's read of the host's own routes in a real namespace: everything
of the table that is unicast, through a known link and not ours; felix_lite's
routes, other tables and other route types are left out."""

from __future__ import annotations

import asyncio

import pytest
from netaddr import IPAddress, IPNetwork

from felix_lite.inputs import UnderlayRoute
from lab.netns import NetnsFactory, veth
from meshroute.node.underlay import read_underlay

pytestmark = pytest.mark.netns
OURS = 213


def test_underlay_is_the_tables_foreign_unicast_routes(netns: NetnsFactory) -> None:
    host, peer = netns.new("host"), netns.new("peer")
    veth(host, "eth0", peer, "eth0")
    host.ip("addr", "add", "192.0.2.11/24", "dev", "eth0")
    host.ip("route", "add", "198.51.100.0/24", "via", "192.0.2.1", "proto", "static")
    host.ip("route", "add", "default", "via", "192.0.2.254", "proto", "dhcp")
    host.ip("route", "add", "203.0.113.0/24", "via", "192.0.2.2", "table", "100")
    host.ip("route", "add", "blackhole", "10.9.0.0/26", "proto", "static")
    for i in range(300):  # felix_lite's own: skipped, however many
        host.ip(
            "route",
            "add",
            f"10.244.{i // 4}.{(i % 4) * 64}/26",
            "via",
            "192.0.2.12",
            "proto",
            str(OURS),
        )

    got = asyncio.run(read_underlay(OURS, 254, host.name))

    assert sorted(got, key=lambda r: (r.dst.first, r.dst.prefixlen)) == [
        UnderlayRoute(IPNetwork("0.0.0.0/0"), IPAddress("192.0.2.254"), "eth0"),
        UnderlayRoute(IPNetwork("192.0.2.0/24"), None, "eth0"),
        UnderlayRoute(IPNetwork("198.51.100.0/24"), IPAddress("192.0.2.1"), "eth0"),
    ]
    other = asyncio.run(read_underlay(OURS, 100, host.name))
    assert other == [UnderlayRoute(IPNetwork("203.0.113.0/24"), IPAddress("192.0.2.2"), "eth0")]
