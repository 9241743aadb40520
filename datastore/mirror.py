"""A copy in memory of every key under a few prefixes, kept by watching them
(the informer pattern): a process that reads its whole view again on every
change reads it here instead of asking the store six times. Reads under a
mirrored prefix come from the copy once ``sync`` has listed it; anything
else, writes included, goes to the store. The copy lags a write by the
watch's delay, so it is for readers: a compare-and-swap keeps reading the
store it writes."""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import AsyncIterator, Sequence

from datastore.port import (
    Condition,
    KvStore,
    Listing,
    Op,
    Relisted,
    Versioned,
    WatchEvent,
)


class _Copy:
    """One prefix's keys, and the revision they hold (0: not listed yet)."""

    def __init__(self) -> None:
        self.items: dict[bytes, Versioned] = {}
        self.revision = 0
        self._sorted: list[bytes] | None = None

    def apply(self, event: WatchEvent) -> None:
        if isinstance(event, Relisted):
            self.items = dict(event.listing.items)
            self.revision = event.listing.revision
        else:
            for c in event.changes:
                if c.value is None:
                    self.items.pop(c.key, None)
                else:
                    self.items[c.key] = Versioned(c.value, c.revision)
            self.revision = max(self.revision, event.revision)
        self._sorted = None

    def under(self, prefix: bytes) -> dict[bytes, Versioned]:
        """The keys under ``prefix`` in key order, as a store lists them."""
        if self._sorted is None:
            self._sorted = sorted(self.items)
        keys = self._sorted
        out = {}
        for i in range(bisect.bisect_left(keys, prefix), len(keys)):
            if not keys[i].startswith(prefix):
                break
            out[keys[i]] = self.items[keys[i]]
        return out


def _touches(event: WatchEvent, prefix: bytes) -> bool:
    if isinstance(event, Relisted):
        return True  # what went missing is unknown: every reader looks again
    return any(c.key.startswith(prefix) for c in event.changes)


class StoreMirror:
    def __init__(self, store: KvStore, prefixes: Sequence[bytes]) -> None:
        for a in prefixes:
            for b in prefixes:
                if a != b and b.startswith(a):
                    raise ValueError(f"mirrored prefixes overlap: {a!r} holds {b!r}")
        self.store = store
        self._copies = {p: _Copy() for p in prefixes}
        self._readers: list[tuple[bytes, asyncio.Queue[int]]] = []

    def _copy(self, prefix: bytes) -> _Copy | None:
        """The listed copy that holds every key under ``prefix``."""
        for mirrored, copy in self._copies.items():
            if prefix.startswith(mirrored) and copy.revision:
                return copy
        return None

    async def sync(self) -> None:
        """Lists every prefix not listed yet (raises ``StoreError`` without
        the store): from here on, reads under them are the copy's."""
        for prefix, copy in self._copies.items():
            if not copy.revision:
                self._apply(copy, Relisted(await self.store.list(prefix)))

    async def run(self) -> None:
        """Follows every prefix's watch from its listing, for good."""
        await self.sync()
        async with asyncio.TaskGroup() as group:
            for prefix, copy in self._copies.items():
                group.create_task(self._follow(prefix, copy))

    async def _follow(self, prefix: bytes, copy: _Copy) -> None:
        async for event in self.store.watch(prefix, copy.revision):
            self._apply(copy, event)

    def _apply(self, copy: _Copy, event: WatchEvent) -> None:
        copy.apply(event)
        for prefix, queue in self._readers:
            if self._copy(prefix) is copy and _touches(event, prefix):
                queue.put_nowait(copy.revision)

    # ---- KvStore -------------------------------------------------------------

    async def get(self, key: bytes) -> Versioned | None:
        copy = self._copy(key)
        return copy.items.get(key) if copy else await self.store.get(key)

    async def list(self, prefix: bytes) -> Listing:
        copy = self._copy(prefix)
        return Listing(copy.under(prefix), copy.revision) if copy else await self.store.list(prefix)

    async def changes(self, prefix: bytes, after_revision: int) -> AsyncIterator[int]:
        """Yields once the copy holds the change, so a read that follows sees it."""
        if not any(prefix.startswith(p) for p in self._copies):
            async for rev in self.store.changes(prefix, after_revision):
                yield rev
            return
        queue: asyncio.Queue[int] = asyncio.Queue()
        entry = (prefix, queue)
        self._readers.append(entry)
        try:
            copy = self._copy(prefix)
            if copy is not None and copy.revision > after_revision:
                yield copy.revision
            while True:
                yield await queue.get()
        finally:
            self._readers.remove(entry)

    def watch(self, prefix: bytes, after_revision: int) -> AsyncIterator[WatchEvent]:
        return self.store.watch(prefix, after_revision)

    async def txn(self, compares: Sequence[Condition], ops: Sequence[Op]) -> int:
        return await self.store.txn(compares, ops)

    async def grant_lease(self, ttl: int) -> int:
        return await self.store.grant_lease(ttl)

    async def refresh_lease(self, lease: int) -> None:
        await self.store.refresh_lease(lease)

    async def revoke_lease(self, lease: int) -> None:
        await self.store.revoke_lease(lease)

    async def close(self) -> None:
        await self.store.close()
