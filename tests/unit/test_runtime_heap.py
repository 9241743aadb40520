"""settle_long_lived: what lives is frozen (out of the cyclic collector's
scans) without a pause the first time; the next call collects the cycles
that died meanwhile; frozen objects still die by reference count."""

from __future__ import annotations

import gc
import weakref

from meshroute.runtime.heap import settle_long_lived


class Cell:
    def __init__(self) -> None:
        self.me: object = self


def frozen(x: object) -> bool:
    # get_objects() lists the collector's generations, not the frozen objects
    return not any(o is x for o in gc.get_objects())


def test_first_call_freezes_the_next_collects_what_died() -> None:
    gc.unfreeze()
    cycle = Cell()
    cycle_ref = weakref.ref(cycle)
    plain = Cell()
    plain.me = None  # no cycle: reference counting frees it
    plain_ref = weakref.ref(plain)
    alive = Cell()
    try:
        count = settle_long_lived()
        assert count == gc.get_freeze_count() > 0
        assert frozen(cycle) and frozen(alive)
        del plain
        assert plain_ref() is None
        del cycle  # a frozen cycle dies: only a collection can free it
        gc.collect()
        assert cycle_ref() is not None
        settle_long_lived()
        assert cycle_ref() is None
        assert frozen(alive)
    finally:
        gc.unfreeze()
    assert not frozen(alive)
