"""bgpd.speaker driving a real ExaBGP 5 against real BIRD 2 and GoBGP peers,
each test in its own network namespaces (documentation addresses only)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
from netaddr import IPAddress, IPNetwork

from bgpd.exabgp_config import ExabgpConfig, NeighborConfig
from bgpd.model import (
    Announce,
    EorEvent,
    Event,
    ExabgpNotice,
    MalformedLine,
    SessionState,
    StateEvent,
    UpdateEvent,
)
from bgpd.speaker import Speaker, SpeakerSettings
from lab.netns import Netns, NetnsFactory
from tests.harness.bgp_peers import (
    Bird,
    BirdNeighbor,
    BirdSpec,
    Gobgp,
    GobgpNeighbor,
    GobgpSpec,
    link,
    start_bird,
    start_gobgp,
)

pytestmark = [pytest.mark.netns, pytest.mark.slow]

EXA_AS, BIRD_AS, GOBGP_AS = 64512, 64513, 64514
SELF = IPAddress("192.0.2.1")


@dataclass
class Recorder:
    events: list[Event] = field(default_factory=list)

    def __call__(self, e: Event) -> None:
        self.events.append(e)

    def states(self, peer: IPAddress) -> list[SessionState]:
        return [e.state for e in self.events if isinstance(e, StateEvent) and e.peer == peer]

    def prefixes_from(self, peer: IPAddress) -> set[IPNetwork]:
        got: set[IPNetwork] = set()
        for e in self.events:
            if isinstance(e, UpdateEvent) and e.peer == peer:
                got |= {p for p, _a in e.announced}
                got -= set(e.withdrawn)
        return got


async def until(cond: Callable[[], bool], limit_s: float, what: str) -> None:
    deadline = time.monotonic() + limit_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {limit_s} s: {what}")
        await asyncio.sleep(0.1)


async def bird_until(bird: Bird, cond: Callable[[Bird], bool], limit_s: float, what: str) -> None:
    deadline = time.monotonic() + limit_s
    while not await asyncio.to_thread(cond, bird):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {limit_s} s: {what}")
        await asyncio.sleep(0.2)


@dataclass
class Lab:
    exa: Netns
    tmp: Path
    factory: NetnsFactory
    speakers: list[Speaker] = field(default_factory=list)
    n_links: int = 0

    def peer_ns(self, label: str) -> tuple[Netns, IPAddress, IPAddress]:
        """A namespace linked to the ExaBGP one; (ns, our address, its address)."""
        i = self.n_links
        self.n_links += 1
        ns = self.factory.new(label)
        ours, theirs = IPAddress(f"192.0.2.{4 * i + 1}"), IPAddress(f"192.0.2.{4 * i + 2}")
        link(self.exa, f"p{i}", f"{ours}/30", ns, "exa", f"{theirs}/30")
        return ns, ours, theirs

    async def speaker(self, cfg: ExabgpConfig, rec: Recorder, **kw: object) -> Speaker:
        s = Speaker(
            cfg,
            SpeakerSettings(
                workdir=self.tmp / f"speaker{len(self.speakers)}",
                wrap=("ip", "netns", "exec", self.exa.name),
                **kw,  # type: ignore[arg-type]
            ),
            rec,
        )
        self.speakers.append(s)
        await s.start()
        return s


@pytest.fixture
async def lab(netns: NetnsFactory, tmp_path: Path) -> AsyncIterator[Lab]:
    lab = Lab(netns.new("exa"), tmp_path, netns)
    try:
        yield lab
    finally:
        for s in lab.speakers:
            await s.stop()


def cfg_for(*neighbors: NeighborConfig) -> ExabgpConfig:
    return ExabgpConfig(router_id=SELF, local_as=EXA_AS, neighbors=neighbors, api_run=("x",))


def blocks(n: int) -> dict[IPNetwork, Announce]:
    """``n`` consecutive /26 from 10.128.0.0, to announce."""
    base = int(IPAddress("10.128.0.0"))
    nets = (IPNetwork(f"{IPAddress(base + 64 * i)}/26") for i in range(n))
    return {p: Announce(p, None) for p in nets}


def bird_spec(exa_addr: IPAddress, router_id: IPAddress, **kw: object) -> BirdSpec:
    return BirdSpec(
        router_id=str(router_id),
        local_as=BIRD_AS,
        neighbors=(BirdNeighbor("exa", str(exa_addr), EXA_AS, **kw),),  # type: ignore[arg-type]
        static4=("203.0.113.0/26", "203.0.113.64/26"),
    )


MINE = {
    IPNetwork("10.244.1.0/26"): Announce(IPNetwork("10.244.1.0/26"), None, ((EXA_AS, 100),)),
    IPNetwork("10.244.1.64/26"): Announce(IPNetwork("10.244.1.64/26"), None),
}


async def test_bird_and_gobgp_learn_ours_and_we_learn_theirs(lab: Lab) -> None:
    bns, b_ours, b_addr = lab.peer_ns("bird")
    gns, g_ours, g_addr = lab.peer_ns("gobgp")
    bird = await asyncio.to_thread(start_bird, bns, lab.tmp / "bird", bird_spec(b_ours, b_addr))
    gobgp: Gobgp = await asyncio.to_thread(
        start_gobgp,
        gns,
        lab.tmp / "gobgp",
        GobgpSpec(str(g_addr), GOBGP_AS, (GobgpNeighbor(str(g_ours), EXA_AS),)),
    )
    await asyncio.to_thread(gobgp.add_route, "198.51.100.0/24", extra=("nexthop", str(g_addr)))
    rec = Recorder()
    sp = await lab.speaker(
        cfg_for(
            NeighborConfig(b_addr, BIRD_AS, b_ours),
            NeighborConfig(g_addr, GOBGP_AS, g_ours),
        ),
        rec,
    )
    sp.set_desired(MINE)
    up = SessionState.ESTABLISHED
    await until(lambda: sp.peer_state.get(b_addr) is up, 30, "BIRD session up")
    await until(lambda: sp.peer_state.get(g_addr) is up, 30, "GoBGP session up")
    want = {"10.244.1.0/26", "10.244.1.64/26"}
    await bird_until(bird, lambda b: want <= b.routes_from("exa"), 20, "BIRD has our /26s")
    deadline = time.monotonic() + 20
    while not want <= await asyncio.to_thread(gobgp.rib):
        assert time.monotonic() < deadline, "GoBGP never showed our /26s"
        await asyncio.sleep(0.2)
    await until(
        lambda: (
            rec.prefixes_from(b_addr) == {IPNetwork("203.0.113.0/26"), IPNetwork("203.0.113.64/26")}
        ),
        20,
        "BIRD's prefixes as UpdateEvents",
    )
    await until(
        lambda: IPNetwork("198.51.100.0/24") in rec.prefixes_from(g_addr), 20, "GoBGP's prefix"
    )
    eors = {e.peer for e in rec.events if isinstance(e, EorEvent)}
    await until(
        lambda: {e.peer for e in rec.events if isinstance(e, EorEvent)} >= {b_addr, g_addr},
        20,
        f"End-of-RIB from both (have {eors})",
    )
    # BIRD saw our End-of-RIB (manual-eor: sent by the speaker after our routes)
    show = await asyncio.to_thread(bird.birdc, "show protocols all exa")
    assert "Established" in show
    assert sp.stats.malformed == 0 and sp.stats.acks_error == 0
    # and a withdraw reaches BIRD
    sp.set_desired({k: v for k, v in MINE.items() if str(k) == "10.244.1.0/26"})
    await bird_until(
        bird, lambda b: b.routes_from("exa") == {"10.244.1.0/26"}, 20, "withdraw at BIRD"
    )


async def test_md5_right_password_up_wrong_never(lab: Lab) -> None:
    good_ns, g_ours, g_addr = lab.peer_ns("md5ok")
    bad_ns, x_ours, x_addr = lab.peer_ns("md5bad")
    await asyncio.to_thread(
        start_bird, good_ns, lab.tmp / "good", bird_spec(g_ours, g_addr, password="right one")
    )
    bad = await asyncio.to_thread(
        start_bird, bad_ns, lab.tmp / "bad", bird_spec(x_ours, x_addr, password="wrong one")
    )
    rec = Recorder()
    sp = await lab.speaker(
        cfg_for(
            NeighborConfig(g_addr, BIRD_AS, g_ours, password="right one"),
            NeighborConfig(x_addr, BIRD_AS, x_ours, password="right one"),
        ),
        rec,
    )
    up = SessionState.ESTABLISHED
    await until(lambda: sp.peer_state.get(g_addr) is up, 30, "right password comes up")
    t0 = time.monotonic()
    while time.monotonic() - t0 < 10:
        assert up not in rec.states(x_addr)
        assert not await asyncio.to_thread(bad.established, "exa")
        await asyncio.sleep(0.5)


async def test_exabgp_killed_is_restarted_and_sessions_return(lab: Lab) -> None:
    bns, b_ours, b_addr = lab.peer_ns("bird")
    bird = await asyncio.to_thread(start_bird, bns, lab.tmp / "bird", bird_spec(b_ours, b_addr))
    rec = Recorder()
    sp = await lab.speaker(
        cfg_for(NeighborConfig(b_addr, BIRD_AS, b_ours)), rec, restart_base_s=0.2
    )
    sp.set_desired(MINE)
    want = {"10.244.1.0/26", "10.244.1.64/26"}
    await bird_until(bird, lambda b: want <= b.routes_from("exa"), 30, "routes at BIRD")
    first = sp.exabgp_pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    await until(lambda: sp.exabgp_pid != first and sp.stats.exabgp_starts == 2, 20, "restart")
    up = SessionState.ESTABLISHED
    await until(lambda: rec.states(b_addr).count(up) >= 2, 60, "session up again")
    await bird_until(bird, lambda b: want <= b.routes_from("exa"), 30, "routes back at BIRD")


@pytest.mark.parametrize("chunk", [1, 500], ids=["one-per-line", "bulk"])
async def test_flow_control_5000_prefixes_reach_bird_then_withdraw_all(
    lab: Lab, chunk: int
) -> None:
    bns, b_ours, b_addr = lab.peer_ns("bird")
    bird = await asyncio.to_thread(start_bird, bns, lab.tmp / "bird", bird_spec(b_ours, b_addr))
    rec = Recorder()
    sp = await lab.speaker(cfg_for(NeighborConfig(b_addr, BIRD_AS, b_ours)), rec, bulk_chunk=chunk)
    up = SessionState.ESTABLISHED
    await until(lambda: sp.peer_state.get(b_addr) is up, 30, "session up")
    desired = blocks(5000)
    t0 = time.monotonic()
    sp.set_desired(desired)
    await until(lambda: len(sp.announced) == 5000, 120, "5000 acks")
    acked_s = time.monotonic() - t0
    await bird_until(bird, lambda b: b.count_from("exa") >= 5000, 120, "5000 routes at BIRD")
    total_s = time.monotonic() - t0
    assert sp.stats.max_in_flight_seen <= 200
    if chunk == 1:
        assert sp.stats.max_in_flight_seen > 1, "commands were not pipelined"
    assert sp.stats.acks_error == 0
    print(f"\n5000 announces, chunk {chunk}: acked {acked_s:.2f} s, at BIRD {total_s:.2f} s")
    # a node being removed withdraws explicitly (GR peers would keep them)
    t0 = time.monotonic()
    assert await sp.withdraw_all()
    await bird_until(bird, lambda b: b.count_from("exa") == 0, 60, "all withdrawn at BIRD")
    print(f"5000 withdrawals, chunk {chunk}: gone at BIRD {time.monotonic() - t0:.2f} s")


async def test_clean_stop_is_a_notice_not_a_warning(
    lab: Lab, caplog: pytest.LogCaptureFixture
) -> None:
    """ExaBGP says "shutdown" on every clean stop: expected, so neither a
    warning nor a malformed line."""
    ns, ours, addr = lab.peer_ns("bird")
    bird = await asyncio.to_thread(start_bird, ns, lab.tmp / "bird", bird_spec(ours, addr))
    rec = Recorder()
    sp = await lab.speaker(cfg_for(NeighborConfig(addr, BIRD_AS, ours)), rec)
    sp.set_desired(MINE)
    await bird_until(bird, lambda b: b.established("exa"), 30, "session up")
    await until(lambda: sp.peer_state.get(addr) is SessionState.ESTABLISHED, 10, "speaker sees it")
    with caplog.at_level(logging.INFO, logger="bgpd"):
        await sp.stop()
    assert ExabgpNotice("shutdown") in rec.events
    assert not [e for e in rec.events if isinstance(e, MalformedLine)]
    assert sp.stats.malformed == 0
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


async def test_config_changed_while_exabgp_starts_does_not_kill_it(lab: Lab) -> None:
    """SIGUSR1 before ExaBGP installed its handlers would kill it: the
    reload waits for its API process to connect."""
    ns, ours, addr = lab.peer_ns("bird")
    await asyncio.to_thread(start_bird, ns, lab.tmp / "bird", bird_spec(ours, addr))
    sp = await lab.speaker(cfg_for(), Recorder())
    await until(lambda: sp.proc is not None, 5, "ExaBGP spawned")
    await sp.apply_config(cfg_for(NeighborConfig(addr, BIRD_AS, ours)))  # at once
    up = SessionState.ESTABLISHED
    await until(lambda: sp.peer_state.get(addr) is up, 30, "the added peer comes up")
    assert sp.stats.exabgp_starts == 1


async def test_reload_adds_and_removes_peers_without_touching_the_others(lab: Lab) -> None:
    """Measured behaviour of ExaBGP 5.0.15 on SIGUSR1 (see bgpd/speaker.py)."""
    ans, a_ours, a_addr = lab.peer_ns("birda")
    bns, b_ours, b_addr = lab.peer_ns("birdb")
    bird_a = await asyncio.to_thread(start_bird, ans, lab.tmp / "a", bird_spec(a_ours, a_addr))
    bird_b = await asyncio.to_thread(start_bird, bns, lab.tmp / "b", bird_spec(b_ours, b_addr))
    rec = Recorder()
    na, nb = NeighborConfig(a_addr, BIRD_AS, a_ours), NeighborConfig(b_addr, BIRD_AS, b_ours)
    sp = await lab.speaker(cfg_for(na), rec)
    sp.set_desired(MINE)
    want = {"10.244.1.0/26", "10.244.1.64/26"}
    await bird_until(bird_a, lambda b: want <= b.routes_from("exa"), 30, "routes at BIRD a")
    pid = sp.exabgp_pid
    await sp.apply_config(cfg_for(na, nb))
    up = SessionState.ESTABLISHED
    await until(lambda: sp.peer_state.get(b_addr) is up, 30, "added peer comes up")
    await bird_until(bird_b, lambda b: want <= b.routes_from("exa"), 30, "routes at the new peer")
    assert rec.states(a_addr).count(SessionState.DOWN) == 0, "adding a peer reset another"
    # the contract tests/harness/fake_exabgp.py keeps too: the peers read back
    assert await sp.running_peers() == {a_addr, b_addr}
    # a changed neighbour is reset by the reload and comes back with our routes
    b_ups = rec.states(b_addr).count(up)
    nb = replace(nb, hold_time=60)
    await sp.apply_config(cfg_for(na, nb))
    await until(lambda: rec.states(b_addr).count(up) > b_ups, 30, "changed peer reset and up")
    await bird_until(bird_b, lambda b: want <= b.routes_from("exa"), 30, "routes after the reset")
    assert rec.states(a_addr).count(SessionState.DOWN) == 0, "changing a peer reset another"
    b_downs = rec.states(b_addr).count(SessionState.DOWN)
    await sp.apply_config(cfg_for(nb))
    await bird_until(bird_a, lambda b: not b.established("exa"), 30, "removed peer goes down")
    await asyncio.sleep(2)
    assert await sp.running_peers() == {b_addr}
    assert sp.exabgp_pid == pid
    assert rec.states(b_addr).count(SessionState.DOWN) == b_downs, "removing a peer reset another"
    assert want <= await asyncio.to_thread(bird_b.routes_from, "exa")


async def test_peer_added_while_exabgp_sends_routes_comes_up(lab: Lab) -> None:
    """ExaBGP 5.0.15 drops a reload signal that finds updates still queued
    for a peer (``Reactor.run``: the signal is cleared, then the loop goes
    on while ``_pending_adjribout()``): the speaker must see that the
    peer set did not change and reload again, or the added peer never
    comes up (the lab's mesh under load: a node that never peered with
    another)."""
    ans, a_ours, a_addr = lab.peer_ns("birda")
    bns, b_ours, b_addr = lab.peer_ns("birdb")
    await asyncio.to_thread(start_bird, ans, lab.tmp / "a", bird_spec(a_ours, a_addr))
    await asyncio.to_thread(start_bird, bns, lab.tmp / "b", bird_spec(b_ours, b_addr))
    na, nb = NeighborConfig(a_addr, BIRD_AS, a_ours), NeighborConfig(b_addr, BIRD_AS, b_ours)
    # one prefix a line: a steady stream, so updates are queued most of the time
    sp = await lab.speaker(cfg_for(na), Recorder(), bulk_chunk=1)
    up = SessionState.ESTABLISHED
    await until(lambda: sp.peer_state.get(a_addr) is up, 30, "first peer up")
    many = blocks(20000)
    sp.set_desired(many)
    # the reload lands while ExaBGP still has updates queued for peer a
    await until(lambda: len(sp.announced) >= 2000, 120, "announcing")
    await sp.apply_config(cfg_for(na, nb))
    await until(lambda: sp.peer_state.get(b_addr) is up, 30, "the added peer comes up")


async def test_ttl_security_enforced_and_passive_with_listener(lab: Lab) -> None:
    """ExaBGP 5.0.15 sets IP_MINTTL for incoming-ttl: a GTSM peer (BIRD
    ``ttl security on`` sends TTL 255) comes up; a peer sending TTL 64 never
    does. The GTSM session is passive on our side: BIRD connects to the
    listener the speaker configured."""
    gns, g_ours, g_addr = lab.peer_ns("gtsm")
    pns, p_ours, p_addr = lab.peer_ns("plain")
    await asyncio.to_thread(
        start_bird, gns, lab.tmp / "g", bird_spec(g_ours, g_addr, extra="  ttl security on;")
    )
    plain = await asyncio.to_thread(start_bird, pns, lab.tmp / "p", bird_spec(p_ours, p_addr))
    rec = Recorder()
    cfg = replace(
        cfg_for(
            NeighborConfig(g_addr, BIRD_AS, g_ours, ttl_security=1, passive=True),
            NeighborConfig(p_addr, BIRD_AS, p_ours, ttl_security=1),
        ),
        listen=(g_ours, 179),
    )
    sp = await lab.speaker(cfg, rec)
    up = SessionState.ESTABLISHED
    await until(lambda: sp.peer_state.get(g_addr) is up, 30, "GTSM peer comes up")
    t0 = time.monotonic()
    while time.monotonic() - t0 < 6:
        assert up not in rec.states(p_addr)
        assert not await asyncio.to_thread(plain.established, "exa")
        await asyncio.sleep(0.5)


def gone_or_zombie(pid: int) -> bool:
    try:
        return b"zombie" in Path(f"/proc/{pid}/status").read_bytes()
    except FileNotFoundError:
        return True


def children_of(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            out += [int(x) for x in (task / "children").read_text().split()]
    return out


async def test_relay_killed_exabgp_respawns_it_and_we_refresh(lab: Lab) -> None:
    """The relay dies under a running ExaBGP: ExaBGP starts a new one, the
    session stays up, and the speaker asks the peer for a route refresh so
    the routes learned meanwhile are not missed."""
    bns, b_ours, b_addr = lab.peer_ns("bird")
    await asyncio.to_thread(start_bird, bns, lab.tmp / "bird", bird_spec(b_ours, b_addr))
    rec = Recorder()
    sp = await lab.speaker(cfg_for(NeighborConfig(b_addr, BIRD_AS, b_ours)), rec)
    theirs = {IPNetwork("203.0.113.0/26"), IPNetwork("203.0.113.64/26")}
    await until(lambda: rec.prefixes_from(b_addr) == theirs, 30, "BIRD's routes")
    assert sp.exabgp_pid is not None
    (relay,) = children_of(sp.exabgp_pid)
    updates_before = sum(isinstance(e, UpdateEvent) for e in rec.events)
    os.kill(relay, signal.SIGKILL)
    await until(lambda: sp.stats.relay_connections == 2, 30, "the new relay connects")
    await until(
        lambda: sum(isinstance(e, UpdateEvent) for e in rec.events) > updates_before,
        20,
        "routes resent after the route refresh",
    )
    assert SessionState.DOWN not in rec.states(b_addr)
    assert rec.prefixes_from(b_addr) == theirs


async def test_node_restart_replaces_leftover_exabgp_and_peer_keeps_routes(lab: Lab) -> None:
    """A node process that dies leaves ExaBGP running; the next speaker on the
    same workdir ends it, starts its own, re-announces, sends End-of-RIB. BIRD
    keeps our routes all along (graceful restart), and the new ExaBGP reports
    BIRD's routes again."""
    bns, b_ours, b_addr = lab.peer_ns("bird")
    bird = await asyncio.to_thread(start_bird, bns, lab.tmp / "bird", bird_spec(b_ours, b_addr))
    cfg = cfg_for(NeighborConfig(b_addr, BIRD_AS, b_ours))
    want = {"10.244.1.0/26", "10.244.1.64/26"}
    first = Speaker(
        cfg, SpeakerSettings(lab.tmp / "node", wrap=("ip", "netns", "exec", lab.exa.name))
    )
    await first.start()
    first.set_desired(MINE)
    await bird_until(bird, lambda b: want <= b.routes_from("exa"), 30, "routes at BIRD")
    old_pid = first.exabgp_pid
    assert old_pid is not None
    await first.stop(terminate_exabgp=False)  # the node "dies"; ExaBGP stays
    os.kill(old_pid, 0)
    rec = Recorder()
    second = Speaker(
        cfg, SpeakerSettings(lab.tmp / "node", wrap=("ip", "netns", "exec", lab.exa.name)), rec
    )
    lab.speakers.append(second)
    await second.start()
    second.set_desired(MINE)
    theirs = {IPNetwork("203.0.113.0/26"), IPNetwork("203.0.113.64/26")}
    t0 = time.monotonic()
    while rec.prefixes_from(b_addr) != theirs or not any(
        isinstance(e, StateEvent) and e.state is SessionState.ESTABLISHED for e in rec.events
    ):
        assert time.monotonic() - t0 < 30, "new ExaBGP never relearned BIRD's routes"
        assert want <= await asyncio.to_thread(bird.routes_from, "exa"), "BIRD lost our routes"
        await asyncio.sleep(0.2)
    assert second.exabgp_pid != old_pid
    assert gone_or_zombie(old_pid)
    # our End-of-RIB ends BIRD's graceful restart (it would wait 120 s otherwise)
    await bird_until(
        bird,
        lambda b: (
            "graceful restart active" not in b.birdc("show protocols all exa")
            and b.established("exa")
        ),
        10,
        "BIRD's graceful restart ended by our End-of-RIB",
    )
    assert want <= await asyncio.to_thread(bird.routes_from, "exa")
    assert first.proc is not None
    await asyncio.to_thread(first.proc.wait, 5)  # reap the old ExaBGP (our child here)


async def test_ipv6_session_both_ways(lab: Lab) -> None:
    bns, _ours4, _addr4 = lab.peer_ns("bird6")
    ours, theirs = IPAddress("2001:db8:12::1"), IPAddress("2001:db8:12::2")
    lab.exa.ip("addr", "add", f"{ours}/64", "dev", f"p{lab.n_links - 1}", "nodad")
    bns.ip("addr", "add", f"{theirs}/64", "dev", "exa", "nodad")
    spec = BirdSpec(
        router_id="192.0.2.2",
        local_as=BIRD_AS,
        neighbors=(BirdNeighbor("exa", str(ours), EXA_AS, ipv6=True),),
        static6=("2001:db8:100::/48",),
    )
    bird = await asyncio.to_thread(start_bird, bns, lab.tmp / "bird", spec)
    rec = Recorder()
    sp = await lab.speaker(
        cfg_for(NeighborConfig(theirs, BIRD_AS, ours, ipv4=False, ipv6=True)), rec
    )
    mine = IPNetwork("2001:db8:244::/64")
    sp.set_desired({mine: Announce(mine, None)})
    await bird_until(bird, lambda b: str(mine) in b.routes_from("exa"), 30, "our /64 at BIRD")
    await until(
        lambda: IPNetwork("2001:db8:100::/48") in rec.prefixes_from(theirs), 20, "BIRD's /48"
    )
    # BIRD may send the /48 more than once (seen about 1 run in 3): every copy
    # must carry its global address as next hop
    paths = [a for e in rec.events if isinstance(e, UpdateEvent) for _p, a in e.announced]
    assert paths and {p.next_hop for p in paths} == {theirs}
