"""The node's start never waits for its BFD daemon (bgpd.bfd.client), and
a node whose peers use no BFD runs no daemon until a session is wanted.

In a QEMU guest the daemon took longer than the client's old 30 s wait to
open its socket, and the node, which started the client before programming
any route, installed none. Routing must not depend on BFD's arrival.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from netaddr import IPAddress

from bgpd.bfd.client import BfdClient
from bgpd.bfd.session import Timers
from bgpd.bfd.speaker import PeerSpec

SESSION = PeerSpec(IPAddress("192.0.2.2"), Timers(), local=IPAddress("192.0.2.1"))


async def test_start_returns_while_the_daemon_is_still_starting(tmp_path: Path) -> None:
    # a daemon that never opens its socket: an interpreter that only sleeps
    slow = tmp_path / "slow-python"
    slow.write_text(f"#!{sys.executable}\nimport time\ntime.sleep(60)\n")
    slow.chmod(0o755)
    client = BfdClient(tmp_path / "bfd", python=str(slow))
    try:
        await asyncio.wait_for(client.start(), 5)
        # no session wanted: nothing to start (set live, as the node does)
        client.set_sessions([])
        await asyncio.sleep(0.3)
        assert client.daemon_starts == 0 and not (tmp_path / "bfd" / "bfd.pid").exists()
        client.set_sessions([SESSION])
        for _ in range(100):  # the daemon is spawned now, in the background
            if client.daemon_starts:
                break
            await asyncio.sleep(0.05)
        assert client.daemon_starts == 1
        assert client.status() == []
    finally:
        await client.stop()
        stand_in = client._proc  # the daemon outlives the client by design
        if stand_in is not None:
            stand_in.kill()
            stand_in.wait()
