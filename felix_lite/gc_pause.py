"""Pausing Python's cyclic garbage collector around bulk work.

Planning 100k routes, or diffing them, allocates a few hundred thousand
objects that form no reference cycles (routes, tuples, ops). Each batch of
allocations makes the collector run, and its older generations walk every
live object of the process: a node holding 100k routes spent about a fifth
of a whole-table plan in collections that freed nothing. Reference counting
still frees everything at once; only the search for cycles waits until the
outermost pause ends (pauses nest, from any thread).
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_depth = 0
_was_enabled = False


@contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic collection inside; the collector's state is restored when
    the outermost pause ends. Other work that runs meanwhile (threads, or
    tasks while the holder awaits) runs without it too: hold it only for
    a bounded bulk step, never across a wait for outside events."""
    global _depth, _was_enabled
    with _lock:
        if _depth == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _was_enabled:
                gc.enable()
