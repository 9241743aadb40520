"""The BFD daemon reports each change the moment it happens and one
snapshot for a burst of them: a snapshot per change was a pass over every
session each, and on a loaded host a burst of flaps fed itself. Until that
snapshot comes, the node's client reports each session as its last change
left it."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

from netaddr import IPAddress

from bgpd.bfd.client import BfdClient
from bgpd.bfd.daemon import SNAPSHOT_AFTER_CHANGE_S, Daemon
from bgpd.bfd.packet import Diag, State
from bgpd.bfd.speaker import BfdChange, SessionStatus
from bgpd.bfd.wire import change_to_json, status_to_json


async def test_a_burst_of_changes_is_sent_whole_with_one_snapshot(tmp_path: Path) -> None:
    daemon = Daemon(tmp_path / "bfd.sock", 300.0)
    ours, theirs = socket.socketpair()
    _, writer = await asyncio.open_connection(sock=ours)
    reader, their_writer = await asyncio.open_connection(sock=theirs)
    daemon._writer = writer  # as _on_node sets it for a connected node
    try:
        for i in range(1, 51):
            daemon._on_change(
                BfdChange(
                    IPAddress(f"192.0.2.{i}"),
                    False,
                    State.UP,
                    State.DOWN,
                    Diag.CONTROL_DETECTION_TIME_EXPIRED,
                    Diag.NONE,
                )
            )
        await asyncio.sleep(SNAPSHOT_AFTER_CHANGE_S * 4)
        await writer.drain()
        kinds: list[str] = []
        while True:
            try:
                line = await asyncio.wait_for(reader.readline(), 0.2)
            except TimeoutError:
                break
            kinds += list(json.loads(line))
        assert kinds[:50] == ["change"] * 50  # each at once, before any snapshot
        assert kinds[50:] == ["snapshot"]
    finally:
        for w in (writer, their_writer):
            w.close()
            await w.wait_closed()


def test_the_client_reports_a_change_before_the_snapshot_that_follows_it(tmp_path: Path) -> None:
    peer = IPAddress("192.0.2.1")
    up = SessionStatus(peer, False, State.UP, 0, 0, 1.0, 50.0, 150.0, True, 10, 10, None, None)
    down = BfdChange(peer, False, State.UP, State.DOWN, Diag.CONTROL_DETECTION_TIME_EXPIRED, 0)
    seen: list[BfdChange] = []
    client = BfdClient(tmp_path, on_change=seen.append)
    snapshot = {"snapshot": {"sessions": [status_to_json(up)], "drops": {}}}
    client._on_line(json.dumps(snapshot).encode())
    before = client.sessions
    client._on_line(json.dumps({"change": change_to_json(down)}).encode())
    assert seen == [down]
    (now,) = client.status()
    assert now.state is State.DOWN and now.diag == Diag.CONTROL_DETECTION_TIME_EXPIRED
    assert now.last_down_diag == Diag.CONTROL_DETECTION_TIME_EXPIRED and now.last_down_at
    assert now.since > 1.0 and now.sent == 10
    assert client.sessions is before  # no new snapshot yet
