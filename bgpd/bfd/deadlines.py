"""The BFD speaker's one clock: when each session must next be looked at.

A heap of (when, item) in which only an item's latest entry counts; older
entries are skipped as they surface, so moving an item costs one push and
no search. Setting an item later than it already is keeps the earlier
entry: it fires, the caller looks at the item and sets it again. That is
how a received packet, which only ever pushes a session's detection time
later, leaves the heap alone.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Hashable
from typing import Generic, TypeVar

T = TypeVar("T", bound=Hashable)


class Deadlines(Generic[T]):
    def __init__(self) -> None:
        self._heap: list[tuple[float, int, T]] = []
        self._when: dict[T, float] = {}
        self._seq = itertools.count()  # equal times never compare items

    def __len__(self) -> int:
        return len(self._when)

    def set(self, item: T, when: float) -> bool:
        """``item`` is due at ``when`` at the latest; True when that moved
        it earlier (the caller's timer may now be too late)."""
        current = self._when.get(item)
        if current is not None and current <= when:
            return False
        self._when[item] = when
        heapq.heappush(self._heap, (when, next(self._seq), item))
        return True

    def discard(self, item: T) -> None:
        self._when.pop(item, None)

    def pop_due(self, limit: float) -> list[T]:
        """The items due at or before ``limit``, earliest first; they are
        no longer in the heap until set again."""
        heap, whens, out = self._heap, self._when, []
        while heap and heap[0][0] <= limit:
            when, _, item = heapq.heappop(heap)
            if whens.get(item) == when:
                del whens[item]
                out.append(item)
        return out

    def earliest(self) -> float | None:
        heap, whens = self._heap, self._when
        while heap:
            when, _, item = heap[0]
            if whens.get(item) == when:
                return when
            heapq.heappop(heap)  # an entry an earlier one replaced
        return None
