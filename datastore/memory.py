"""An in-memory KvStore for unit tests of the shells that keep state in etcd. It can inject
conflicts: a transaction fails as if another writer had won the race."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncGenerator, AsyncIterator, Sequence

from datastore.port import (
    Changed,
    Compare,
    Condition,
    Delete,
    KeyChange,
    Listing,
    Op,
    Put,
    Relisted,
    StoreError,
    UnchangedSince,
    Versioned,
    WatchEvent,
)


class MemoryStore:
    def __init__(
        self,
        *,
        conflict_rate: float = 0.0,
        interleave: bool = False,
        rng: random.Random | None = None,
    ) -> None:
        self.data: dict[bytes, Versioned] = {}
        self.revision = 1
        self.conflict_rate = conflict_rate
        self.interleave = interleave
        self.rng = rng or random.Random(0)
        self.down = False
        self._leases: dict[int, set[bytes]] = {}
        self._watchers: list[tuple[bytes, asyncio.Queue[Changed]]] = []
        self._next_lease = 1

    async def _enter(self) -> None:
        # Yielding before every operation lets concurrent tasks interleave
        # between a read and the write that depends on it, as with etcd.
        if self.interleave:
            await asyncio.sleep(0)
        if self.down:
            raise StoreError("memory store is down")

    async def get(self, key: bytes) -> Versioned | None:
        await self._enter()
        return self.data.get(key)

    async def list(self, prefix: bytes) -> Listing:
        await self._enter()
        items = {k: v for k, v in sorted(self.data.items()) if k.startswith(prefix)}
        return Listing(items, self.revision)

    async def txn(self, compares: Sequence[Condition], ops: Sequence[Op]) -> int:
        await self._enter()
        if self.conflict_rate and self.rng.random() < self.conflict_rate:
            # Another writer won: bump a compared key so the caller's view is stale.
            for c in compares:
                if isinstance(c, Compare) and (cur := self.data.get(c.key)) is not None:
                    self.revision += 1
                    self.data[c.key] = Versioned(cur.value, self.revision)
                    self._notify([KeyChange(c.key, cur.value, self.revision)])
            return 0
        for c in compares:
            if isinstance(c, UnchangedSince):
                under = (v for k, v in self.data.items() if k.startswith(c.prefix))
                if any(v.mod_revision > c.revision for v in under):
                    return 0
                continue
            cur = self.data.get(c.key)
            if (cur.mod_revision if cur else 0) != c.mod_revision:
                return 0
        self.revision += 1
        changes: list[KeyChange] = []
        for op in ops:
            if isinstance(op, Put):
                if op.lease is not None:
                    if op.lease not in self._leases:
                        raise StoreError(f"lease {op.lease} not found")
                    self._leases[op.lease].add(op.key)
                self.data[op.key] = Versioned(op.value, self.revision)
                changes.append(KeyChange(op.key, op.value, self.revision))
            elif isinstance(op, Delete) and self.data.pop(op.key, None) is not None:
                changes.append(KeyChange(op.key, None, self.revision))
        self._notify(changes)
        return self.revision

    def _notify(self, changes: Sequence[KeyChange]) -> None:
        for prefix, q in self._watchers:
            if mine := tuple(c for c in changes if c.key.startswith(prefix)):
                q.put_nowait(Changed(self.revision, mine))

    async def watch(self, prefix: bytes, after_revision: int) -> AsyncGenerator[WatchEvent, None]:
        """No history is kept: a watch from the past starts with a listing."""
        q: asyncio.Queue[Changed] = asyncio.Queue()
        entry = (prefix, q)
        self._watchers.append(entry)
        try:
            if after_revision < self.revision:
                yield Relisted(await self.list(prefix))
            while True:
                yield await q.get()
        finally:
            self._watchers.remove(entry)

    async def changes(self, prefix: bytes, after_revision: int) -> AsyncIterator[int]:
        async with contextlib.aclosing(self.watch(prefix, after_revision)) as events:
            async for event in events:
                if isinstance(event, Changed):
                    yield event.revision
                elif any(v.mod_revision > after_revision for v in event.listing.items.values()):
                    yield event.listing.revision

    async def grant_lease(self, ttl: int) -> int:
        await self._enter()
        lease = self._next_lease
        self._next_lease += 1
        self._leases[lease] = set()
        return lease

    async def refresh_lease(self, lease: int) -> None:
        await self._enter()
        if lease not in self._leases:
            raise StoreError(f"lease {lease} not found")

    async def revoke_lease(self, lease: int) -> None:
        await self._enter()
        for key in self._leases.pop(lease, set()):
            if key in self.data:
                self.revision += 1
                del self.data[key]
                self._notify([KeyChange(key, None, self.revision)])

    async def close(self) -> None:
        return None
