"""The BFD speaker: the asyncio edge that runs a set of sessions.

``set_sessions`` is level-triggered: it takes the whole desired set
(``PeerSpec``), starts what is new, stops what is gone and reconfigures
what changed (a live change keeps the session Up; RFC 5880 Poll Sequence).
Everything a session decides comes from ``bgpd.bfd.session``; this module
opens the sockets, demultiplexes the packets that reach it (by Your
Discriminator, else by source address) and counts what it drops. A packet
that fails any check is dropped and counted under its reason; it never
raises past the event callback and never touches a session.

The per-packet work runs in the compiled engine (``bgpd.bfd.engine``): it
keeps every session's clock, sends the periodic packets, reads the receive
sockets and takes a session's quiet payload by itself (nearly every packet).
What it cannot take (any packet that may tell a session something new, an
expired detection time) it queues here; the speaker holds the session, runs
the state machine on its value, and hands it back with what the new value
says (``bgpd.bfd.running``). A periodic packet may leave up to ``BATCH_S``
late, or half its jitter range if that is less, so that packets due close
together share a wakeup; a detection time is never late.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from netaddr import IPAddress

from bgpd.bfd import session as sm
from bgpd.bfd.engine import Engine, Packet, Route
from bgpd.bfd.packet import ControlPacket, Malformed, Reason, State, decode, encode
from bgpd.bfd.running import Running
from bgpd.bfd.sockets import (
    MULTIHOP_PORT,
    SINGLE_HOP_PORT,
    TTL,
    close_quietly,
    connect_if_routed,
    family_of,
    open_receiver,
    open_sender,
)
from rtnetlink.sockets import in_netns

log = logging.getLogger("bgpd.bfd")
# how late a periodic packet may leave, to share a wakeup (engine.c reads a
# busy socket at the same pace)
BATCH_S = 0.005
DECODED_MAX = 4096  # distinct well-formed packets remembered


@dataclass(frozen=True, slots=True)
class PeerSpec:
    peer: IPAddress
    timers: sm.Timers
    local: IPAddress | None = None
    multihop: bool = False
    minimum_ttl: int = 254  # multihop only: the lowest TTL accepted

    @property
    def key(self) -> tuple[IPAddress, bool]:
        return (self.peer, self.multihop)


@dataclass(frozen=True, slots=True)
class BfdChange:
    peer: IPAddress
    multihop: bool
    old: State
    new: State
    diag: int  # ours: why we moved (packet.Diag)
    remote_diag: int  # the peer's last diagnostic


@dataclass(eq=False, slots=True)
class _Live:
    spec: PeerSpec
    run: Running
    route: Route
    peer_text: str  # the peer as recvmsg reports a source address
    dest: tuple[str, int]
    alive: bool = True
    since: float = field(default_factory=time.time)
    sent: int = 0
    received: int = 0
    send_errors: int = 0
    last_down_diag: int | None = None
    last_down_at: float | None = None


def went_down(c: BfdChange) -> bool:
    """Whether ``c`` took an Up session down (its time and diagnostic are
    kept as the session's last down)."""
    return c.old is State.UP and c.new in (State.DOWN, State.ADMIN_DOWN)


@dataclass(frozen=True, slots=True)
class SessionStatus:
    peer: IPAddress
    multihop: bool
    state: State
    diag: int
    remote_diag: int
    since: float
    tx_interval_ms: float
    detect_time_ms: float
    remote_cpi: bool
    sent: int
    received: int
    last_down_diag: int | None
    last_down_at: float | None

    def after(self, c: BfdChange, at: float) -> SessionStatus:
        """This status once ``c`` (a change of this session) happened at
        ``at``: what the next snapshot will say of it, short of counters."""
        down = went_down(c)
        return replace(
            self,
            state=c.new,
            diag=c.diag,
            remote_diag=c.remote_diag,
            since=at,
            last_down_diag=c.diag if down else self.last_down_diag,
            last_down_at=at if down else self.last_down_at,
        )


class BfdSpeaker:
    def __init__(
        self,
        *,
        netns: str | None = None,
        on_change: Callable[[BfdChange], None] | None = None,
        rng: random.Random | None = None,
        ports: tuple[int, int] = (SINGLE_HOP_PORT, MULTIHOP_PORT),
    ) -> None:
        self.netns = netns
        self.on_change = on_change or (lambda c: None)
        self.rng = rng or random.Random()
        self.ports = ports
        self._drops: Counter[Reason] = Counter()
        self._sessions: dict[tuple[IPAddress, bool], _Live] = {}
        self._by_disc: dict[int, _Live] = {}
        self._by_source: dict[tuple[str, bool], _Live] = {}
        self._decoded: dict[bytes, ControlPacket] = {}  # decode is pure; peers repeat
        self._receivers: list[socket.socket] = []
        self._engine: Engine | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def drops(self) -> Counter[Reason]:
        """Packets dropped, by reason."""
        out = self._drops.copy()
        if self._engine is not None and (full := self._engine.overflow()):
            out[Reason.QUEUE_FULL] = full
        return out

    # ---- lifecycle ----

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()

        def open_all() -> list[tuple[socket.socket, bool]]:
            out: list[tuple[socket.socket, bool]] = []
            for family in (socket.AF_INET, socket.AF_INET6):
                for port, multihop in ((self.ports[0], False), (self.ports[1], True)):
                    try:
                        out.append((open_receiver(family, port), multihop))
                    except OSError as e:
                        if family == socket.AF_INET6 and e.errno in (97, 99):
                            continue  # no IPv6 in this namespace
                        for s, _ in out:
                            close_quietly(s)
                        raise
            return out

        opened = await asyncio.to_thread(in_netns, self.netns, open_all)
        self._receivers = [s for s, _ in opened]
        engine = self._engine = Engine()
        for s, multihop in opened:
            engine.add_receiver(s, multihop)
        engine.start()
        self._loop.add_reader(engine.fileno(), self._on_events)

    async def stop(self) -> None:
        self.set_sessions(())
        if self._engine is not None:
            if self._loop is not None:
                self._loop.remove_reader(self._engine.fileno())
            self._engine.close()
            self._engine = None
        for s in self._receivers:
            close_quietly(s)
        self._receivers.clear()

    # ---- desired sessions ----

    def set_sessions(self, specs: Iterable[PeerSpec]) -> None:
        want = {s.key: s for s in specs}
        for key in set(self._sessions) - set(want):
            self._remove(self._sessions[key])
        new = [s for k, s in want.items() if k not in self._sessions]
        for key, spec in want.items():
            live = self._sessions.get(key)
            if live is not None and live.spec != spec:
                self._change(live, spec)
        if new:
            socks = in_netns(
                self.netns, lambda: [open_sender(s.local, family_of(s.peer)) for s in new]
            )
            for spec, sock in zip(new, socks, strict=True):
                self._add(spec, sock)

    def _now(self) -> float:
        assert self._loop is not None, "start() first"
        return self._loop.time()

    def _running_engine(self) -> Engine:
        assert self._engine is not None, "start() first"
        return self._engine

    def _add(self, spec: PeerSpec, sock: socket.socket) -> None:
        disc = self.rng.randrange(1, 0xFFFFFFFF)
        while disc in self._by_disc:
            disc = self.rng.randrange(1, 0xFFFFFFFF)
        family = family_of(spec.peer)
        packed = socket.inet_pton(family, str(spec.peer))
        text = socket.inet_ntop(family, packed)
        dest = (text, self.ports[1] if spec.multihop else self.ports[0])
        route = Route(
            disc,
            sock,
            connect_if_routed(sock, *dest),
            packed,
            dest[1],
            spec.multihop,
            spec.minimum_ttl,
        )
        run = Running(sm.new_session(disc, spec.timers, self._now()), BATCH_S)
        live = _Live(spec, run, route, text, dest)
        self._sessions[spec.key] = live
        self._by_disc[disc] = live
        self._by_source[(text, spec.multihop)] = live
        self._running_engine().put(route, live.run)

    def _remove(self, live: _Live) -> None:
        live.alive = False
        self._sessions.pop(live.spec.key, None)
        self._by_disc.pop(live.route.disc, None)
        self._by_source.pop((live.peer_text, live.spec.multihop), None)
        self._running_engine().drop(live.route.disc)  # before the socket closes
        close_quietly(live.route.sock)

    def _change(self, live: _Live, spec: PeerSpec) -> None:
        if spec.local != live.spec.local:
            # a new source address is a new session for the peer
            self._remove(live)
            sock = in_netns(self.netns, lambda: open_sender(spec.local, family_of(spec.peer)))
            self._add(spec, sock)
            return
        self._hold(live)
        live.spec = spec
        live.route = replace(live.route, minimum_ttl=spec.minimum_ttl)
        self._step(live, live.run.step(sm.reconfigure, spec.timers, self._now()))

    # ---- what the engine hands over ----

    def _hold(self, live: _Live) -> float | None:
        """The session back from the engine, with the times it kept; when
        the engine last heard the peer."""
        t = self._running_engine().hold(live.route.disc)
        if t is None:
            return None
        live.run.next_tx, live.run.detect_at = t.next_tx, t.detect_at
        return t.last_quiet

    def _step(self, live: _Live, step: sm.Step) -> None:
        """What a transition of ``live.run`` (held) says to do; then the
        session goes back to the engine."""
        for p in step.send:
            self._send(live, encode(p))
        if step.change is not None:
            c = step.change
            live.since = time.time()
            change = BfdChange(
                live.spec.peer, live.spec.multihop, c.old, c.new, c.diag, step.session.remote_diag
            )
            if went_down(change):
                live.last_down_diag, live.last_down_at = c.diag, live.since
            log.info("BFD %s: %s -> %s (%d)", live.spec.peer, c.old.name, c.new.name, c.diag)
            try:
                self.on_change(change)
            except Exception:  # the sessions run on whatever a user does with it
                log.exception("BFD change handler failed on %s", change)
        if live.alive:
            self._running_engine().put(live.route, live.run)

    def _send(self, live: _Live, data: bytes) -> None:
        # A connected socket reports an earlier ICMP error on the next send,
        # which then did not go out: that one is worth a second try.
        route = live.route
        for _ in range(2 if route.connected else 1):
            try:
                if route.connected:
                    route.sock.send(data)
                else:
                    route.sock.sendto(data, live.dest)
                live.sent += 1
                return
            except OSError as e:  # no route, a full buffer: the timers cope
                log.debug("BFD send to %s: %s", live.spec.peer, e)
        live.send_errors += 1

    def _on_events(self) -> None:
        engine = self._running_engine()
        engine.clear()
        for event in engine.take():
            if isinstance(event, Packet):
                self._on_datagram(event)
                continue
            live = self._by_disc.get(event.disc)
            if live is None:
                continue  # removed since
            self._hold(live)
            periodic, step = live.run.tick(self._now(), self.rng.random())
            if periodic is not None:
                self._send(live, periodic)
            if step is not None:
                self._step(live, step)
            else:
                engine.put(live.route, live.run)

    def _on_datagram(self, pkt: Packet) -> None:
        data, ttl, src, multihop = pkt.data, pkt.ttl, pkt.source, pkt.multihop
        if not multihop and ttl != TTL:
            self._drops[Reason.BAD_TTL] += 1  # RFC 5881 §5: GTSM
            return
        p = self._decoded.get(data)
        if p is None:
            try:
                p = decode(data)
            except Malformed as e:
                self._drops[e.reason] += 1
                return
            if len(self._decoded) >= DECODED_MAX:
                self._decoded.clear()
            self._decoded[data] = p
        if p.your_disc:
            live = self._by_disc.get(p.your_disc)
        else:
            live = self._by_source.get((src, multihop))
        if live is None or live.peer_text != src or live.spec.multihop != multihop:
            self._drops[Reason.NO_SESSION] += 1
            return
        if multihop and (ttl is None or ttl < live.spec.minimum_ttl):
            self._drops[Reason.BAD_TTL] += 1
            return
        live.received += 1
        # The engine went on taking quiet payloads while this packet waited
        # in its queue: the detection time runs from the latest of them,
        # never back to when this one came.
        heard = self._hold(live)
        at = pkt.at if heard is None else max(pkt.at, heard)
        self._step(live, live.run.receive(data, p, at))

    # ---- what operators see ----

    def status(self) -> list[SessionStatus]:
        out = []
        engine = self._engine
        for live in self._sessions.values():
            s = live.run.value()
            c = engine.counters(live.route.disc) if engine is not None else None
            out.append(
                SessionStatus(
                    peer=live.spec.peer,
                    multihop=live.spec.multihop,
                    state=s.state,
                    diag=s.diag,
                    remote_diag=s.remote_diag,
                    since=live.since,
                    tx_interval_ms=sm.tx_interval_us(s) / 1000,
                    detect_time_ms=sm.detection_time_us(s) / 1000,
                    remote_cpi=s.remote_cpi,
                    sent=live.sent + (c.sent if c else 0),
                    received=live.received + (c.received if c else 0),
                    last_down_diag=live.last_down_diag,
                    last_down_at=live.last_down_at,
                )
            )
        return out

    def state_of(self, peer: IPAddress, multihop: bool = False) -> State | None:
        live = self._sessions.get((peer, multihop))
        return live.run.value().state if live is not None else None
