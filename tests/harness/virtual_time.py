"""An asyncio event loop on virtual time, for unit tests of loops that take
a clock (``Reconciler(clock=...)``): ``loop.time()`` is the injected clock,
and it jumps to the next timer whenever nothing can run, so ninety seconds of
resync interval pass in no wall time and the test says exactly when.

Time stands still while work runs in the loop's default executor
(``asyncio.to_thread``): the loop then waits for that work for real, as it
would on a fast machine, so no timeout fires because a thread was slow."""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Callable, Coroutine
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


class _CountingExecutor(ThreadPoolExecutor):
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(max_workers=4, thread_name_prefix="virtual-time")
        self._loop = loop
        self.busy = 0  # read and written on the loop's thread only

    def _done(self, _f: Future[Any]) -> None:
        self.busy -= 1

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        self.busy += 1
        f = super().submit(fn, *args, **kwargs)
        # counted down on the loop's thread, after the wake-up that delivers
        # the result: the loop never sees "idle" while a result is in flight
        f.add_done_callback(lambda f: self._loop.call_soon_threadsafe(self._done, f))
        return f


class _Selector(selectors.DefaultSelector):
    def __init__(self) -> None:
        super().__init__()
        self.loop: VirtualTimeLoop | None = None

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        loop = self.loop
        assert loop is not None
        if timeout == 0:
            return super().select(0)
        if timeout is None or loop.executor.busy:
            return super().select(None)  # a thread's result or an fd wakes us
        events = super().select(0)
        if not events:
            loop.now += timeout  # nothing could run before the next timer
        return events


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        selector = _Selector()
        self.now = 0.0
        super().__init__(selector)
        selector.loop = self
        self.executor = _CountingExecutor(self)
        self.set_default_executor(self.executor)

    def time(self) -> float:
        return self.now


def run(coro: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on virtual time."""
    loop = VirtualTimeLoop()
    try:
        return loop.run_until_complete(coro)
    finally:
        try:
            tasks = asyncio.all_tasks(loop)
            for t in tasks:
                t.cancel()
            if tasks:
                loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.executor.shutdown(wait=True)
            loop.close()
