"""The node's side of the BFD daemon (``bgpd.bfd.daemon``): connects to the
daemon a previous node process left running, or starts one (in its own
session, so it outlives us) once a first BFD session is wanted (a node whose
peers use no BFD runs no daemon: ~24 MB saved), keeps it told the desired
sessions (sent again on every reconnect), and hands changes and the latest
snapshot to its user.

``stop`` leaves the daemon running (a restart keeps BFD up); ``terminate``
ends it (decommission)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from bgpd.bfd.speaker import BfdChange, PeerSpec, SessionStatus
from bgpd.bfd.wire import MAX_LINE, change_from_json, encode_sessions, status_from_json

log = logging.getLogger("bgpd.bfd.client")


class BfdClient:
    def __init__(
        self,
        workdir: Path,
        *,
        wrap: tuple[str, ...] = (),
        python: str = sys.executable,
        on_change: Callable[[BfdChange], None] | None = None,
        orphan_exit_s: float = 300.0,
    ) -> None:
        self.workdir = workdir
        self.wrap = wrap  # e.g. ("ip", "netns", "exec", NAME): where BFD runs
        self.python = python
        self.on_change = on_change or (lambda c: None)
        self.orphan_exit_s = orphan_exit_s
        self.desired: list[PeerSpec] | None = None  # None: not decided yet
        self.sessions: dict[tuple[object, bool], SessionStatus] = {}
        self.drops: dict[str, int] = {}
        self.daemon_starts = 0
        self.adopted = False  # True when we found a daemon already running
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._wanted = asyncio.Event()  # set by the first non-empty desired set

    @property
    def socket_path(self) -> Path:
        return self.workdir / "bfd.sock"

    @property
    def pid_path(self) -> Path:
        return self.workdir / "bfd.pid"

    async def start(self) -> None:
        """Reach the daemon (adopting the one a previous run left, or
        spawning one) in the background: routing never waits for BFD, and
        the sessions go to the daemon whenever it answers. A daemon slow to
        start (a loaded or emulated host) once held the node's whole start."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._task = asyncio.create_task(self._run(), name="bfd-client")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._writer is not None:
            self._writer.close()

    async def terminate(self) -> None:
        """End the daemon: its sessions go down at the peers."""
        await self.stop()
        pid = self._daemon_pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    def set_sessions(self, specs: Iterable[PeerSpec]) -> None:
        self.desired = sorted(specs, key=lambda s: (s.peer, s.multihop))
        if self.desired:
            self._wanted.set()
        self._push()

    def status(self) -> list[SessionStatus]:
        return list(self.sessions.values())

    # ---- connection ----

    def _push(self) -> None:
        """Tell the daemon the desired set; never before there is one, or
        an adopted daemon would drop the sessions a restart must keep."""
        w = self._writer
        if self.desired is not None and w is not None and not w.is_closing():
            w.write(encode_sessions(self.desired))

    def _daemon_pid(self) -> int | None:
        """The recorded daemon's PID, if that PID still runs our daemon."""
        try:
            pid = int(self.pid_path.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return None
        return pid if str(self.socket_path).encode() in cmdline else None

    def _spawn(self) -> None:
        argv = [*self.wrap, self.python, "-m", "bgpd.bfd.daemon"]
        argv += ["--socket", str(self.socket_path), "--orphan-exit", str(self.orphan_exit_s)]
        with open(self.workdir / "bfd.log", "ab") as logf:
            p = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # outlives the node, by design
            )
        self.pid_path.write_text(f"{p.pid}\n")
        self.daemon_starts += 1
        log.info("BFD daemon started, pid %d", p.pid)
        self._proc = p

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._proc is not None:
            self._proc.poll()  # reap a daemon of ours that died
        try:
            conn = await asyncio.open_unix_connection(str(self.socket_path), limit=MAX_LINE)
            self.adopted = self.adopted or self.daemon_starts == 0
            return conn
        except OSError:
            pass
        if self._daemon_pid() is None:
            # none to adopt: start one only for a session (an empty set has
            # nothing to tell a daemon that is not there)
            await self._wanted.wait()
            self._spawn()
        for _ in range(200):
            await asyncio.sleep(0.05)
            with contextlib.suppress(OSError):
                return await asyncio.open_unix_connection(str(self.socket_path), limit=MAX_LINE)
        raise ConnectionError(f"BFD daemon did not open {self.socket_path}")

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                reader, writer = await self._connect()
            except ConnectionError as e:
                failures += 1
                log.warning("%s; retrying", e)
                await asyncio.sleep(min(5.0, 0.2 * failures))
                continue
            failures = 0
            self._writer = writer
            self._push()
            try:
                while line := await reader.readline():
                    self._on_line(line)
            except (ConnectionError, ValueError) as e:
                log.warning("BFD daemon connection: %s", e)
            finally:
                self._writer = None
                writer.close()
            log.warning("BFD daemon connection lost; reconnecting")
            await asyncio.sleep(0.1)

    def _on_line(self, line: bytes) -> None:
        try:
            msg = json.loads(line)
            if "change" in msg:
                c = change_from_json(msg["change"])
                # the snapshot comes later, once for a burst of changes:
                # until then, what we report must not contradict the change
                key = (c.peer, c.multihop)
                if key in self.sessions:  # in place: a new dict is a new snapshot
                    self.sessions[key] = self.sessions[key].after(c, time.time())
                self.on_change(c)
            elif "snapshot" in msg:
                snap = msg["snapshot"]
                got = [status_from_json(d) for d in snap["sessions"]]
                self.sessions = {(s.peer, s.multihop): s for s in got}
                self.drops = {str(k): int(v) for k, v in dict(snap["drops"]).items()}
        except (ValueError, KeyError, TypeError) as e:
            log.warning("bad line from the BFD daemon (%s): %.120r", e, line)
