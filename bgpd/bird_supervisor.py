"""One BIRD process for the reflector role: its configuration file is only
ever replaced by one that ``bird -p -c`` accepted, and applied with
``configure`` on the control socket (BIRD restarts only the protocols whose
text changed). The process is started, or adopted when a BIRD from an
earlier run of ours still runs on the same files (a crashed supervisor must
not reset every session), watched by PID (pidfd) and restarted with backoff."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bgpd.bird_ctl import BirdCtlError, bird_command
from bgpd.private_file import write_private

log = logging.getLogger(__name__)

BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0
STABLE_S = 60.0  # running this long resets the backoff


class BirdConfigRejected(ValueError):
    """``bird -p`` refused a rendered configuration; the message is BIRD's."""


@dataclass(frozen=True)
class BirdPaths:
    workdir: Path

    @property
    def config(self) -> Path:
        return self.workdir / "bird.conf"

    @property
    def candidate(self) -> Path:
        return self.workdir / "bird.conf.candidate"

    @property
    def socket(self) -> Path:
        return self.workdir / "bird.ctl"

    @property
    def pidfile(self) -> Path:
        return self.workdir / "bird.pid"

    @property
    def output(self) -> Path:
        return self.workdir / "bird.out"


def validate_config(text: str, candidate: Path, bird: str = "bird") -> None:
    """Raise BirdConfigRejected unless BIRD's own parser accepts ``text``."""
    write_private(candidate, text)
    p = subprocess.run(
        [bird, "-p", "-c", str(candidate)], capture_output=True, text=True, timeout=30
    )
    if p.returncode != 0:
        msg = (p.stderr.strip() or p.stdout.strip()).replace(str(candidate), "config")
        raise BirdConfigRejected(f"BIRD refuses the configuration: {msg}")


def is_our_bird(pid: int, config: Path) -> bool:
    """True when ``pid`` is a BIRD started on ``config`` (PIDs get reused)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return bool(argv) and Path(argv[0].decode()).name == "bird" and str(config).encode() in argv


@dataclass
class BirdSupervisor:
    paths: BirdPaths
    bird: str = "bird"
    wrap: Sequence[str] = ()  # e.g. ("ip", "netns", "exec", NS): BIRD's network namespace
    pid: int | None = None
    restarts: int = 0
    started_at: float = 0.0
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _running: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    @property
    def running(self) -> bool:
        return self._running.is_set()

    def install(self, text: str) -> bool:
        """Validate, then replace the configuration file; False when it
        already says ``text``. Raises BirdConfigRejected (file untouched)."""
        cfg = self.paths.config
        if cfg.exists() and cfg.read_text() == text:
            return False
        validate_config(text, self.paths.candidate, self.bird)
        os.replace(self.paths.candidate, cfg)
        return True

    async def configure(self) -> None:
        """Make the running BIRD read its configuration file again."""
        reply = await bird_command(str(self.paths.socket), "configure", limit_s=30)
        # 0003 reconfigured, 0004 in progress, 0005 queued, 0019 nothing to do
        if reply.code not in ("0003", "0004", "0005", "0019"):
            raise BirdCtlError(f"configure: {reply.text.strip()}")

    # ---- the process --------------------------------------------------------

    def _adoptable(self) -> int | None:
        try:
            pid = int(self.paths.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if is_our_bird(pid, self.paths.config) else None

    async def start(self) -> None:
        """Adopt our BIRD of an earlier run, or start one; return when its
        control socket answers."""
        self.paths.workdir.mkdir(parents=True, exist_ok=True)
        pid = self._adoptable()
        if pid is not None:
            self.pid, self._proc = pid, None
            log.info("adopting BIRD pid %d (still running from an earlier run)", pid)
        else:
            self._spawn()
            log.info("started BIRD pid %d", self.pid)
        self.started_at = time.monotonic()
        await self._wait_socket(10.0)
        self._running.set()

    def _spawn(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.paths.socket.unlink()
        argv = [
            *self.wrap,
            self.bird,
            "-f",
            "-c",
            str(self.paths.config),
            "-s",
            str(self.paths.socket),
            "-P",
            str(self.paths.pidfile),
        ]
        with open(self.paths.output, "ab") as out:
            # own session: a signal to our process group is not BIRD's
            self._proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.pid = self._proc.pid

    async def _wait_socket(self, limit_s: float) -> None:
        deadline = time.monotonic() + limit_s
        while True:
            try:
                await bird_command(str(self.paths.socket), "show status", limit_s=2)
                return
            except BirdCtlError:
                if time.monotonic() > deadline or not self._alive():
                    raise
                await asyncio.sleep(0.05)

    def _alive(self) -> bool:
        if self._proc is not None:
            return self._proc.poll() is None
        return self.pid is not None and is_our_bird(self.pid, self.paths.config)

    async def _wait_exit(self) -> None:
        assert self.pid is not None
        try:
            fd = os.pidfd_open(self.pid)
        except ProcessLookupError:
            return
        loop = asyncio.get_running_loop()
        gone = loop.create_future()

        def exited() -> None:
            if not gone.done():
                gone.set_result(None)

        loop.add_reader(fd, exited)
        try:
            await gone
        finally:
            loop.remove_reader(fd)
            os.close(fd)
            if self._proc is not None:
                self._proc.wait()

    async def supervise(self) -> None:
        """Run forever: when BIRD exits, start it again after a backoff that
        doubles while it keeps failing."""
        failures = 0
        while True:
            if self.pid is not None:
                await self._wait_exit()
            self._running.clear()
            code = self._proc.returncode if self._proc is not None else None
            ran = time.monotonic() - self.started_at
            failures = 0 if ran > STABLE_S else failures + 1
            delay = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** max(0, failures - 1))
            log.warning("BIRD pid %s exited (%s) after %.0f s; restarting", self.pid, code, ran)
            await asyncio.sleep(delay)
            self.restarts += 1
            try:
                await self.start()
            except (BirdCtlError, OSError) as e:
                log.warning("BIRD did not come back: %s", e)
                self.started_at = time.monotonic() - ran  # count as a failure
                if self._proc is None:
                    self.pid = None

    async def stop(self, grace_s: float = 5.0) -> None:
        """End BIRD (SIGTERM, then SIGKILL)."""
        self._running.clear()
        if self.pid is None or not self._alive():
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)
        try:
            async with asyncio.timeout(grace_s):
                await self._wait_exit()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            await self._wait_exit()
