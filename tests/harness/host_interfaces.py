"""The interfaces of a network namespace as the node sees them: one full
read by felix_lite's own reader of the host (``NetlinkHost``), for tests
that plan from a real namespace's links and addresses."""

from __future__ import annotations

import asyncio

from felix_lite.inputs import HostInterface
from felix_lite.model import DEFAULT_PROTO, MAIN_TABLE
from felix_lite.netlink_host import NetlinkHost


async def read_interfaces(netns: str) -> list[HostInterface]:
    reader = NetlinkHost(netns, own_proto=DEFAULT_PROTO, table=MAIN_TABLE)
    task = asyncio.create_task(reader.run(lambda changed: None))
    try:
        await asyncio.wait_for(reader.wait_ready(), 30)
        return reader.interfaces()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
