"""``bench/route_watch.py`` from the bench's side: started in a namespace,
its stamped events gathered by a reader thread, waited for by kind."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from types import TracebackType

from lab.netns import Netns

WATCHER = Path(__file__).resolve().parent / "route_watch.py"


class RouteWatch:
    """Events are ``(kind, monotonic time)``; see ``bench/route_watch.py``."""

    def __init__(
        self, ns: Netns, ifname: str, peer: str, prefix: str, proto: int, count: int
    ) -> None:
        args = [ifname, peer, prefix, str(proto), str(count)]
        self._proc = ns.popen(
            [sys.executable, "-S", "-I", str(WATCHER), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self._events: list[tuple[str, float]] = []
        self._cond = threading.Condition()
        self._ready = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        with self._cond:
            if not self._cond.wait_for(lambda: self._ready or self._proc.poll() is not None, 30):
                raise TimeoutError(f"{ns.name}: the route watcher did not start")
        if not self._ready:
            raise RuntimeError(f"{ns.name}: the route watcher exited ({self._proc.returncode})")

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for raw in self._proc.stdout:
            kind, _, stamp = raw.decode().strip().partition(" ")
            with self._cond:
                if kind == "ready":
                    self._ready = True
                else:
                    self._events.append((kind, float(stamp) if stamp else time.monotonic()))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def _find(self, kinds: tuple[str, ...], after: float) -> tuple[str, float] | None:
        for kind, t in self._events:
            if kind in kinds and t >= after:
                return kind, t
        return None

    def next(self, kind: str, after: float, timeout: float) -> float:
        """The time of the first ``kind`` event at or after ``after``."""
        got = self._wait((kind,), after, timeout)
        return got[1]

    def next_or_lost(self, kind: str, after: float, timeout: float) -> float | None:
        """As ``next``, or None if notifications were lost first."""
        got = self._wait((kind, "lost"), after, timeout)
        return got[1] if got[0] == kind else None

    def first(self, kind: str, after: float, before: float) -> float | None:
        """The first ``kind`` event in [after, before], if any."""
        with self._cond:
            found = self._find((kind,), after)
        return found[1] if found is not None and found[1] <= before else None

    def start_counting(self) -> None:
        """Count the deletes from now on (answered by a ``counting`` event)."""
        assert self._proc.stdin is not None
        t0 = time.monotonic()
        self._proc.stdin.write(b"count\n")
        self._proc.stdin.flush()
        self._wait(("counting",), t0, 30)

    def _wait(self, kinds: tuple[str, ...], after: float, timeout: float) -> tuple[str, float]:
        with self._cond:
            found = self._cond.wait_for(
                lambda: self._find(kinds, after) or self._proc.poll() is not None, timeout
            )
            got = self._find(kinds, after)
        if got is None:
            why = "exited" if found else f"nothing after {timeout:.0f} s"
            raise TimeoutError(f"route watcher: no {'/'.join(kinds)} event ({why})")
        return got

    def __enter__(self) -> RouteWatch:
        return self

    def __exit__(
        self,
        et: type[BaseException] | None,
        e: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._proc.stdin is not None:
            self._proc.stdin.close()  # the watcher ends when its stdin does
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
