"""The BFD speaker: the asyncio edge that runs a set of sessions.

``set_sessions`` is level-triggered: it takes the whole desired set
(``PeerSpec``), starts what is new, stops what is gone and reconfigures
what changed (a live change keeps the session Up; RFC 5880 Poll Sequence).
Everything a session decides comes from ``bgpd.bfd.session``; this module
only moves datagrams, keeps time, demultiplexes received packets (by Your
Discriminator, else by source address) and counts what it drops. A packet
that fails any check is dropped and counted under its reason; it never
raises past the socket callback and never touches a session.

Cost is per wakeup more than per packet, so the speaker batches them:
- one timer for all sessions (``Deadlines``): a periodic packet may leave
  up to ``BATCH_S`` late, or half its jitter range if that is less (the
  session plans it that much early, within the range), so packets due close
  together share a wakeup; a detection time is never late;
- a receive socket that had traffic is read from that timer every
  ``BATCH_S`` until it falls quiet, then handed back to epoll; the kernel's
  receive timestamp keeps the detection time exact, and every socket is
  read before a detection time is declared expired;
- a session's periodic packet is encoded once per session value
  (``bgpd.bfd.running``), and its socket is connected to the peer;
- a received payload equal to the last one that told its session nothing
  new is looked up whole (``_quiet``) and only moves the detection time,
  without decoding or a new session value; any other well-formed payload
  is decoded once (``_decoded``) and goes through the state machine.
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
from bgpd.bfd.deadlines import Deadlines
from bgpd.bfd.packet import ControlPacket, Malformed, Reason, State, decode, encode
from bgpd.bfd.running import Running
from bgpd.bfd.sockets import (
    ANC_SPACE,
    MULTIHOP_PORT,
    SINGLE_HOP_PORT,
    SO_TIMESTAMPNS,
    TIMESPEC,
    TTL,
    TTL_255,
    TTL_CMSG,
    close_quietly,
    connect_if_routed,
    family_of,
    in_netns,
    open_receiver,
    open_sender,
    received_meta,
)

log = logging.getLogger("bgpd.bfd")
MAX_BATCH = 256  # datagrams read from one socket per wakeup
BATCH_S = 0.005  # how late a periodic packet or a read may be, to share a wakeup
DECODED_MAX = 4096  # distinct well-formed packets remembered
STAMP_TRUST_S = 1.0  # a receive time further back than this is a clock step: use now


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


@dataclass(eq=False, slots=True)  # by identity: a key of the deadlines
class _Live:
    spec: PeerSpec
    run: Running
    sock: socket.socket
    peer_text: str  # the peer as recvmsg reports a source address
    dest: tuple[str, int]
    connected: bool
    alive: bool = True
    quiet_rx: bytes | None = None  # its key in BfdSpeaker._quiet
    since: float = field(default_factory=time.time)
    sent: int = 0
    received: int = 0
    send_errors: int = 0
    last_down_diag: int | None = None
    last_down_at: float | None = None


@dataclass(eq=False, slots=True)
class _Receiver:
    sock: socket.socket
    multihop: bool
    polling: bool = False  # read from the timer rather than from epoll

    @property
    def ttl_cmsg(self) -> tuple[int, int]:
        return TTL_CMSG[self.sock.family]


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
        self.drops: Counter[Reason] = Counter()
        self._sessions: dict[tuple[IPAddress, bool], _Live] = {}
        self._by_disc: dict[int, _Live] = {}
        self._by_source: dict[tuple[str, bool], _Live] = {}
        self._decoded: dict[bytes, ControlPacket] = {}  # decode is pure; peers repeat
        self._quiet: dict[bytes, _Live] = {}  # Running.quiet_rx of each session
        self._receivers: list[_Receiver] = []
        self._polling: list[_Receiver] = []
        self._deadlines: Deadlines[_Live] = Deadlines()
        self._timer: asyncio.TimerHandle | None = None
        self._waking = False  # in _wake: it arms the timer once at the end
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
            r = _Receiver(s, multihop)
            self._receivers.append(r)
            self._loop.add_reader(s.fileno(), self._on_readable, r)

    async def stop(self) -> None:
        self.set_sessions(())
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for r in self._receivers:
            if self._loop is not None and not r.polling:
                self._loop.remove_reader(r.sock.fileno())
            close_quietly(r.sock)
        self._receivers.clear()
        self._polling.clear()

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
        family = family_of(spec.peer)
        text = socket.inet_ntop(family, socket.inet_pton(family, str(spec.peer)))
        dest = (text, self.ports[1] if spec.multihop else self.ports[0])
        live = _Live(
            spec,
            Running(sm.new_session(disc, spec.timers, self._now()), BATCH_S),
            sock,
            text,
            dest,
            connect_if_routed(sock, *dest),
        )
        self._sessions[spec.key] = live
        self._by_disc[disc] = live
        self._by_source[(text, spec.multihop)] = live
        self._plan(live)

    def _remove(self, live: _Live) -> None:
        live.alive = False
        self._deadlines.discard(live)
        self._sessions.pop(live.spec.key, None)
        self._by_disc.pop(live.run.value().local_disc, None)
        if live.quiet_rx is not None:
            self._quiet.pop(live.quiet_rx, None)
        self._by_source.pop((live.peer_text, live.spec.multihop), None)
        close_quietly(live.sock)

    def _change(self, live: _Live, spec: PeerSpec) -> None:
        if spec.local != live.spec.local:
            # a new source address is a new session for the peer
            self._remove(live)
            sock = in_netns(self.netns, lambda: open_sender(spec.local, family_of(spec.peer)))
            self._add(spec, sock)
            return
        live.spec = spec
        self._step(live, live.run.step(sm.reconfigure, spec.timers, self._now()))

    # ---- timers and packets ----

    def _step(self, live: _Live, step: sm.Step) -> None:
        """What a transition ``live.run`` has taken says to do."""
        for p in step.send:
            self._send(live, encode(p))
        q = live.run.quiet_rx
        if q != live.quiet_rx:
            if live.quiet_rx is not None:
                self._quiet.pop(live.quiet_rx, None)
            if q is not None and live.alive:
                self._quiet[q] = live
            live.quiet_rx = q
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
            self._plan(live)

    def _plan(self, live: _Live) -> None:
        when = live.run.next_wakeup()
        if when is None or not self._deadlines.set(live, when) or self._waking:
            return
        t = self._timer
        if t is None or when < t.when():
            self._arm()

    def _arm(self) -> None:
        """One timer, at the earliest deadline (or the next read of a busy
        receive socket)."""
        assert self._loop is not None
        when = self._deadlines.earliest()
        if self._polling:
            poll_at = self._loop.time() + BATCH_S
            when = poll_at if when is None else min(when, poll_at)
        t = self._timer
        if t is not None:
            if when is not None and t.when() <= when:
                return  # it fires first; _wake then arms for the rest
            t.cancel()
            self._timer = None
        if when is not None:
            self._timer = self._loop.call_at(when, self._wake)

    def _wake(self) -> None:
        self._timer = None
        now = self._now()
        self._waking = True
        random, deadlines = self.rng.random, self._deadlines
        try:
            self._poll(now)
            drained = False
            for live in deadlines.pop_due(now + BATCH_S):
                if not live.alive:
                    continue
                run = live.run
                if not drained and run.detect_at is not None and run.detect_at <= now:
                    # a packet still in a socket may save the session
                    drained = True
                    for r in self._receivers:
                        self._drain(r, now)
                    if not live.alive:
                        continue
                periodic, step = run.tick(now, random())
                if step is not None:
                    self._step(live, step)
                    continue
                if periodic is not None:
                    self._send(live, periodic)
                when = run.next_wakeup()  # _plan, which arms no timer while waking
                if when is not None:
                    deadlines.set(live, when)
        finally:
            self._waking = False
            self._arm()

    def _send(self, live: _Live, data: bytes) -> None:
        # A connected socket reports an earlier ICMP error on the next send,
        # which then did not go out: that one is worth a second try.
        for _ in range(2 if live.connected else 1):
            try:
                if live.connected:
                    live.sock.send(data)
                else:
                    live.sock.sendto(data, live.dest)
                live.sent += 1
                return
            except OSError as e:  # no route, a full buffer: the timers cope
                log.debug("BFD send to %s: %s", live.spec.peer, e)
        live.send_errors += 1

    # ---- receiving ----

    def _on_readable(self, r: _Receiver) -> None:
        assert self._loop is not None
        if self._drain(r, self._now()) and not r.polling:
            # traffic: read it from the timer until it falls quiet
            self._loop.remove_reader(r.sock.fileno())
            r.polling = True
            self._polling.append(r)
            self._arm()

    def _poll(self, now: float) -> None:
        if not self._polling:
            return
        assert self._loop is not None
        busy = []
        for r in self._polling:
            if self._drain(r, now):
                busy.append(r)
            else:
                r.polling = False
                self._loop.add_reader(r.sock.fileno(), self._on_readable, r)
        self._polling = busy

    def _drain(self, r: _Receiver, now: float) -> int:
        offset = time.time() - now  # from the kernel's receive time to the loop's clock
        earliest = now - STAMP_TRUST_S
        recv, multihop, quiet = r.sock.recvmsg, r.multihop, self._quiet
        ttl_level, ttl_type = r.ttl_cmsg
        n = 0
        while n < MAX_BATCH:
            try:
                data, anc, _flags, addr = recv(512, ANC_SPACE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:  # ICMP errors surface here; nothing to read
                log.debug("BFD receive: %s", e)
                break
            n += 1
            live = quiet.get(data)
            if live is not None and not multihop and len(anc) == 2 and addr[0] == live.peer_text:
                # Nearly every packet: what follows, for a single-hop packet
                # with TTL 255, in the order the kernel writes the ancillary
                # data (the receive time, then the TTL).
                (l0, t0, d0), (l1, t1, d1) = anc
                if (
                    t0 == SO_TIMESTAMPNS
                    and l0 == socket.SOL_SOCKET
                    and t1 == ttl_type
                    and l1 == ttl_level
                    and d1 == TTL_255
                    and len(d0) == TIMESPEC.size
                    and not live.spec.multihop
                ):
                    sec, nsec = TIMESPEC.unpack(d0)
                    at = sec + nsec * 1e-9 - offset
                    live.received += 1
                    live.run.heard_quiet(now if at > now else earliest if at < earliest else at)
                    continue
            ttl, stamp = received_meta(anc)
            at = now if stamp is None else min(now, max(stamp - offset, earliest))
            live = quiet.get(data)
            if (
                live is not None
                and addr[0] == live.peer_text
                and live.spec.multihop == multihop
                and (ttl == TTL or (multihop and ttl is not None and ttl >= live.spec.minimum_ttl))
            ):
                live.received += 1
                live.run.heard_quiet(at)
                continue
            self._on_datagram(data, ttl, addr[0], multihop, at)
        return n

    def _on_datagram(
        self, data: bytes, ttl: int | None, src: str, multihop: bool, at: float
    ) -> None:
        if not multihop and ttl != TTL:
            self.drops[Reason.BAD_TTL] += 1  # RFC 5881 §5: GTSM
            return
        p = self._decoded.get(data)
        if p is None:
            try:
                p = decode(data)
            except Malformed as e:
                self.drops[e.reason] += 1
                return
            if len(self._decoded) >= DECODED_MAX:
                self._decoded.clear()
            self._decoded[data] = p
        if "%" in src:
            src = src.split("%", 1)[0]  # a link-local source's scope
        if p.your_disc:
            live = self._by_disc.get(p.your_disc)
        else:
            live = self._by_source.get((src, multihop))
        if live is None or live.peer_text != src or live.spec.multihop != multihop:
            self.drops[Reason.NO_SESSION] += 1
            return
        if multihop and (ttl is None or ttl < live.spec.minimum_ttl):
            self.drops[Reason.BAD_TTL] += 1
            return
        live.received += 1
        self._step(live, live.run.receive(data, p, at))

    # ---- what operators see ----

    def status(self) -> list[SessionStatus]:
        out = []
        for live in self._sessions.values():
            s = live.run.value()
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
        return live.run.value().state if live is not None else None
