"""bgpd.speaker with the real relay and a fake ExaBGP (tests/harness/
fake_exabgp.py): flow control, End-of-RIB order, error acks and restart
with backoff, without root or peers."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path

import pytest
from netaddr import IPAddress, IPNetwork

from bgpd.exabgp_config import ExabgpConfig, NeighborConfig
from bgpd.model import Announce, SessionState
from bgpd.speaker import Speaker, SpeakerSettings

FAKE = "tests.harness.fake_exabgp"
PEERS = (IPAddress("192.0.2.2"), IPAddress("192.0.2.3"))
CFG = ExabgpConfig(
    router_id=IPAddress("192.0.2.1"),
    local_as=64512,
    api_run=("x",),
    neighbors=tuple(NeighborConfig(p, 64513) for p in PEERS),
)


def seen(sp: Speaker) -> dict:
    try:
        return json.loads(Path(str(sp.conf_path) + ".fake.json").read_text())
    except (OSError, ValueError):
        return {"commands": [], "max_unacked": 0}


async def until(cond: Callable[[], bool], limit_s: float, what: str) -> None:
    deadline = time.monotonic() + limit_s
    while not cond():
        assert time.monotonic() < deadline, f"timed out: {what}"
        await asyncio.sleep(0.05)


@pytest.fixture
async def speaker(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Speaker]:
    kw = getattr(request, "param", {})
    sp = Speaker(
        CFG,
        SpeakerSettings(tmp_path, exabgp=(sys.executable, "-m", FAKE), **kw),
    )
    await sp.start()
    try:
        yield sp
    finally:
        await sp.stop()


def many(n: int) -> dict[IPNetwork, Announce]:
    base = int(IPAddress("10.128.0.0"))
    nets = [IPNetwork(f"{IPAddress(base + 64 * i)}/26") for i in range(n)]
    return {p: Announce(p, None) for p in nets}


@pytest.mark.parametrize("speaker", [{"bulk_chunk": 1}], indirect=True)
async def test_at_most_200_unacked_then_end_of_rib_per_peer(speaker: Speaker) -> None:
    await asyncio.wait_for(speaker.wait_synced(), 10)
    await asyncio.sleep(0.3)
    assert not any("eor" in c for c in seen(speaker)["commands"]), "EoR before set_desired"
    speaker.set_desired(many(3000))
    await until(lambda: len(speaker.announced) == 3000, 30, "all acked")
    eors = [f"neighbor {p} announce eor ipv4 unicast" for p in PEERS]
    await until(lambda: all(e in seen(speaker)["commands"] for e in eors), 10, "EoR per peer")
    s = seen(speaker)
    assert 1 < s["max_unacked"] <= 200
    assert 1 < speaker.stats.max_in_flight_seen <= 200
    cmds = s["commands"]
    last_announce = max(i for i, c in enumerate(cmds) if c.startswith("announce route "))
    assert all(cmds.index(e) > last_announce for e in eors), "EoR before our routes"
    assert all(speaker.peer_state[p] is SessionState.ESTABLISHED for p in PEERS)


async def test_error_ack_and_bulk_lines(speaker: Speaker) -> None:
    await asyncio.wait_for(speaker.wait_synced(), 10)
    acks = await speaker.send_lines(["this is not a command", "announce eor ipv4 unicast"])
    assert [a.ok for a in acks] == [False, True]
    speaker.set_desired(many(1200))
    await until(lambda: len(speaker.announced) == 1200, 30, "all acked")
    bulk = [c for c in seen(speaker)["commands"] if "announce attributes" in c]
    assert len(bulk) == 3  # 500 + 500 + 200 prefixes


@pytest.mark.parametrize("speaker", [{"restart_base_s": 0.2}], indirect=True)
async def test_exits_are_restarted_with_backoff_and_routes_resent(
    speaker: Speaker, monkeypatch: pytest.MonkeyPatch
) -> None:
    await asyncio.wait_for(speaker.wait_synced(), 10)
    speaker.set_desired(many(10))
    await until(lambda: len(speaker.announced) == 10, 10, "acked")
    monkeypatch.setenv("FAKE_EXABGP_EXIT_AFTER", "0.3")
    assert speaker.proc is not None
    speaker.proc.terminate()
    t0 = time.monotonic()
    await until(lambda: speaker.stats.exabgp_starts >= 4, 20, "three restarts")
    took = time.monotonic() - t0
    # early exits back off: 0.2 s, then 0.4 s, then 0.8 s ...
    assert took >= 0.2 + 0.4
    monkeypatch.delenv("FAKE_EXABGP_EXIT_AFTER")
    await until(lambda: speaker.stats.exabgp_starts >= 5, 20, "a lasting start")
    await until(lambda: len(speaker.announced) == 10, 10, "re-announced to the new one")
    await until(lambda: any(c.count("/26") == 10 for c in seen(speaker)["commands"]), 10, "resent")


async def test_a_dropped_reload_is_asked_for_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ExaBGP 5.0.15 drops a reload that finds updates still queued for a
    peer (the fake drops the first one): the speaker reads the peers back
    and reloads again, so the added peer comes up."""
    monkeypatch.setenv("FAKE_EXABGP_DROP_RELOADS", "1")
    sp = Speaker(CFG, SpeakerSettings(tmp_path, exabgp=(sys.executable, "-m", FAKE)))
    await sp.start()
    try:
        await asyncio.wait_for(sp.wait_synced(), 10)
        assert await sp.running_peers() == set(PEERS)
        added = IPAddress("192.0.2.4")
        more = replace(CFG, neighbors=(*CFG.neighbors, NeighborConfig(added, 64513)))
        await sp.apply_config(more)
        await until(lambda: sp.peer_state.get(added) is SessionState.ESTABLISHED, 10, "added up")
        assert await sp.running_peers() == {*PEERS, added}
    finally:
        await sp.stop()


async def test_peers_up_while_another_gets_its_copies_get_theirs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two peers added by one reload (a new node's IPv4 and IPv6
    sessions), the second coming up while the first is sent its copies of
    our routes: the second gets them too, or it never learns our routes
    (issue #9: a node's IPv6 block missing on the node added after it)."""
    monkeypatch.setenv("FAKE_EXABGP_STAGGER_UP", "1")
    sp = Speaker(CFG, SpeakerSettings(tmp_path, exabgp=(sys.executable, "-m", FAKE)))
    await sp.start()
    try:
        await asyncio.wait_for(sp.wait_synced(), 10)
        sp.set_desired(many(3))
        await until(lambda: len(sp.announced) == 3, 10, "announced")
        x, y = IPAddress("192.0.2.4"), IPAddress("192.0.2.5")
        more = (NeighborConfig(x, 64513), NeighborConfig(y, 64513))
        await sp.apply_config(replace(CFG, neighbors=(*CFG.neighbors, *more)))

        def copied(peer: IPAddress) -> bool:
            heads = (f"neighbor {peer} announce route", f"neighbor {peer} announce attributes")
            return any(c.startswith(heads) for c in seen(sp)["commands"])

        await until(lambda: copied(x), 10, "the first added peer's copies")
        await until(lambda: copied(y), 10, "the second added peer's copies")
    finally:
        await sp.stop()
