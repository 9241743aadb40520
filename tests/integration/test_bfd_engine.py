"""BFD's compiled per-packet path (``bgpd.bfd.engine``) on real sockets in a
test namespace's loopback, held to what ``bgpd.bfd.running`` would do in
Python (``tests/unit/test_bfd_running.py`` holds that to the state
machine): the periodic packet keeps ``Cadence``'s bounds, a quiet payload
only moves the detection time to its receive time plus the detection time,
everything else reaches Python with its TTL, source and time, an expired
detection time is handed over once and the session left alone until it is
handed back, and a dropped session's socket is never touched again."""

from __future__ import annotations

import contextlib
import itertools
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import pytest

from bgpd.bfd import session as sm
from bgpd.bfd.engine import Engine, Expired, Packet, Route
from bgpd.bfd.packet import ControlPacket, State, encode
from bgpd.bfd.running import Running
from bgpd.bfd.sockets import TTL, close_quietly, open_receiver, open_sender
from lab.netns import Netns, NetnsFactory
from rtnetlink.sockets import in_netns

pytestmark = pytest.mark.netns
LO = "127.0.0.1"
OURS, THEIRS = 0x1111, 0x2222
# we send every 15-20 ms; their 10 s interval puts the detection time 30 s
# away, so a test sees an expiry only where it sets one (a stalled machine
# must not queue one mid-test)
TX_US, THEIR_TX_US = 20_000, 10_000_000
T = TypeVar("T")


@dataclass
class Rig:
    ns: Netns
    engine: Engine
    receiver: socket.socket  # the engine's, like the speaker's on 3784
    peer: socket.socket  # the test's: the session's packets arrive here
    sender: socket.socket  # the session's

    def inside(self, fn: Callable[[], T]) -> T:
        return in_netns(self.ns.name, fn)

    def route(self) -> Route:
        port = self.peer.getsockname()[1]
        self.inside(lambda: self.sender.connect((LO, port)))
        return Route(OURS, self.sender, True, socket.inet_aton(LO), port, False, 254)

    def send(self, data: bytes, ttl: int = TTL) -> None:
        def go() -> None:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
                s.sendto(data, (LO, self.receiver.getsockname()[1]))

        self.inside(go)

    def events(self, within: float, want: int = 1) -> list[Packet | Expired]:
        got: list[Packet | Expired] = []
        deadline = time.monotonic() + within
        while len(got) < want and time.monotonic() < deadline:
            got += self.engine.take()
            time.sleep(0.002)
        return got

    def heard(self, seconds: float) -> list[tuple[float, bytes]]:
        """What reached the peer's socket in ``seconds``, with when."""
        out: list[tuple[float, bytes]] = []
        deadline = time.monotonic() + seconds
        self.peer.settimeout(0.01)
        while time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                out.append((time.monotonic(), self.peer.recv(512)))
        return out


@pytest.fixture
def rig(netns: NetnsFactory) -> Iterator[Rig]:
    ns = netns.new("bfdeng")
    ns.ip("link", "set", "lo", "up")

    def open_all() -> tuple[socket.socket, socket.socket, socket.socket]:
        peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        peer.bind((LO, 0))
        return open_receiver(socket.AF_INET, 0), peer, open_sender(None, socket.AF_INET)

    receiver, peer, sender = in_netns(ns.name, open_all)
    engine = Engine(queue=8)
    engine.add_receiver(receiver, multihop=False)
    engine.start()
    try:
        yield Rig(ns, engine, receiver, peer, sender)
    finally:
        engine.close()
        for s in (receiver, peer, sender):
            close_quietly(s)


def up_session(now: float) -> tuple[Running, bytes]:
    """A session Up with its peer, through the state machine; and the
    payload that now tells it nothing new."""
    run = Running(sm.new_session(OURS, sm.Timers(TX_US, TX_US, 3), now), 0.005)
    for state in (State.INIT, State.UP):
        p = ControlPacket(state, 3, THEIRS, OURS, THEIR_TX_US, TX_US)
        run.receive(encode(p), p, now)
    assert run.value().state is State.UP and run.quiet_rx is not None
    return run, run.quiet_rx


def test_periodic_packets_keep_the_cadence(rig: Rig) -> None:
    run, _ = up_session(time.monotonic())
    assert run.cadence is not None
    run.detect_at = time.monotonic() + 60  # no expiry: nothing is sent back here
    rig.engine.put(rig.route(), run)
    heard = rig.heard(1.0)
    assert heard and all(data == run.tx_bytes for _, data in heard)
    gaps = [b - a for (a, _), (b, _) in itertools.pairwise(heard)]
    # Cadence: 75-100 % of the interval, planned up to `late` early, never
    # sooner than 75 % after the last one left (a loaded reader may bunch)
    interval = run.cadence.interval_s
    assert 1.0 / interval - 5 <= len(heard) <= 1.0 / (0.75 * interval) + 2
    assert sum(gaps) / len(gaps) >= 0.75 * interval - 0.002
    counters = rig.engine.counters(OURS)
    assert counters is not None and counters.sent >= len(heard)


def test_a_quiet_payload_only_moves_the_detection_time(rig: Rig) -> None:
    run, quiet = up_session(time.monotonic())
    rig.engine.put(rig.route(), run)
    before = time.monotonic()
    rig.send(quiet)
    time.sleep(0.05)
    t = rig.engine.hold(OURS)
    after = time.monotonic()
    # Running.heard_quiet, the Python twin, on the earliest and latest
    # time the packet can have come
    bounds = []
    for at in (before, after):
        run.heard_quiet(at)
        bounds.append(run.detect_at)
    assert t is not None and t.detect_at is not None
    assert bounds[0] <= t.detect_at <= bounds[1]
    assert t.counters.received == 1
    assert rig.engine.take() == []


def test_anything_else_reaches_python_with_ttl_source_and_time(rig: Rig) -> None:
    run, quiet = up_session(time.monotonic())
    rig.engine.put(rig.route(), run)
    down = encode(ControlPacket(State.DOWN, 3, THEIRS, OURS, THEIR_TX_US, TX_US))
    before = time.monotonic()
    rig.send(down)
    rig.send(quiet, ttl=64)  # the quiet bytes, but not from one hop away
    got = rig.events(2.0, want=2)
    after = time.monotonic()
    assert [(type(e), getattr(e, "data", None), getattr(e, "ttl", None)) for e in got] == [
        (Packet, down, 255),
        (Packet, quiet, 64),
    ]
    for e in got:
        assert isinstance(e, Packet)
        assert e.source == LO and not e.multihop and before <= e.at <= after
    counters = rig.engine.counters(OURS)
    assert counters is not None and counters.received == 0


def test_a_held_session_is_left_alone_until_handed_back(rig: Rig) -> None:
    run, quiet = up_session(time.monotonic())
    rig.engine.put(rig.route(), run)
    assert rig.heard(0.1)
    assert rig.engine.hold(OURS) is not None
    rig.heard(0.03)  # what was already on its way
    assert rig.heard(0.4) == []  # no periodic packet...
    rig.send(quiet)  # ...and its quiet payload goes to Python
    got = rig.events(2.0)
    assert len(got) == 1 and isinstance(got[0], Packet) and got[0].data == quiet
    run.next_tx = time.monotonic()
    run.detect_at = time.monotonic() + run.detect_s
    rig.engine.put(rig.route(), run)
    assert rig.heard(0.1)


def test_an_expired_detection_time_is_handed_over_once(rig: Rig) -> None:
    run, _ = up_session(time.monotonic())
    started = time.monotonic()
    run.detect_at = started + 0.05
    rig.engine.put(rig.route(), run)
    got = rig.events(2.0)
    assert got == [Expired(OURS)]
    assert time.monotonic() >= started + 0.05
    rig.heard(0.03)
    assert rig.heard(0.2) == []  # held from the expiry on
    assert rig.events(0.2) == []
    t = rig.engine.hold(OURS)
    assert t is not None and t.detect_at == pytest.approx(started + 0.05)


def test_a_dropped_session_never_touches_its_socket_again(rig: Rig) -> None:
    run, quiet = up_session(time.monotonic())
    rig.engine.put(rig.route(), run)
    assert rig.heard(0.1)
    rig.engine.drop(OURS)
    rig.heard(0.03)
    assert rig.heard(0.2) == []
    assert rig.engine.hold(OURS) is None and rig.engine.counters(OURS) is None
    rig.send(quiet)  # no session: Python decides (it counts no_session)
    got = rig.events(2.0)
    assert len(got) == 1 and isinstance(got[0], Packet)


def test_a_full_queue_drops_packets_and_counts_them(rig: Rig) -> None:
    for i in range(12):
        rig.send(bytes([0x20, 0xC0, 3, 24]) + i.to_bytes(20, "big"))
    time.sleep(0.1)
    got = rig.engine.take()
    assert len(got) == 8  # the queue's size
    assert rig.engine.overflow() == 4
    rig.send(b"\x20")
    assert len(rig.events(2.0)) == 1
