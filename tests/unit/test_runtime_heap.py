"""settle_long_lived: dead cycles are collected first, what lives is frozen
(out of the cyclic collector's scans), and frozen objects still die by
reference count."""

from __future__ import annotations

import gc
import weakref

from meshroute.runtime.heap import settle_long_lived


class Cell:
    def __init__(self) -> None:
        self.me: object = self


def test_dead_cycles_go_and_the_living_are_frozen() -> None:
    dead = Cell()
    dead_ref = weakref.ref(dead)
    del dead  # a cycle: only the collector can free it
    alive = Cell()
    plain = Cell()
    plain.me = None  # no cycle: reference counting frees it
    plain_ref = weakref.ref(plain)
    try:
        settle_long_lived()
        assert dead_ref() is None
        assert gc.get_freeze_count() > 0
        # get_objects() lists the collector's generations, not the frozen
        assert not any(o is alive for o in gc.get_objects())
        del plain
        assert plain_ref() is None
    finally:
        gc.unfreeze()
    assert any(o is alive for o in gc.get_objects())
