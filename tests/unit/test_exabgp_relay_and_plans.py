"""The relay's bookkeeping and the speaker's pure decisions; then the real
relay process between a pipe (standing in for ExaBGP) and a unix socket."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from netaddr import IPAddress, IPNetwork

from bgpd.exabgp_config import ExabgpConfig, NeighborConfig
from bgpd.model import Announce, RouteRefresh, Withdraw
from bgpd.relay import LineSplitter, RelayState, parse_args
from bgpd.speaker import (
    RELAY,
    decide_refresh,
    decide_reload_missed,
    decide_restart_delay,
    parse_neighbor_summary,
    plan_commands,
    plan_reactivated,
    plan_refamilied,
)

FIX = Path(__file__).parent.parent / "fixtures" / "exabgp"


def state_line(peer: str, state: str) -> bytes:
    msg = {
        "type": "state",
        "neighbor": {"address": {"peer": peer}, "asn": {"peer": 1}, "state": state},
    }
    return json.dumps(msg).encode() + b"\n"


def test_relay_buffers_bounded_and_counts_drops() -> None:
    s = RelayState(max_lines=3)
    for i in range(5):
        assert s.on_exabgp_line(f'{{"n": {i}}}\n'.encode(), node_connected=False) is None
    out = s.on_node_connected()
    assert out[:-1] == [b'{"n": 2}\n', b'{"n": 3}\n', b'{"n": 4}\n']
    assert json.loads(out[-1]) == {"relay": "synced", "replayed": 0, "buffered": 3, "dropped": 2}
    assert json.loads(s.on_node_connected()[-1])["dropped"] == 0


def test_relay_without_a_buffer_keeps_nothing_and_counts_every_drop() -> None:
    s = RelayState(max_lines=0)
    for i in range(2):
        assert s.on_exabgp_line(f'{{"n": {i}}}\n'.encode(), node_connected=False) is None
    (mark,) = s.on_node_connected()
    assert json.loads(mark) == {"relay": "synced", "replayed": 0, "buffered": 0, "dropped": 2}


def test_lines_split_across_chunks_and_an_over_long_one_skipped_whole() -> None:
    s = LineSplitter(limit=8)
    assert s.feed(b"ab") == []
    assert s.feed(b"c\nde\nf") == [b"abc\n", b"de\n"]
    assert s.feed(b"0123456789") == [] and s.skipped == 1  # f0123456789: too long
    assert s.feed(b"xyz\nok\n") == [b"ok\n"]  # the rest of the long line is gone
    assert s.feed(b"0123456789\nok\n") == [b"0123456789\n", b"ok\n"]  # whole in one chunk


def test_relay_arguments_are_checked() -> None:
    assert parse_args(["--socket", "/s", "--buffer=5"]) == ("/s", 5, 256 * 1024 * 1024)
    for bad in ([], ["--socket"], ["--sock", "/s"], ["--socket", "/s", "--buffer", "x"]):
        with pytest.raises(SystemExit, match="usage"):
            parse_args(bad)


def test_relay_replays_latest_state_unless_still_buffered() -> None:
    s = RelayState()
    s.on_exabgp_line(state_line("192.0.2.2", "up"), node_connected=True)
    s.on_exabgp_line(state_line("192.0.2.3", "up"), node_connected=True)
    down = state_line("192.0.2.3", "down")
    s.on_exabgp_line(down, node_connected=False)
    out = s.on_node_connected()
    assert out[:-1] == [state_line("192.0.2.2", "up"), down]


def test_relay_swallows_acks_owed_to_a_node_that_left() -> None:
    s = RelayState()
    s.on_command_sent()
    s.on_command_sent()
    s.on_node_gone()
    s.on_node_connected()
    s.on_command_sent()  # the new node's first command
    assert s.on_exabgp_line(b"done\n", node_connected=True) is None
    assert s.on_exabgp_line(b"error\n", node_connected=True) is None
    assert s.on_exabgp_line(b"done\n", node_connected=True) == b"done\n"


def test_reactivated_are_the_peers_going_from_passive_to_active() -> None:
    a, b, c, d = (IPAddress(f"192.0.2.{i}") for i in (2, 3, 4, 5))

    def cfg(*neighbors: NeighborConfig) -> ExabgpConfig:
        return ExabgpConfig(IPAddress("192.0.2.1"), 64512, neighbors, ("x",))

    old = cfg(
        NeighborConfig(a, 1, passive=True),
        NeighborConfig(b, 1, passive=True),
        NeighborConfig(c, 1),
        NeighborConfig(d, 1, passive=True),
    )
    new = cfg(
        NeighborConfig(a, 1),  # flipped: must be removed and added again
        NeighborConfig(b, 1, passive=True, hold_time=30),  # still passive
        NeighborConfig(c, 1, passive=True),  # active to passive: a reload does it
        NeighborConfig(IPAddress("192.0.2.9"), 1),  # new: a reload adds it
    )  # d removed
    assert plan_reactivated(old, new) == {a}
    assert plan_reactivated(new, new) == frozenset()


def test_refamilied_are_the_peers_whose_families_change() -> None:
    a, b, c = (IPAddress(f"192.0.2.{i}") for i in (2, 3, 4))

    def cfg(*neighbors: NeighborConfig) -> ExabgpConfig:
        return ExabgpConfig(IPAddress("192.0.2.1"), 64512, neighbors, ("x",))

    old = cfg(NeighborConfig(a, 1), NeighborConfig(b, 1), NeighborConfig(c, 1))
    new = cfg(
        NeighborConfig(a, 1, ipv6=True),  # MP-BGP now: needs every route again
        NeighborConfig(b, 1, hold_time=30),  # same families
        NeighborConfig(IPAddress("192.0.2.9"), 1, ipv6=True),  # new: handled as new
    )
    assert plan_refamilied(old, new) == {a}
    assert plan_refamilied(new, new) == frozenset()


def test_summary_read_back_and_a_reload_missed_when_the_peers_differ() -> None:
    # ExaBGP 5.0.15's answer to "show neighbor summary", as the relay hands it over
    text = [
        "Peer            AS        up/down state       |     #sent     #recvd",
        "192.0.2.11      64512     0:00:03 established          2          1",
        "2001:db8:1:1::b 64512        down connect               0          0",
    ]
    a, b = IPAddress("192.0.2.11"), IPAddress("2001:db8:1:1::b")
    running = parse_neighbor_summary(text)
    assert running == {a, b}
    assert parse_neighbor_summary(text[:1]) == frozenset()
    cfg = ExabgpConfig(
        router_id=IPAddress("192.0.2.10"),
        local_as=64512,
        neighbors=(NeighborConfig(a, 64512), NeighborConfig(b, 64512)),
        api_run=("x",),
    )
    assert not decide_reload_missed(cfg, running)
    added = replace(cfg, neighbors=(*cfg.neighbors, NeighborConfig(IPAddress("192.0.2.74"), 64512)))
    assert decide_reload_missed(added, running)  # the reload that adds it was dropped
    assert decide_reload_missed(replace(cfg, neighbors=cfg.neighbors[:1]), running)


def test_restart_delay_grows_and_is_capped() -> None:
    delays = [decide_restart_delay(n, 0.5, 30) for n in range(12)]
    assert delays[0] == 0 and delays[1] == 0.5 and delays[2] == 1.0
    assert delays == sorted(delays) and max(delays) == 30
    assert decide_restart_delay(10**6) == 30


def test_refresh_only_when_something_may_have_been_missed() -> None:
    up = {
        IPAddress("2001:db8::2"): ("ipv6 unicast",),
        IPAddress("192.0.2.2"): ("ipv4 unicast",),
    }
    kw = {"established": up}
    assert decide_refresh(fresh_process=True, first_connection=True, dropped=0, **kw) == []
    want = [
        RouteRefresh("ipv4 unicast", IPAddress("192.0.2.2")),
        RouteRefresh("ipv6 unicast", IPAddress("2001:db8::2")),
    ]
    assert decide_refresh(fresh_process=True, first_connection=False, dropped=0, **kw) == want
    assert decide_refresh(fresh_process=True, first_connection=True, dropped=5, **kw) == want
    assert decide_refresh(fresh_process=False, first_connection=True, dropped=0, **kw) == want


prefixes = st.integers(0, 50).map(lambda i: IPNetwork(f"10.244.{i}.0/26"))
anns = st.dictionaries(
    prefixes,
    st.tuples(st.sampled_from([None, IPAddress("192.0.2.1")]), st.sampled_from([None, 100])),
    max_size=20,
).map(lambda d: {p: Announce(p, nh, (), lp) for p, (nh, lp) in d.items()})


@given(anns, anns)
def test_plan_makes_announced_equal_desired(desired: dict, announced: dict) -> None:
    cmds = plan_commands(desired, announced)
    state = dict(announced)
    for c in cmds:
        if isinstance(c, Withdraw):
            state.pop(c.prefix)
        else:
            state[c.prefix] = c
    assert state == desired
    assert plan_commands(desired, state) == []
    # withdrawals come first, so a moving prefix is never withdrawn after its announce
    kinds = [isinstance(c, Withdraw) for c in cmds]
    assert kinds == sorted(kinds, reverse=True)


async def test_relay_process_between_pipe_and_socket(tmp_path: Path) -> None:
    sock = tmp_path / "node.sock"
    relay = subprocess.Popen(  # noqa: ASYNC220 - starting it is quick
        # as ExaBGP runs it: by path, no site, the standard library only
        [sys.executable, "-S", "-I", str(RELAY), "--socket", str(sock), "--buffer", "1000"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert relay.stdin is not None and relay.stdout is not None
    try:
        # no node yet: the relay keeps reading (ExaBGP must never block)
        captured = (FIX / "session.jsonl").read_bytes()
        lines = [ln + b"\n" for ln in captured.splitlines() if not ln.startswith(b"done")]
        lines = [ln for ln in lines if not ln.startswith(b"error")]
        reps = 100
        for _ in range(reps):
            relay.stdin.write(b"".join(lines))
        relay.stdin.flush()
        got: list[bytes] = []
        connected = asyncio.Event()
        node_w: list[asyncio.StreamWriter] = []

        async def on_conn(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            node_w.append(w)
            connected.set()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                while line := await r.readline():
                    got.append(line)

        server = await asyncio.start_unix_server(on_conn, str(sock))
        await asyncio.wait_for(connected.wait(), 10)
        total = reps * len(lines)

        def marks() -> list[dict]:
            return [json.loads(g) for g in got if g.startswith(b'{"relay"')]

        for _ in range(200):
            if marks() and len(got) - 1 - marks()[0]["replayed"] + marks()[0]["dropped"] >= total:
                break
            await asyncio.sleep(0.05)
        (mark,) = marks()
        # every line ExaBGP wrote was either delivered or counted as dropped;
        # the pipe (64 KiB) may hold a tail that arrives after the connection
        assert len(got) - 1 - mark["replayed"] + mark["dropped"] == total
        assert mark["buffered"] == 1000 and mark["dropped"] >= total - 1000 - 200
        # a command goes through to ExaBGP's stdin (our pipe)
        node_w[0].write(b"announce eor ipv4 unicast\n")
        await node_w[0].drain()
        assert await asyncio.to_thread(relay.stdout.readline) == b"announce eor ipv4 unicast\n"
        relay.stdin.write(b"done\n")
        relay.stdin.flush()
        for _ in range(100):
            if got[-1] == b"done\n":
                break
            await asyncio.sleep(0.05)
        assert got[-1] == b"done\n"
        relay.stdin.close()  # ExaBGP went away: the relay exits
        assert await asyncio.to_thread(relay.wait, 10) == 0
        for w in node_w:
            w.close()
        server.close()
        await server.wait_closed()
    finally:
        if relay.poll() is None:
            relay.kill()
        relay.wait()
        for f in (relay.stdout, relay.stderr):
            if f is not None:
                f.close()
