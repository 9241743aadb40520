"""The BFD speaker (in this process, its sockets in a test namespace) against
FRR's bfdd and BIRD 2's ``bfd`` protocol in a second namespace, both
directions: sessions come Up, timers negotiate and change live, each side
detects a path blackholed with nftables (packets dropped, the link stays up)
within detect multiplier x interval, and malformed packets are dropped and
counted without moving the session.

    [ns n] 192.0.2.1 ==== veth ==== 192.0.2.2 [ns r]
    BfdSpeaker                      bfdd or BIRD
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from netaddr import IPAddress

from bgpd.bfd.packet import ControlPacket, Diag, Reason, State, encode
from bgpd.bfd.session import Timers
from bgpd.bfd.speaker import BfdChange, BfdSpeaker, PeerSpec, went_down
from lab.netns import Netns, NetnsFactory, veth
from tests.harness.bgp_peers import Bird, BirdSpec, start_bird
from tests.harness.frr import FrrDaemons

pytestmark = [pytest.mark.netns, pytest.mark.slow]
N_IP, R_IP = "192.0.2.1", "192.0.2.2"
MS = 1000
SLACK_S = 0.3  # event-loop and subprocess latency on a shared, loaded machine


@dataclass
class Rig:
    n: Netns
    r: Netns
    speaker: BfdSpeaker
    changes: list[tuple[float, BfdChange]] = field(default_factory=list)

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    async def until(
        self, what: str, pred: Callable[[], Any], within: float = 15, *, cli: bool = False
    ) -> Any:
        """Poll ``pred``; one that asks a daemon's CLI (``cli``) runs in a
        thread so the speaker's timers on this loop are not held up."""
        deadline = self.now() + within
        while self.now() < deadline:
            got = await asyncio.to_thread(pred) if cli else pred()
            if got:
                return got
            await asyncio.sleep(0.01)
        raise TimeoutError(f"timed out after {within:.0f} s waiting for {what}")

    async def until_went_down(
        self, what: str, since: int, within: float
    ) -> tuple[float, BfdChange]:
        """The first change from ``changes[since]`` on that took our session
        Up -> Down, and when. An event, not a level: a peer that goes on
        sending Down takes us on to Init at its next packet (RFC 5880
        §6.8.6; bfdd sends its second Down some 200 ms after the first),
        and a loaded loop may read both at once, so polling for Down can
        miss it."""
        got = await self.until(
            what,
            lambda: next((tc for tc in self.changes[since:] if went_down(tc[1])), None),
            within,
        )
        assert isinstance(got, tuple)
        return got

    def ours(self) -> State | None:
        return self.speaker.state_of(IPAddress(R_IP), multihop=self.multihop)

    multihop: bool = False

    def ups_and_downs(self) -> list[State]:
        return [c.new for _, c in self.changes if c.new in (State.UP, State.DOWN)]

    def blackhole(self, hook: str) -> None:
        """Drop BFD in ns r: on ``output`` (we stop hearing the peer) or
        ``input`` (the peer stops hearing us)."""
        self.r.sh(
            "nft add table inet mrtbfd && "
            f"nft add chain inet mrtbfd {hook} '{{ type filter hook {hook} priority 0; }}' && "
            f"nft add rule inet mrtbfd {hook} udp dport {{ 3784, 4784 }} drop"
        )

    def heal(self) -> None:
        self.r.sh("nft delete table inet mrtbfd")


@pytest.fixture
async def rig(netns: NetnsFactory) -> AsyncIterator[Rig]:
    n, r = netns.new("bfdn"), netns.new("bfdr")
    veth(n, "eth0", r, "eth0")
    n.ip("addr", "add", f"{N_IP}/30", "dev", "eth0")
    r.ip("addr", "add", f"{R_IP}/30", "dev", "eth0")
    rig: Rig
    loop = asyncio.get_running_loop()

    def on_change(c: BfdChange) -> None:
        rig.changes.append((loop.time(), c))

    speaker = BfdSpeaker(netns=n.name, on_change=on_change)
    rig = Rig(n, r, speaker)
    await speaker.start()
    try:
        yield rig
    finally:
        await speaker.stop()


def spec(tx: int = 300, rx: int = 300, mult: int = 3, **kw: Any) -> PeerSpec:
    return PeerSpec(IPAddress(R_IP), Timers(tx * MS, rx * MS, mult, **kw), local=IPAddress(N_IP))


# ---- the peers ------------------------------------------------------------------


def frr_conf(tx: int = 300, rx: int = 300, mult: int = 3, extra: str = "") -> str:
    return (
        "bfd\n"
        f" peer {N_IP} local-address {R_IP}\n"
        f"  receive-interval {rx}\n  transmit-interval {tx}\n  detect-multiplier {mult}\n"
        f"{extra} !\n!\n"
    )


def start_frr(r: Netns, conf: str) -> FrrDaemons:
    return FrrDaemons(r, conf).start()


def bird_bfd(tx: int = 300, rx: int = 300, mult: int = 3, passive: bool = False) -> BirdSpec:
    extra = (
        "protocol bfd bfd1 {\n"
        f'  interface "*" {{ min rx interval {rx} ms; min tx interval {tx} ms;'
        f" multiplier {mult}; passive {'on' if passive else 'off'}; }};\n"
        f"  neighbor {N_IP} local {R_IP};\n"
        "}"
    )
    return BirdSpec(router_id=R_IP, local_as=65020, neighbors=(), extra=extra)


def bird_session(bird: Bird) -> dict[str, str]:
    """BIRD's row for our address in ``show bfd sessions``."""
    for line in bird.birdc("show bfd sessions").splitlines():
        tok = line.split()
        if tok and tok[0] == N_IP and len(tok) >= 6:
            return {"state": tok[2], "interval": tok[-2], "timeout": tok[-1]}
    return {}


# ---- FRR bfdd -----------------------------------------------------------------


async def test_frr_session_up_timers_negotiate_and_change_live(rig: Rig) -> None:
    frr = start_frr(rig.r, frr_conf(tx=300, rx=300))
    try:
        rig.speaker.set_sessions([spec(tx=200, rx=400)])
        await rig.until("our session Up", lambda: rig.ours() is State.UP)
        await rig.until("bfdd Up", lambda: frr.bfd_peer(N_IP).get("status") == "up", cli=True)
        (st,) = rig.speaker.status()
        assert st.tx_interval_ms == 300  # max(our 200, its required 300)
        assert st.detect_time_ms == 3 * 400  # its multiplier x max(our rx 400, its tx 300)

        def frr_sees(tx: int, rx: int) -> bool:
            p = frr.bfd_peer(N_IP)
            return (p.get("remote-transmit-interval"), p.get("remote-receive-interval")) == (tx, rx)

        await rig.until("bfdd to learn our timers", lambda: frr_sees(200, 400), cli=True)
        # live: faster, then slower; the Poll Sequence keeps the session Up
        rig.speaker.set_sessions([spec(tx=100, rx=100)])
        await rig.until("bfdd to learn faster timers", lambda: frr_sees(100, 100), cli=True)
        rig.speaker.set_sessions([spec(tx=500, rx=600, mult=5)])
        await rig.until("bfdd to learn slower timers", lambda: frr_sees(500, 600), cli=True)
        assert frr.bfd_peer(N_IP).get("remote-detect-multiplier") == 5
        assert rig.ups_and_downs() == [State.UP]
        assert frr.bfd_peer(N_IP).get("status") == "up"
    finally:
        frr.stop()


async def test_frr_blackhole_detected_both_ways_within_detection_time(rig: Rig) -> None:
    frr = start_frr(rig.r, frr_conf())
    try:
        rig.speaker.set_sessions([spec()])
        await rig.until("our session Up", lambda: rig.ours() is State.UP)
        await rig.until("bfdd Up", lambda: frr.bfd_peer(N_IP).get("status") == "up", cli=True)
        await asyncio.sleep(1.0)  # the Poll Sequence to fast timers is over

        # we stop hearing bfdd: our detection time expires
        mark = len(rig.changes)
        await asyncio.to_thread(rig.blackhole, "output")
        t0 = rig.now()
        t_down, c = await rig.until_went_down("our session Down", mark, 5)
        assert c.diag == Diag.CONTROL_DETECTION_TIME_EXPIRED
        assert t_down - t0 <= 0.9 + SLACK_S, f"detected after {t_down - t0:.3f} s"
        await asyncio.to_thread(rig.heal)
        await rig.until("Up again", lambda: rig.ours() is State.UP, 10)
        await asyncio.sleep(1.0)

        # bfdd stops hearing us: it detects, and tells us so
        mark = len(rig.changes)
        await asyncio.to_thread(rig.blackhole, "input")
        t0 = rig.now()
        t_down, c = await rig.until_went_down("our session Down", mark, 5)
        assert c.diag == Diag.NEIGHBOR_SIGNALED_DOWN
        assert c.remote_diag == Diag.CONTROL_DETECTION_TIME_EXPIRED
        assert t_down - t0 <= 0.9 + SLACK_S, f"bfdd detected after {t_down - t0:.3f} s"
        assert frr.bfd_peer(N_IP).get("diagnostic") == "control detection time expired"
    finally:
        frr.stop()


async def test_frr_passive_either_side(rig: Rig) -> None:
    frr = start_frr(rig.r, frr_conf(extra="  passive-mode\n"))
    try:
        rig.speaker.set_sessions([spec()])
        await rig.until("Up with bfdd passive", lambda: rig.ours() is State.UP)
        # now we are passive and bfdd active: restart bfdd to start over
        rig.speaker.set_sessions([spec(passive=True)])
        frr.stop()
        await rig.until("Down without bfdd", lambda: rig.ours() is State.DOWN, 5)
        frr = start_frr(rig.r, frr_conf())
        await rig.until("Up with us passive", lambda: rig.ours() is State.UP)
    finally:
        frr.stop()


async def test_frr_multihop(netns: NetnsFactory, rig: Rig) -> None:
    conf = (
        f"bfd\n peer {N_IP} multihop local-address {R_IP}\n"
        "  receive-interval 300\n  transmit-interval 300\n !\n!\n"
    )
    frr = start_frr(rig.r, conf)
    try:
        mh = PeerSpec(IPAddress(R_IP), Timers(), local=IPAddress(N_IP), multihop=True)
        rig.multihop = True
        rig.speaker.set_sessions([mh])
        await rig.until("multihop Up", lambda: rig.ours() is State.UP)
        assert frr.bfd_peer(N_IP).get("multihop") is True
        # a minimum TTL above what arrives (255) cannot be met: packets dropped
        rig.speaker.set_sessions([PeerSpec(mh.peer, mh.timers, mh.local, True, 256)])
        await rig.until("multihop Down on TTL", lambda: rig.ours() is State.DOWN, 5)
        assert rig.speaker.drops[Reason.BAD_TTL] > 0
    finally:
        frr.stop()


# ---- malformed packets -------------------------------------------------------------


def send_raw(r: Netns, payloads: list[bytes], ttl: int = 255) -> None:
    from lab.netns import call_in_netns

    def send() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
            s.bind((R_IP, 50000))
            for p in payloads:
                s.sendto(p, (N_IP, 3784))

    call_in_netns(r.name, send)


async def test_malformed_packets_are_dropped_counted_and_move_nothing(rig: Rig) -> None:
    frr = start_frr(rig.r, frr_conf())
    try:
        rig.speaker.set_sessions([spec()])
        await rig.until("our session Up", lambda: rig.ours() is State.UP)
        their = frr.bfd_peer(N_IP)["id"]
        ours = frr.bfd_peer(N_IP)["remote-id"]
        down = ControlPacket(State.DOWN, 3, their, ours, 300 * MS, 300 * MS)

        def bad(offset: int, value: int) -> bytes:
            b = bytearray(encode(down))
            b[offset] = value
            return bytes(b)

        garbage = [
            bad(0, 2 << 5),  # version 2
            bad(3, 40),  # length beyond the payload
            bad(3, 10),  # length below the header
            bad(2, 0),  # detect multiplier 0
            bad(1, (State.DOWN << 6) | 0x04) + b"\x01\x09\x01secret",  # auth, none configured
            bad(1, (State.DOWN << 6) | 0x01),  # multipoint
            encode(ControlPacket(State.UP, 3, 0, ours, 1, 1)),  # my discriminator 0
            encode(ControlPacket(State.UP, 3, their, 0, 1, 1)),  # Up without your discriminator
            b"\x20",  # a single byte
            b"\xff" * 1500,
        ]
        await asyncio.to_thread(send_raw, rig.r, garbage)
        # a well-formed Down from the right address but TTL 64: not single-hop
        await asyncio.to_thread(send_raw, rig.r, [encode(down)], 64)
        await asyncio.sleep(0.5)
        drops = rig.speaker.drops
        assert drops[Reason.BAD_VERSION] == 2  # version 2, and 0xff...: version 7
        assert drops[Reason.BAD_LENGTH] == 2
        assert drops[Reason.ZERO_MULTIPLIER] == 1
        assert drops[Reason.AUTH_UNEXPECTED] == 1
        assert drops[Reason.MULTIPOINT] == 1
        assert drops[Reason.ZERO_MY_DISCRIMINATOR] == 1
        assert drops[Reason.ZERO_YOUR_DISCRIMINATOR] == 1
        assert drops[Reason.TOO_SHORT] == 1
        assert drops[Reason.BAD_TTL] == 1
        assert rig.ours() is State.UP
        assert rig.ups_and_downs() == [State.UP]
        # the same Down, TTL 255 and a known source: it does move the session
        # (bfdd answers our Down at once, so Up may be back before a poll)
        since = len(rig.changes)
        await asyncio.to_thread(send_raw, rig.r, [encode(down)])
        _, c = await rig.until_went_down("the valid Down to count", since, 5)
        assert c.diag == Diag.NEIGHBOR_SIGNALED_DOWN
    finally:
        frr.stop()


# ---- BIRD 2 ------------------------------------------------------------------------


async def test_bird_session_up_timers_and_blackhole_both_ways(rig: Rig, tmp_path: Path) -> None:
    bird = start_bird(rig.r, tmp_path / "bird", bird_bfd(tx=300, rx=300))
    try:
        rig.speaker.set_sessions([spec(tx=200, rx=400)])
        await rig.until("our session Up", lambda: rig.ours() is State.UP)
        await rig.until("BIRD Up", lambda: bird_session(bird).get("state") == "Up", cli=True)
        (st,) = rig.speaker.status()
        assert (st.tx_interval_ms, st.detect_time_ms) == (300, 1200)
        # BIRD: interval = max(its tx 300, our rx 400); timeout = 3 x max(its rx, our tx)
        await rig.until(
            "BIRD's negotiated timers",
            lambda: (
                bird_session(bird).get("interval") == "0.400"
                and bird_session(bird).get("timeout") == "0.900"
            ),
            cli=True,
        )
        rig.speaker.set_sessions([spec()])
        await rig.until(
            "BIRD's new timers", lambda: bird_session(bird).get("interval") == "0.300", cli=True
        )
        await asyncio.sleep(1.0)

        mark = len(rig.changes)
        await asyncio.to_thread(rig.blackhole, "output")
        t0 = rig.now()
        t_down, c = await rig.until_went_down("our session Down", mark, 5)
        assert c.diag == Diag.CONTROL_DETECTION_TIME_EXPIRED
        assert t_down - t0 <= 0.9 + SLACK_S, f"detected after {t_down - t0:.3f} s"
        await asyncio.to_thread(rig.heal)
        await rig.until("Up again", lambda: rig.ours() is State.UP, 10)
        await asyncio.sleep(1.0)

        mark = len(rig.changes)
        await asyncio.to_thread(rig.blackhole, "input")
        t0 = rig.now()
        t_down, c = await rig.until_went_down("our session Down", mark, 5)
        assert c.remote_diag == Diag.CONTROL_DETECTION_TIME_EXPIRED
        assert t_down - t0 <= 0.9 + SLACK_S, f"BIRD detected after {t_down - t0:.3f} s"
        assert rig.ups_and_downs() == [State.UP, State.DOWN, State.UP, State.DOWN]
    finally:
        bird.stop()


async def test_bird_passive_and_us_passive(rig: Rig, tmp_path: Path) -> None:
    bird = start_bird(rig.r, tmp_path / "bird", bird_bfd(passive=True))
    try:
        rig.speaker.set_sessions([spec(passive=True)])
        await asyncio.sleep(2.5)  # both passive: nobody speaks first
        assert rig.ours() is State.DOWN and not rig.changes
        rig.speaker.set_sessions([spec()])
        await rig.until("Up once we are active", lambda: rig.ours() is State.UP)
    finally:
        bird.stop()
