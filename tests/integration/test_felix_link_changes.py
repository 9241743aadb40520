"""felix_lite's host reader and reconciler, composed as the node composes
them, react to addresses and links coming and going in a real namespace:
a change re-plans from the new interfaces, and after a link change a full
resync puts back what the kernel dropped with the link."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable

import pytest
from netaddr import IPAddress, IPNetwork

from felix_lite.host_state import HostChange
from felix_lite.inputs import BestRoute, HostInterface, PlanInput, Pool
from felix_lite.model import DEFAULT_PROTO
from felix_lite.netlink_host import NetlinkHost
from felix_lite.netlink_table import NetlinkRouteTable
from felix_lite.planner import plan_kernel_state
from felix_lite.reconciler import Reconciler
from lab.netns import NetnsFactory

pytestmark = pytest.mark.netns

BLOCK = IPNetwork("10.244.2.0/26")
NH = IPAddress("198.51.100.7")


def plan(interfaces: list[HostInterface]) -> PlanInput:
    return PlanInput(
        interfaces=tuple(interfaces),
        pools=(Pool(IPNetwork("10.244.0.0/16")),),
        routes=(BestRoute(BLOCK, (NH,)),),
    )


async def until(check: Callable[[], bool], within: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)


def test_address_and_link_changes_replan_and_resync(netns: NetnsFactory) -> None:
    ns = netns.new("links")
    ns.ip("link", "add", "eth1", "type", "veth", "peer", "name", "peer1")
    ns.ip("link", "set", "eth1", "up")
    ns.ip("link", "set", "peer1", "up")

    def route_dev() -> str | None:
        out = json.loads(
            ns.ip("-j", "route", "show", "exact", str(BLOCK), "proto", str(DEFAULT_PROTO)) or "[]"
        )
        return out[0]["dev"] if out else None

    async def go() -> None:
        table = await asyncio.to_thread(NetlinkRouteTable, ns.name)
        host = NetlinkHost(ns.name, own_proto=DEFAULT_PROTO, table=254)
        rec = Reconciler(table)

        def on_host_changed(changed: set[HostChange]) -> None:
            if HostChange.LINKS in changed:
                rec.request_resync()  # the kernel drops routes with a link
            rec.set_desired(plan_kernel_state(plan(host.interfaces())))

        tasks = [asyncio.create_task(host.run(on_host_changed))]
        try:
            await asyncio.wait_for(host.wait_ready(), 10)
            # No interface reaches the next hop yet: nothing to install.
            rec.set_desired(plan_kernel_state(plan(host.interfaces())))
            tasks.append(asyncio.create_task(rec.run()))
            await asyncio.wait_for(rec.wait_converged(), 5)
            assert route_dev() is None

            ns.ip("addr", "add", "198.51.100.10/24", "dev", "eth1")
            await until(lambda: route_dev() == "eth1")

            # Down: the kernel drops the route and the plan no longer wants it.
            ns.ip("link", "set", "eth1", "down")
            await until(lambda: not rec.actual_routes)
            assert route_dev() is None
            # Up again: re-planned and put back by the resync.
            ns.ip("link", "set", "eth1", "up")
            await until(lambda: route_dev() == "eth1")
        finally:
            for t in tasks:
                t.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await t
            await asyncio.to_thread(table.close)

    asyncio.run(go())
