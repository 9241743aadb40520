"""felix_lite's reader of the host in a real namespace: the first full read
(links, addresses, underlay routes: the table's foreign unicast routes
through a known link), then address, route and link changes arriving as
notifications, with no second full read; our own routes never reach it."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Callable

import pytest
from netaddr import IPAddress, IPNetwork

from felix_lite.host_state import HostChange
from felix_lite.incremental import IncrementalPlanner
from felix_lite.inputs import BestRoute, PlanInput, Pool, UnderlayRoute
from felix_lite.model import NextHop, RouteKind
from felix_lite.netlink_host import NetlinkHost
from lab.netns import NetnsFactory, veth

pytestmark = pytest.mark.netns
OURS = 213


async def until(check: Callable[[], bool], within: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not check():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.02)


def test_full_read_then_changes_by_notification(netns: NetnsFactory) -> None:
    host, peer = netns.new("host"), netns.new("peer")
    veth(host, "eth0", peer, "eth0")
    host.ip("addr", "add", "192.0.2.11/24", "dev", "eth0")
    host.ip("addr", "add", "2001:db8:1::11/64", "dev", "eth0", "nodad")
    host.ip("route", "add", "198.51.100.0/24", "via", "192.0.2.1", "proto", "static")
    host.ip("route", "add", "default", "via", "192.0.2.254", "proto", "dhcp")
    host.ip("route", "add", "203.0.113.0/24", "via", "192.0.2.2", "table", "100")
    host.ip("route", "add", "blackhole", "10.9.0.0/26", "proto", "static")
    for i in range(300):  # felix_lite's own: never underlay
        host.ip("route", "add", f"10.244.{i // 4}.{(i % 4) * 64}/26", "via", "192.0.2.12",
                "proto", str(OURS))  # fmt: skip

    async def go() -> None:
        reader = NetlinkHost(host.name, own_proto=OURS, table=254)
        seen: list[set[HostChange]] = []
        task = asyncio.create_task(reader.run(seen.append))
        try:
            await asyncio.wait_for(reader.wait_ready(), 10)
            assert [u for u in reader.underlay() if u.dst.version == 4] == [
                UnderlayRoute(IPNetwork("0.0.0.0/0"), IPAddress("192.0.2.254"), "eth0"),
                UnderlayRoute(IPNetwork("192.0.2.0/24"), None, "eth0"),
                UnderlayRoute(IPNetwork("198.51.100.0/24"), IPAddress("192.0.2.1"), "eth0"),
            ]
            eth0 = next(i for i in reader.interfaces() if i.name == "eth0")
            assert IPNetwork("192.0.2.11/24") in eth0.addresses and eth0.up
            assert IPNetwork("2001:db8:1::11/64") in eth0.addresses and eth0.mtu == 1500
            assert reader.full_reads == 1

            seen.clear()
            await asyncio.to_thread(host.ip, "addr", "add", "192.0.2.99/24", "dev", "eth0")
            await until(lambda: any(HostChange.ADDRESSES in s for s in seen))
            eth0 = next(i for i in reader.interfaces() if i.name == "eth0")
            assert IPNetwork("192.0.2.99/24") in eth0.addresses

            await asyncio.to_thread(
                host.ip, "route", "add", "198.51.100.128/25", "via", "192.0.2.3", "proto", "static"
            )
            added = UnderlayRoute(IPNetwork("198.51.100.128/25"), IPAddress("192.0.2.3"), "eth0")
            await until(lambda: added in reader.underlay())
            await asyncio.to_thread(host.ip, "route", "del", "198.51.100.128/25")
            await until(lambda: added not in reader.underlay())

            # 200 more of our own routes, then one foreign marker: the kernel
            # filter keeps ours off the socket
            before = reader.notifications
            for i in range(300, 500):
                await asyncio.to_thread(host.ip, "route", "add",
                                        f"10.244.{i // 4}.{(i % 4) * 64}/26", "via",
                                        "192.0.2.12", "proto", str(OURS))  # fmt: skip
            await asyncio.to_thread(host.ip, "route", "add", "198.18.0.0/15", "dev", "eth0")
            marker = UnderlayRoute(IPNetwork("198.18.0.0/15"), None, "eth0")
            await until(lambda: marker in reader.underlay())
            assert reader.notifications - before < 10

            seen.clear()
            reads = reader.full_reads
            await asyncio.to_thread(host.ip, "link", "set", "eth0", "down")
            await until(lambda: any(HostChange.LINKS in s for s in seen))
            eth0 = next(i for i in reader.interfaces() if i.name == "eth0")
            assert not eth0.up
            # the kernel dropped the routes through the link without a word
            # about each: a link change is read again in full (once per batch
            # of notifications holding one: the carrier's change, which the
            # kernel's linkwatch sends a moment later, may well come apart)
            await until(lambda: not any(u.ifname == "eth0" for u in reader.underlay()))
            assert reader.full_reads > reads and reader.lost == 0
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(go())


def test_other_tables_are_read_by_their_own_reader(netns: NetnsFactory) -> None:
    host, peer = netns.new("host"), netns.new("peer")
    veth(host, "eth0", peer, "eth0")
    host.ip("addr", "add", "192.0.2.11/24", "dev", "eth0")
    host.ip("route", "add", "203.0.113.0/24", "via", "192.0.2.2", "table", "100")

    async def go() -> None:
        reader = NetlinkHost(host.name, own_proto=OURS, table=100)
        task = asyncio.create_task(reader.run(lambda _: None))
        try:
            await asyncio.wait_for(reader.wait_ready(), 10)
            assert reader.underlay() == [
                UnderlayRoute(IPNetwork("203.0.113.0/24"), IPAddress("192.0.2.2"), "eth0")
            ]
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(go())


def test_a_lost_notification_means_a_full_read(netns: NetnsFactory) -> None:
    """A socket too small for a burst overflows (ENOBUFS): the reader reads
    the whole host again and ends right."""
    host, peer = netns.new("host"), netns.new("peer")
    veth(host, "eth0", peer, "eth0")
    host.ip("addr", "add", "192.0.2.11/24", "dev", "eth0")
    burst = "".join(f"route add 172.16.{i // 256}.{i % 256}/32 dev eth0\n" for i in range(3000))

    async def go() -> None:
        reader = NetlinkHost(host.name, own_proto=OURS, table=254, rcvbuf=4096)
        task = asyncio.create_task(reader.run(lambda _: None))
        try:
            await asyncio.wait_for(reader.wait_ready(), 10)
            # the event loop is held while the burst arrives: the socket overflows
            subprocess.run(["ip", "-n", host.name, "-batch", "-"], input=burst.encode(),  # noqa: ASYNC221
                           check=True)  # fmt: skip
            await until(lambda: reader.lost >= 1)
            hosts = lambda: [u for u in reader.underlay() if u.dst.prefixlen == 32]  # noqa: E731
            await until(lambda: len(hosts()) == 3000)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(go())


def test_an_underlay_change_reaches_the_planner_by_notification(netns: NetnsFactory) -> None:
    """A pod route whose next hop is off every connected subnet (pool mode
    Never) follows the host's underlay route for it as that route changes,
    with no second full read of the host."""
    host, peer = netns.new("host"), netns.new("peer")
    veth(host, "eth0", peer, "eth0")
    host.ip("addr", "add", "192.0.2.11/24", "dev", "eth0")
    best = BestRoute(IPNetwork("10.244.5.0/26"), (IPAddress("198.51.100.7"),))

    async def go() -> None:
        reader = NetlinkHost(host.name, own_proto=OURS, table=254)
        changes: asyncio.Queue[set[HostChange]] = asyncio.Queue()
        task = asyncio.create_task(reader.run(changes.put_nowait))
        try:
            await asyncio.wait_for(reader.wait_ready(), 10)

            def host_input() -> PlanInput:
                return PlanInput(
                    interfaces=tuple(reader.interfaces()),
                    pools=(Pool(IPNetwork("10.244.0.0/16")),),
                    underlay=tuple(reader.underlay()),
                )

            planner = IncrementalPlanner(host_input())
            planner.update([(best.prefix, best)])
            assert not planner.state().routes  # no underlay route covers the next hop yet
            for gateway in ("192.0.2.1", "192.0.2.254"):
                cmd = ("route", "replace", "198.51.100.0/24", "via", gateway, "proto", "static")
                await asyncio.to_thread(host.ip, *cmd)
                while HostChange.UNDERLAY not in await asyncio.wait_for(changes.get(), 10):
                    pass
                change = planner.set_host(host_input())
                (route,) = change.upserts
                assert route.kind is RouteKind.FABRIC
                assert route.nexthops == (NextHop(IPAddress(gateway), "eth0"),)
            assert reader.full_reads == 1
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(go())


def test_a_host_that_cannot_be_read_fails_the_wait() -> None:
    async def go() -> None:
        reader = NetlinkHost("mrt-no-such-namespace", own_proto=OURS, table=254)
        task = asyncio.create_task(reader.run(lambda _: None))
        with pytest.raises(OSError):
            await asyncio.wait_for(reader.wait_ready(), 10)
        with pytest.raises(OSError):
            await task

    asyncio.run(go())
