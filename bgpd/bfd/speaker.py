"""The BFD speaker: the asyncio edge that runs a set of sessions.

``set_sessions`` is level-triggered: it takes the whole desired set
(``PeerSpec``), starts what is new, stops what is gone and reconfigures
what changed (a live change keeps the session Up; RFC 5880 Poll Sequence).
Everything a session decides comes from ``bgpd.bfd.session``; this module
only moves datagrams, keeps one timer per session, demultiplexes received
packets (by Your Discriminator, else by source address) and counts what it
drops. A packet that fails any check is dropped and counted under its
reason; it never raises past the socket callback and never touches a
session.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from netaddr import IPAddress

from bgpd.bfd import session as sm
from bgpd.bfd.packet import Malformed, Reason, State, decode, encode
from bgpd.bfd.sockets import (
    MULTIHOP_PORT,
    SINGLE_HOP_PORT,
    TTL,
    close_quietly,
    family_of,
    in_netns,
    open_receiver,
    open_sender,
    received_ttl,
)

log = logging.getLogger("bgpd.bfd")
MAX_BATCH = 64  # datagrams read per wakeup before yielding to the loop


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


@dataclass
class _Live:
    spec: PeerSpec
    session: sm.Session
    sock: socket.socket
    timer: asyncio.TimerHandle | None = None
    since: float = field(default_factory=time.time)
    sent: int = 0
    received: int = 0
    send_errors: int = 0
    last_down_diag: int | None = None
    last_down_at: float | None = None


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
        self.drops: Counter[Reason] = Counter()
        self._sessions: dict[tuple[IPAddress, bool], _Live] = {}
        self._by_disc: dict[int, _Live] = {}
        self._receivers: list[socket.socket] = []
        self._loop: asyncio.AbstractEventLoop | None = None

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

        for s, multihop in await asyncio.to_thread(in_netns, self.netns, open_all):
            self._receivers.append(s)
            self._loop.add_reader(s.fileno(), self._on_readable, s, multihop)

    async def stop(self) -> None:
        self.set_sessions(())
        for s in self._receivers:
            if self._loop is not None:
                self._loop.remove_reader(s.fileno())
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

    def _add(self, spec: PeerSpec, sock: socket.socket) -> None:
        disc = self.rng.randrange(1, 0xFFFFFFFF)
        while disc in self._by_disc:
            disc = self.rng.randrange(1, 0xFFFFFFFF)
        live = _Live(spec, sm.new_session(disc, spec.timers, self._now()), sock)
        self._sessions[spec.key] = live
        self._by_disc[disc] = live
        self._schedule(live)

    def _remove(self, live: _Live) -> None:
        if live.timer is not None:
            live.timer.cancel()
        self._sessions.pop(live.spec.key, None)
        self._by_disc.pop(live.session.local_disc, None)
        close_quietly(live.sock)

    def _change(self, live: _Live, spec: PeerSpec) -> None:
        if spec.local != live.spec.local:
            # a new source address is a new session for the peer
            self._remove(live)
            sock = in_netns(self.netns, lambda: open_sender(spec.local, family_of(spec.peer)))
            self._add(spec, sock)
            return
        live.spec = spec
        self._step(live, sm.reconfigure(live.session, spec.timers, self._now()))

    # ---- timers and packets ----

    def _step(self, live: _Live, step: sm.Step) -> None:
        live.session = step.session
        for p in step.send:
            self._send(live, encode(p))
        if step.change is not None:
            c = step.change
            live.since = time.time()
            if c.new in (State.DOWN, State.ADMIN_DOWN) and c.old is State.UP:
                live.last_down_diag, live.last_down_at = c.diag, live.since
            log.info("BFD %s: %s -> %s (%d)", live.spec.peer, c.old.name, c.new.name, c.diag)
            self.on_change(
                BfdChange(
                    live.spec.peer,
                    live.spec.multihop,
                    c.old,
                    c.new,
                    c.diag,
                    live.session.remote_diag,
                )
            )
        if self._sessions.get(live.spec.key) is live:
            self._schedule(live)

    def _schedule(self, live: _Live) -> None:
        when = sm.next_wakeup(live.session)
        t = live.timer
        if t is not None:
            if when is not None and t.when() <= when:
                # it fires first and the tick then finds the real next
                # wakeup: no cancel and re-arm for every packet received
                return
            t.cancel()
            live.timer = None
        if when is not None and self._loop is not None:
            live.timer = self._loop.call_at(when, self._on_timer, live)

    def _on_timer(self, live: _Live) -> None:
        live.timer = None
        self._step(live, sm.tick(live.session, self._now(), self.rng.random()))

    def _send(self, live: _Live, data: bytes) -> None:
        port = self.ports[1] if live.spec.multihop else self.ports[0]
        try:
            live.sock.sendto(data, (str(live.spec.peer), port))
            live.sent += 1
        except OSError as e:  # no route, a full buffer: the timers cope
            live.send_errors += 1
            log.debug("BFD send to %s: %s", live.spec.peer, e)

    def _on_readable(self, sock: socket.socket, multihop: bool) -> None:
        for _ in range(MAX_BATCH):
            try:
                data, anc, _flags, addr = sock.recvmsg(512, 64)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # ICMP errors surface here; nothing to read
                log.debug("BFD receive: %s", e)
                return
            self._on_datagram(data, received_ttl(anc), IPAddress(addr[0].split("%")[0]), multihop)

    def _on_datagram(self, data: bytes, ttl: int | None, src: IPAddress, multihop: bool) -> None:
        if not multihop and ttl != TTL:
            self.drops[Reason.BAD_TTL] += 1  # RFC 5881 §5: GTSM
            return
        try:
            p = decode(data)
        except Malformed as e:
            self.drops[e.reason] += 1
            return
        if src.is_ipv4_mapped():
            src = src.ipv4()
        if p.your_disc:
            live = self._by_disc.get(p.your_disc)
        else:
            live = self._sessions.get((src, multihop))
        if live is None or live.spec.peer != src or live.spec.multihop != multihop:
            self.drops[Reason.NO_SESSION] += 1
            return
        if multihop and (ttl is None or ttl < live.spec.minimum_ttl):
            self.drops[Reason.BAD_TTL] += 1
            return
        live.received += 1
        self._step(live, sm.receive(live.session, p, self._now()))

    # ---- what operators see ----

    def status(self) -> list[SessionStatus]:
        out = []
        for live in self._sessions.values():
            s = live.session
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
                    sent=live.sent,
                    received=live.received,
                    last_down_diag=live.last_down_diag,
                    last_down_at=live.last_down_at,
                )
            )
        return out

    def state_of(self, peer: IPAddress, multihop: bool = False) -> State | None:
        live = self._sessions.get((peer, multihop))
        return live.session.state if live is not None else None
