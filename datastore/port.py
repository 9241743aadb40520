"""The datastore port: a key-value store with compare-and-swap transactions,
prefix listing, watches and leases. etcd is the real one (``datastore.etcd``); the
memory one (``datastore.memory``) can inject conflicts. Both pass one contract
suite."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Protocol


class StoreError(Exception):
    """The datastore could not be reached or refused the request."""


class RequestTooLarge(StoreError):
    """The datastore refused a request for its size (etcd's
    ``--max-request-bytes`` or ``--max-txn-ops``): retrying cannot help."""


@dataclass(frozen=True)
class Versioned:
    value: bytes
    mod_revision: int


@dataclass(frozen=True)
class Compare:
    """The key's mod_revision must equal ``mod_revision`` (0: must not exist)."""

    key: bytes
    mod_revision: int


@dataclass(frozen=True)
class UnchangedSince:
    """No key under ``prefix`` was created or modified after ``revision``
    (a listing's revision). Deletions are not seen: it guards checks that a
    new or changed key could invalidate, like "no pool overlaps this one"."""

    prefix: bytes
    revision: int


Condition = Compare | UnchangedSince


@dataclass(frozen=True)
class Put:
    key: bytes
    value: bytes
    lease: int | None = None


@dataclass(frozen=True)
class Delete:
    key: bytes


Op = Put | Delete


@dataclass(frozen=True)
class Listing:
    items: dict[bytes, Versioned]
    revision: int


@dataclass(frozen=True)
class KeyChange:
    key: bytes
    value: bytes | None  # None: deleted
    revision: int  # of the put or the delete


@dataclass(frozen=True)
class Changed:
    """Keys under a watched prefix changed; ``changes`` in the store's order,
    whole transactions only, ``revision`` the highest among them."""

    revision: int
    changes: tuple[KeyChange, ...]


@dataclass(frozen=True)
class Relisted:
    """The watch could not go on from where it was (its connection broke, or
    the history it needed was compacted): every key under the prefix now,
    and the changes after ``listing.revision`` follow."""

    listing: Listing


WatchEvent = Changed | Relisted


class KvStore(Protocol):
    async def get(self, key: bytes) -> Versioned | None: ...

    async def list(self, prefix: bytes) -> Listing: ...

    async def txn(self, compares: Sequence[Condition], ops: Sequence[Op]) -> int:
        """Apply every op atomically if every compare holds. Returns the
        store's revision after the transaction (the mod_revision of every key
        it put) when it was applied, 0 when a compare failed."""
        ...

    def changes(self, prefix: bytes, after_revision: int) -> AsyncIterator[int]:
        """Revisions at which keys under ``prefix`` changed, from
        ``after_revision`` on. Level-triggered use: re-read on each one. After
        a broken connection it resumes and yields once, whatever was missed."""
        ...

    def watch(self, prefix: bytes, after_revision: int) -> AsyncIterator[WatchEvent]:
        """What changed under ``prefix`` after ``after_revision``, key by key:
        the edge-triggered twin of ``changes``, for keeping a copy."""
        ...

    async def grant_lease(self, ttl: int) -> int: ...

    async def refresh_lease(self, lease: int) -> None: ...

    async def revoke_lease(self, lease: int) -> None: ...

    async def close(self) -> None: ...
