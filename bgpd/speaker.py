"""The BGP speaker the node owns: supervises ``exabgp server`` as a child,
serves the unix socket bgpd.relay connects to, drains and decodes everything
ExaBGP says, and keeps ExaBGP's announcements equal to the desired set with
flow control (at most ``max_in_flight`` commands awaiting ``done``/``error``).

Decisions are pure functions (``plan_commands``, ``decide_restart_delay``,
``decide_refresh``); ``Speaker`` only moves bytes and processes.

Lifecycle facts it relies on (see /work/shared/notes/exabgp.md):
- ExaBGP keeps no RIB: a new ExaBGP process knows no announcements, so
  ``announced`` is forgotten whenever the speaker starts a new one.
- manual-eor: after a peer comes up the speaker re-applies the desired set
  and then sends End-of-RIB to that peer (``auto_eor``), so a graceful-restart
  peer replaces its stale routes without a flap.
- After the node (or the relay) reconnects to a running ExaBGP, learned
  routes are recovered by asking every established peer for a route refresh.
- ExaBGP 5.0.15 drops a reload (SIGUSR1 or the API's ``reload``) that
  finds updates still queued for a peer: ``Reactor.run`` clears the signal,
  then goes on without reloading while ``_pending_adjribout()``. So every
  reload is checked: its peers are read back (``show neighbor summary``)
  until they are the config's (``decide_reload_missed``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from netaddr import AddrFormatError, IPAddress, IPNetwork

from bgpd.codec import BULK_CHUNK, decode_line, encode_batches, encode_command
from bgpd.exabgp_config import ExabgpConfig, render, render_env
from bgpd.model import (
    AckEvent,
    Announce,
    Command,
    Event,
    ExabgpNotice,
    MalformedLine,
    RouteRefresh,
    SendEor,
    SessionState,
    StateEvent,
    Withdraw,
)
from bgpd.private_file import write_private

log = logging.getLogger("bgpd.speaker")

MAX_IN_FLIGHT = 200
STABLE_AFTER_S = 60.0  # an ExaBGP that lived this long resets the backoff
RELAY_MARK = b'{"relay"'
RELAY = Path(__file__).with_name("relay.py")
# A reload is checked this long after it was asked for, then again after
# twice as long while ExaBGP runs another peer set, up to the cap.
RELOAD_CHECK_S = 0.2
RELOAD_CHECK_CAP_S = 5.0


# ---- pure decisions ------------------------------------------------------------


def decide_restart_delay(failures: int, base: float = 0.5, cap: float = 30.0) -> float:
    """Seconds to wait before starting ExaBGP again after ``failures``
    consecutive early deaths: 0 for the first start, then exponential."""
    if failures <= 0:
        return 0.0
    return float(min(cap, base * (2 ** min(failures - 1, 30))))


def plan_commands(
    desired: Mapping[IPNetwork, Announce], announced: Mapping[IPNetwork, Announce]
) -> list[Command]:
    """What to tell ExaBGP so that what it announces becomes ``desired``:
    withdrawals first (a prefix moving to another neighbour scope is
    withdrawn and announced again), then new or changed announcements."""
    out: list[Command] = []
    for p, a in announced.items():
        d = desired.get(p)
        if d is None or d.neighbor != a.neighbor:
            out.append(Withdraw(p, a.neighbor))
    for p, d in desired.items():
        if announced.get(p) != d:
            out.append(d)
    return out


def decide_refresh(
    *,
    fresh_process: bool,
    first_connection: bool,
    dropped: int,
    established: Mapping[IPAddress, Sequence[str]],
) -> list[RouteRefresh]:
    """Route refreshes (one per established peer and family) to send after
    the relay connected. A freshly started ExaBGP whose first relay
    connection lost nothing tells us everything as its sessions come up; any
    other connection may have missed updates."""
    if fresh_process and first_connection and dropped == 0:
        return []
    return [RouteRefresh(f, p) for p in sorted(established) for f in established[p]]


def plan_reactivated(old: ExabgpConfig, new: ExabgpConfig) -> frozenset[IPAddress]:
    """Neighbours going from passive to active. ExaBGP 5.0.15 never starts
    them on reload: ``Reactor.active_peers()`` skips a peer whose current
    definition is passive and unconnected, so the new definition is never
    taken up. They must be removed by one reload and added by the next."""
    was_passive = {n.address for n in old.neighbors if n.passive}
    return frozenset(n.address for n in new.neighbors if not n.passive and n.address in was_passive)


def plan_refamilied(old: ExabgpConfig, new: ExabgpConfig) -> frozenset[IPAddress]:
    """Neighbours whose address families change. ExaBGP resets their
    session, and the new one starts without the announcements that the old
    one's families refused (an IPv6 route to an IPv4-only session): they
    need the whole set again once up."""
    before = families_of(old)
    return frozenset(a for a, fams in families_of(new).items() if a in before and before[a] != fams)


def families_of(cfg: ExabgpConfig) -> dict[IPAddress, tuple[str, ...]]:
    """The address families configured per neighbour, as ExaBGP names them."""
    return {
        n.address: tuple(f for f, on in (("ipv4 unicast", n.ipv4), ("ipv6 unicast", n.ipv6)) if on)
        for n in cfg.neighbors
    }


def parse_neighbor_summary(lines: Sequence[str]) -> frozenset[IPAddress]:
    """The peers ExaBGP runs, from its text answer to ``show neighbor
    summary``: a header, then a line a peer that starts with its address."""
    peers: set[IPAddress] = set()
    for line in lines:
        words = line.split(None, 1)
        if words and words[0] != "Peer":
            with contextlib.suppress(AddrFormatError, ValueError, TypeError):
                peers.add(IPAddress(words[0]))
    return frozenset(peers)


def decide_reload_missed(cfg: ExabgpConfig, running: frozenset[IPAddress]) -> bool:
    """Whether ExaBGP runs another peer set than ``cfg``'s: a reload it
    dropped (or has yet to make), to be asked for again."""
    return running != frozenset(n.address for n in cfg.neighbors)


# ---- the speaker ---------------------------------------------------------------


@dataclass(frozen=True)
class SpeakerSettings:
    workdir: Path  # config, socket, pid file and ExaBGP's log live here
    exabgp: tuple[str, ...] = (str(Path(sys.executable).parent / "exabgp"),)
    python: str = sys.executable
    wrap: tuple[str, ...] = ()  # e.g. ("ip", "netns", "exec", NAME) in tests and the lab
    max_in_flight: int = MAX_IN_FLIGHT
    # announcements with equal attributes share "announce attributes ... nlri"
    # lines of this many prefixes; 1 sends one line per route
    bulk_chunk: int = BULK_CHUNK
    auto_eor: bool = True
    restart_base_s: float = 0.5
    restart_cap_s: float = 30.0
    log_level: str = "INFO"
    # how a changed peer set is applied; see bgpd/README-exabgp.md for what
    # ExaBGP 5.0.15 does on reload
    reload_with_signal: bool = True


@dataclass
class SpeakerStats:
    exabgp_starts: int = 0
    relay_connections: int = 0
    acks_error: int = 0
    malformed: int = 0
    max_in_flight_seen: int = 0


@dataclass
class _Waiting:
    """A command sent, awaiting its ack; ``text`` gathers the plain-text
    lines ExaBGP answers it with before the ack (None: it has none)."""

    fut: asyncio.Future[AckEvent]
    text: list[str] | None = None


@dataclass
class _Conn:
    writer: asyncio.StreamWriter
    pending: collections.deque[_Waiting] = field(default_factory=collections.deque)
    synced: bool = False


EventCallback = Callable[[Event], None]


class Speaker:
    def __init__(
        self, cfg: ExabgpConfig, settings: SpeakerSettings, on_event: EventCallback | None = None
    ) -> None:
        self.settings = settings
        self.on_event = on_event or (lambda e: None)
        self.stats = SpeakerStats()
        self.peer_state: dict[IPAddress, SessionState] = {}
        self.announced: dict[IPNetwork, Announce] = {}
        self.desired: dict[IPNetwork, Announce] = {}
        self.cfg = self._with_relay(cfg)
        self._known_peers = {n.address for n in cfg.neighbors}
        self.proc: subprocess.Popen[bytes] | None = None
        self.exabgp_pid: int | None = None
        self._conn: _Conn | None = None
        self._connected = asyncio.Event()
        self._slots = asyncio.Semaphore(settings.max_in_flight)
        self._in_flight = 0
        self._dirty = asyncio.Event()
        self._eor_due: set[IPAddress] = set()
        # peers added by a reload: ExaBGP does not give them the routes it was
        # told before they existed, so they get per-neighbour copies once up
        self._needs_full: set[IPAddress] = set()
        self._full_due: set[IPAddress] = set()
        self._fresh_process = False
        self._connections_this_process = 0
        self._tasks: list[asyncio.Task[None]] = []
        # no End-of-RIB before the user said what to announce: an early one
        # would make graceful-restart peers flush our stale routes
        self._desired_given = False
        self._handlers: set[asyncio.Task[object]] = set()
        self._background: set[asyncio.Task[list[AckEvent]]] = set()
        self._server: asyncio.AbstractServer | None = None
        self._stopping = False
        self._restart_requested = False
        self._synced_waiters: list[asyncio.Future[None]] = []
        self._reload_due = False  # config rewritten before ExaBGP could take a signal
        self._reload_check: asyncio.Task[None] | None = None

    # ---- paths ----

    @property
    def socket_path(self) -> Path:
        return self.settings.workdir / "exabgp.sock"

    @property
    def conf_path(self) -> Path:
        return self.settings.workdir / "exabgp.conf"

    @property
    def log_path(self) -> Path:
        return self.settings.workdir / "exabgp.log"

    def _write_conf(self, cfg: ExabgpConfig) -> None:
        """Replace the config file whole: ExaBGP reading a half-written one
        (a reload racing the write) fails to load it, and its next good
        load crashes sessions that were left unchanged (5.0.15). Mode 0600:
        it holds the TCP-MD5 passwords."""
        write_private(self.conf_path, render(cfg))

    def _with_relay(self, cfg: ExabgpConfig) -> ExabgpConfig:
        # by path, without site: the relay needs only the standard library
        # and lives as long as ExaBGP (~10 MB so, ~21 MB through the venv)
        run = (self.settings.python, "-S", "-I", str(RELAY), "--socket", str(self.socket_path))
        return replace(cfg, api_run=run)

    # ---- lifecycle ----

    async def start(self) -> None:
        self.settings.workdir.mkdir(parents=True, exist_ok=True)
        self._write_conf(self.cfg)
        # before serving the socket: the old ExaBGP's relay would connect to it
        await asyncio.to_thread(self._end_previous_exabgp)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        self._server = await asyncio.start_unix_server(
            self._on_relay, str(self.socket_path), limit=64 * 1024 * 1024
        )
        self._tasks = [
            asyncio.create_task(self._supervise(), name="exabgp-supervisor"),
            asyncio.create_task(self._reconcile_loop(), name="exabgp-reconcile"),
        ]

    async def stop(self, *, terminate_exabgp: bool = True) -> None:
        self._stopping = True
        tasks = [*self._tasks, *self._background]
        if self._reload_check is not None:
            tasks.append(self._reload_check)
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        if terminate_exabgp:
            await self._terminate_exabgp()
            if self._handlers:
                # its last words (the shutdown notice) are still in the relay:
                # the relay ends, and closes the socket, once ExaBGP is gone
                await asyncio.wait(list(self._handlers), timeout=2)
        if self._conn is not None:
            self._conn_lost(self._conn)
        for h in list(self._handlers):
            h.cancel()
        for h in list(self._handlers):
            with contextlib.suppress(asyncio.CancelledError):
                await h
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await self._server.wait_closed()

    async def _terminate_exabgp(self) -> None:
        p = self.proc
        if p is None or p.poll() is not None:
            return
        p.terminate()
        try:
            await asyncio.to_thread(p.wait, 10)
        except subprocess.TimeoutExpired:
            p.kill()
            await asyncio.to_thread(p.wait)

    def _spawn(self) -> subprocess.Popen[bytes]:
        env = render_env(self.cfg, log_level=self.settings.log_level, base=os.environ)
        logf = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        try:
            p = subprocess.Popen(
                [*self.settings.wrap, *self.settings.exabgp, "server", str(self.conf_path)],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C to the node is not a Ctrl-C to ExaBGP
            )
        finally:
            logf.close()
        return p

    @property
    def pid_path(self) -> Path:
        return self.settings.workdir / "exabgp.pid"

    def _end_previous_exabgp(self) -> None:
        """An ExaBGP left behind by a previous node process (kill -9) would
        fight the new one over every session: end it, by its recorded PID,
        only if that PID still runs ExaBGP on our config file."""
        try:
            pid = int(self.pid_path.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return
        if str(self.conf_path).encode() not in cmdline:
            return
        log.warning("ending ExaBGP pid %d left by a previous run", pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
            for _ in range(100):
                time.sleep(0.05)
                os.kill(pid, 0)
            os.kill(pid, signal.SIGKILL)

    async def _supervise(self) -> None:
        failures = 0
        while not self._stopping:
            delay = decide_restart_delay(
                failures, self.settings.restart_base_s, self.settings.restart_cap_s
            )
            if delay:
                log.warning("ExaBGP: restarting in %.1f s (%d early exits)", delay, failures)
                await asyncio.sleep(delay)
            self._write_conf(self.cfg)
            self.proc = self._spawn()
            self.exabgp_pid = self.proc.pid
            self.pid_path.write_text(f"{self.proc.pid}\n")
            self.stats.exabgp_starts += 1
            self._fresh_process = True
            self._connections_this_process = 0
            self._reload_due = False  # it reads the file just written
            self.announced.clear()  # a new ExaBGP knows none of our routes
            self._needs_full.clear()
            self.peer_state.clear()
            started = time.monotonic()
            log.info("ExaBGP started, pid %d", self.proc.pid)
            rc = await asyncio.to_thread(self.proc.wait)
            lived = time.monotonic() - started
            if self._stopping:
                return
            log.warning("ExaBGP pid %d exited with %s after %.1f s", self.proc.pid, rc, lived)
            for peer, st in list(self.peer_state.items()):
                if st is not SessionState.DOWN:
                    self.peer_state[peer] = SessionState.DOWN
                    self.on_event(StateEvent(peer, None, SessionState.DOWN, "ExaBGP exited"))
            if self._restart_requested:
                self._restart_requested = False
                failures = 0
            else:
                failures = 1 if lived >= STABLE_AFTER_S else failures + 1

    async def apply_config(self, cfg: ExabgpConfig) -> None:
        """Apply a changed peer set. With ``reload_with_signal`` ExaBGP is
        told to re-read its config (SIGUSR1), which keeps unchanged sessions
        up; otherwise it is restarted."""
        new = self._with_relay(cfg)
        if new == self.cfg:
            return
        woken = plan_reactivated(self.cfg, new)
        refamilied = plan_refamilied(self.cfg, new)
        p = self.proc
        running = p is not None and p.poll() is None
        if running and woken and self.settings.reload_with_signal:
            await self._remove_first(new, woken)
        self.cfg = new
        self._write_conf(self.cfg)
        p = self.proc
        if p is None or p.poll() is not None:
            return  # the supervisor starts it with the new file
        if self.settings.reload_with_signal:
            self._signal_reload(p)
            self._check_reload()
            # removed peers: forget them (ExaBGP closes their sessions)
            keep = {n.address for n in cfg.neighbors}
            self._needs_full |= keep - set(self.peer_state) - self._known_peers
            self._needs_full |= woken & keep
            self._needs_full |= refamilied
            self._known_peers = set(keep)
            for peer in [x for x in self.peer_state if x not in keep]:
                del self.peer_state[peer]
            self._dirty.set()
        else:
            self._restart_requested = True
            p.terminate()  # the supervisor starts the new one at once

    def _signal_reload(self, p: subprocess.Popen[bytes]) -> None:
        if self._connections_this_process:
            p.send_signal(signal.SIGUSR1)
        else:
            # SIGUSR1 kills a Python that has not installed ExaBGP's
            # handlers yet; its API process connecting says it has
            self._reload_due = True

    def _check_reload(self) -> None:
        """Make sure the reload just asked for happens (see the module
        docstring); one check at a time, which reads the latest config."""
        if self._reload_check is None or self._reload_check.done():
            self._reload_check = asyncio.get_running_loop().create_task(
                self._reload_until_loaded(), name="exabgp-reload-check"
            )

    async def _reload_until_loaded(self) -> None:
        delay = RELOAD_CHECK_S
        while True:
            await asyncio.sleep(delay)
            # (no answer, a lost connection: the ExaBGP that answers next,
            # a restarted one or the same, is checked again)
            running = await self.running_peers()
            if running is not None:
                if not decide_reload_missed(self.cfg, running):
                    return
                log.info(
                    "ExaBGP runs peers %s, the config names %s: reloading again",
                    sorted(map(str, running)),
                    sorted(str(n.address) for n in self.cfg.neighbors),
                )
            p = self.proc
            if p is not None and p.poll() is None:
                self._signal_reload(p)
            delay = min(RELOAD_CHECK_CAP_S, delay * 2)

    async def _remove_first(self, new: ExabgpConfig, woken: frozenset[IPAddress]) -> None:
        """Reload ExaBGP without the ``woken`` neighbours and wait until it
        has dropped them, so the next reload adds them as new peers
        (see ``plan_reactivated``). The wait is a barrier through the API:
        ExaBGP acks ``reload`` when it sets its reload flag; it reloads at
        the top of its next loop, which ends before it reads commands;
        a removed peer is dropped in the loop after that, before
        commands are read (ExaBGP 5.0.15 ``Reactor.run``, ``Peer.run``).
        So a no-op (``#``) sent after the reload's ack is acked only once
        the peers are gone."""
        interim = replace(new, neighbors=tuple(n for n in new.neighbors if n.address not in woken))
        self._write_conf(interim)
        # a bare "#": ExaBGP 5.0.15 runs the first command whose name followed
        # by a space occurs anywhere in the line ("# reload barrier" reloads)
        delay = RELOAD_CHECK_S
        while True:
            for line in ("reload", "#"):
                (ack,) = await self.send_lines([line])
                if not ack.ok:
                    log.warning("ExaBGP did not acknowledge %r (%s)", line, ack.text)
                    return
            # the reload may have been dropped (see the module docstring)
            running = await self.running_peers()
            if running is None:
                return
            if not decide_reload_missed(interim, running):
                break
            await asyncio.sleep(delay)
            delay = min(RELOAD_CHECK_CAP_S, delay * 2)
        for peer in woken:
            self.peer_state.pop(peer, None)
        log.info("re-added %s as active peers", ", ".join(sorted(map(str, woken))))

    # ---- relay connection: the reader ----

    async def _on_relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        old = self._conn
        if old is not None:
            self._conn_lost(old)
            old.writer.close()
        conn = _Conn(writer)
        self._conn = conn
        self._connections_this_process += 1
        self.stats.relay_connections += 1
        p = self.proc
        if self._reload_due and p is not None and p.poll() is None:
            self._reload_due = False
            p.send_signal(signal.SIGUSR1)
            self._check_reload()
        self._connected.set()
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        try:
            while True:
                try:
                    line = await reader.readline()
                except ValueError:
                    self.stats.malformed += 1
                    log.warning("dropped an over-long line from the relay")
                    continue
                except ConnectionError:
                    break
                if not line:
                    break
                self._on_line(conn, line)
        except asyncio.CancelledError:
            # asyncio (3.11) calls exception() on a finished handler task,
            # which raises for a cancelled one: end normally instead
            pass
        finally:
            if task is not None:
                self._handlers.discard(task)
            if self._conn is conn:
                self._conn_lost(conn)
            writer.close()

    def _on_line(self, conn: _Conn, line: bytes) -> None:
        if line.startswith(RELAY_MARK):
            self._on_relay_synced(conn, line)
            return
        ev = decode_line(line)
        if isinstance(ev, AckEvent):
            if conn.pending:
                self._in_flight -= 1
                self._slots.release()
                fut = conn.pending.popleft().fut
                if not fut.done():
                    fut.set_result(ev)
            return
        head = conn.pending[0] if conn.pending else None
        if (
            head is not None
            and head.text is not None
            and isinstance(ev, MalformedLine)
            and not line.lstrip().startswith(b"{")  # an answer, not a broken event
        ):
            head.text.append(line.decode("utf-8", "replace").rstrip("\r\n"))
            return
        if isinstance(ev, ExabgpNotice):
            log.info("ExaBGP says: %s", ev.text)
        elif isinstance(ev, MalformedLine):
            self.stats.malformed += 1
            log.warning("ExaBGP line not understood (%s): %.200s", ev.reason, ev.line)
        elif isinstance(ev, StateEvent):
            prev = self.peer_state.get(ev.peer)
            self.peer_state[ev.peer] = ev.state
            came_up = ev.state is SessionState.ESTABLISHED and prev is not SessionState.ESTABLISHED
            if came_up and conn.synced and self.settings.auto_eor:
                self._eor_due.add(ev.peer)
                self._dirty.set()
            if came_up and ev.peer in self._needs_full:
                self._full_due.add(ev.peer)
                self._dirty.set()
        self.on_event(ev)

    def _on_relay_synced(self, conn: _Conn, line: bytes) -> None:
        try:
            info = json.loads(line)
            dropped = int(info.get("dropped", 0))
        except (ValueError, TypeError, AttributeError):
            dropped = 0
        conn.synced = True
        established = [p for p, s in self.peer_state.items() if s is SessionState.ESTABLISHED]
        fams = families_of(self.cfg)
        refresh = decide_refresh(
            fresh_process=self._fresh_process,
            first_connection=self._connections_this_process == 1,
            dropped=dropped,
            established={p: fams.get(p, ("ipv4 unicast",)) for p in established},
        )
        if self.settings.auto_eor:
            # sessions that were already up when we connected get our routes
            # and an End-of-RIB too (a restarted node re-announces, then EoR)
            self._eor_due.update(established)
        self._dirty.set()
        if refresh:
            log.info("asking %d peers for a route refresh", len(refresh))
            t = asyncio.get_running_loop().create_task(self.send(refresh))
            self._background.add(t)
            t.add_done_callback(self._background.discard)
        for w in self._synced_waiters:
            if not w.done():
                w.set_result(None)
        self._synced_waiters.clear()

    def _conn_lost(self, conn: _Conn) -> None:
        if self._conn is conn:
            self._conn = None
            self._connected.clear()
        while conn.pending:
            fut = conn.pending.popleft().fut
            self._in_flight -= 1
            self._slots.release()
            if not fut.done():
                fut.set_result(AckEvent(False, "connection lost"))

    # ---- the command sender ----

    async def send_lines(self, lines: Sequence[str]) -> list[AckEvent]:
        """Send API lines with at most ``max_in_flight`` awaiting acks; returns
        the ack of each line, in order (``ok=False, "connection lost"`` for
        lines whose connection went away)."""
        return await self._send_lines(lines, None)

    async def running_peers(self) -> frozenset[IPAddress] | None:
        """The peers ExaBGP runs now (``show neighbor summary``: those of
        the last config it loaded); None if it did not answer."""
        text: list[str] = []
        (ack,) = await self._send_lines(["show neighbor summary"], text)
        if not ack.ok:
            if ack.text != "connection lost":
                log.warning("ExaBGP did not answer show neighbor summary (%s)", ack.text)
            return None
        return parse_neighbor_summary(text)

    async def _send_lines(self, lines: Sequence[str], text: list[str] | None) -> list[AckEvent]:
        futs: list[asyncio.Future[AckEvent]] = []
        loop = asyncio.get_running_loop()
        for i, line in enumerate(lines):
            await self._slots.acquire()
            conn = self._conn
            while conn is None:
                self._slots.release()
                await self._connected.wait()
                await self._slots.acquire()
                conn = self._conn
            fut: asyncio.Future[AckEvent] = loop.create_future()
            conn.pending.append(_Waiting(fut, text))
            self._in_flight += 1
            self.stats.max_in_flight_seen = max(self.stats.max_in_flight_seen, self._in_flight)
            conn.writer.write(line.encode() + b"\n")
            futs.append(fut)
            if i % 64 == 63:
                with contextlib.suppress(ConnectionError):
                    await conn.writer.drain()
        acks = list(await asyncio.gather(*futs))
        for a in acks:
            if not a.ok and a.text != "connection lost":
                self.stats.acks_error += 1
        return acks

    async def send(self, cmds: Sequence[Command]) -> list[AckEvent]:
        return await self.send_lines([encode_command(c) for c in cmds])

    async def send_eor(self, peer: IPAddress | None = None, family: str = "ipv4 unicast") -> bool:
        (ack,) = await self.send([SendEor(family, peer)])
        return ack.ok

    # ---- desired announcements ----

    def set_desired(self, announcements: Mapping[IPNetwork, Announce]) -> None:
        """The complete set of routes to announce; applied in the background."""
        self.desired = dict(announcements)
        self._desired_given = True
        self._dirty.set()

    async def reconcile(self) -> bool:
        """Apply ``desired`` now; True when ExaBGP acknowledged all of it."""
        cmds = plan_commands(self.desired, self.announced)
        if not cmds:
            return True
        if self.settings.bulk_chunk > 1:
            batches = encode_batches(cmds, self.settings.bulk_chunk)
        else:
            batches = [(encode_command(c), (c,)) for c in cmds]
        acks = await self.send_lines([line for line, _ in batches])
        ok = True
        for (_line, carried), a in zip(batches, acks, strict=True):
            if not a.ok:
                ok = False
                continue
            for c in carried:
                if isinstance(c, Withdraw):
                    self.announced.pop(c.prefix, None)
                elif isinstance(c, Announce):
                    self.announced[c.prefix] = c
        return ok

    async def _reconcile_loop(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            if self._conn is None or not self._conn.synced:
                await self._connected.wait()
                if self._conn is None or not self._conn.synced:
                    await asyncio.sleep(0.05)
                    self._dirty.set()
                    continue
            ok = await self.reconcile()
            up = SessionState.ESTABLISHED
            # Taken whole before the first send: a peer that comes up while
            # another gets its copies (a new node's IPv6 session beside its
            # IPv4 one) stays due for the next turn, not cleared unserved.
            full_due, self._full_due = self._full_due, set()
            for p in sorted(x for x in full_due if self.peer_state.get(x) is up):
                copies = [
                    replace(a, neighbor=p) for a in self.announced.values() if a.neighbor is None
                ]
                if all(a.ok for a in await self.send(copies)):
                    self._needs_full.discard(p)
            if not self._desired_given:
                continue  # End-of-RIB waits for the user's first desired set
            due = sorted(p for p in self._eor_due if self.peer_state.get(p) is up)
            self._eor_due.clear()
            if not ok:
                await asyncio.sleep(0.5)
                self._dirty.set()
            fams = families_of(self.cfg)
            for p in due:
                for fam in fams.get(p, ()):
                    if not await self.send_eor(p, fam):
                        log.warning("End-of-RIB (%s) to %s not acknowledged", fam, p)

    async def wait_synced(self) -> None:
        """Until a relay connection has delivered its replay."""
        if self._conn is not None and self._conn.synced:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._synced_waiters.append(fut)
        await fut

    async def withdraw_all(self) -> bool:
        """Withdraw everything announced (a node being removed: with graceful
        restart, peers would otherwise keep its routes for the restart time)."""
        self.desired = {}
        self._desired_given = True
        for _ in range(3):
            if await self.reconcile() and not self.announced:
                return True
        return not self.announced
