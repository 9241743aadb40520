"""The long-lived tasks of a meshroute process (node, reflector): each runs
until it is cancelled, so one that ends, by error or not, means the process
is broken: liveness says so, the watchdog stops pinging systemd, and the
process stops so that systemd restarts it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

from meshroute.runtime.http import Health
from meshroute.runtime.systemd import Notifier

log = logging.getLogger(__name__)


class LongTasks:
    def __init__(self) -> None:
        self._tasks: dict[str, asyncio.Task[Any]] = {}

    def spawn(self, name: str, coro: Coroutine[Any, Any, Any]) -> None:
        self._tasks[name] = asyncio.create_task(coro, name=name)

    def dead(self) -> list[str]:
        return [n for n, t in self._tasks.items() if t.done()]

    def liveness(self) -> Health:
        dead = self.dead()
        return Health(not dead, f"stopped: {', '.join(dead)}" if dead else "alive")

    async def run_until(self, stop: asyncio.Event) -> None:
        """Return when ``stop`` is set; raise when a task ended first."""
        stopper = asyncio.create_task(stop.wait())
        try:
            done, _ = await asyncio.wait(
                [stopper, *self._tasks.values()], return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            stopper.cancel()
        for t in done:
            if t is stopper:
                log.info("stopping on request")
                continue
            cause = None if t.cancelled() else t.exception()
            raise RuntimeError(f"task {t.get_name()} ended") from cause

    async def cancel_all(self) -> None:
        for t in self._tasks.values():
            t.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    async def watchdog(self, interval: float, notifier: Notifier) -> None:
        """Ping systemd's watchdog while every task is alive."""
        while True:
            if not self.dead():
                notifier.notify("WATCHDOG=1")
            await asyncio.sleep(interval)
