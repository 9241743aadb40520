"""The etcd KvStore on aetcd. It rotates over the configured endpoints when
one cannot be reached, and turns client errors into ``StoreError`` at once
(puts while etcd is down fail fast; nothing here blocks for long). TLS and
etcd users come from ``etcd_tls``; the TLS files are re-read on every
reconnection, so renewed certificates are taken up without a restart."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

import aetcd
import aetcd.exceptions
import grpc.aio

from datastore.etcd_tls import (
    EtcdSecurity,
    SecureClient,
    explain,
    load_credentials,
    parse_endpoints,
)
from datastore.port import (
    Compare,
    Condition,
    Delete,
    Listing,
    Op,
    Put,
    RequestTooLarge,
    StoreError,
    Versioned,
)

log = logging.getLogger(__name__)

_RETRYABLE = (
    aetcd.exceptions.ConnectionFailedError,
    aetcd.exceptions.ConnectionTimeoutError,
    aetcd.exceptions.InternalError,
)
# How a call ends when another task rotated (closed) the client it shares,
# e.g. a lease refresh timing out while etcd hangs: grpc cancels the calls
# in flight on a closed channel, and refuses new ones with UsageError. The
# call is retried on the next client, without rotating again (which would
# close that one under the others).
_CLOSED_UNDER_US = (grpc.aio.UsageError, asyncio.CancelledError)
_CLOSED_RETRIES = 3


def _closed_under_us(e: BaseException) -> bool:
    """Not a cancellation of this task: grpc's, from a channel closed by another."""
    if not isinstance(e, asyncio.CancelledError):
        return True
    task = asyncio.current_task()
    return task is not None and task.cancelling() == 0


# What etcd says when a request passes its --max-request-bytes or --max-txn-ops.
_TOO_LARGE = ("request is too large", "too many operations in txn request")


def _revision_of(responses: Sequence[Any]) -> int:
    """The revision a successful transaction produced, from the header of
    its first response (aetcd does not return the transaction's header)."""
    for r in responses:
        kind = r.WhichOneof("response")
        if kind:
            return int(getattr(r, kind).header.revision)
    return 1  # no ops: nothing was written; any true value will do


class EtcdStore:
    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        timeout: float = 5.0,
        security: EtcdSecurity | None = None,
    ) -> None:
        """Raises ``StoreError`` naming the endpoint or file at fault."""
        self._security = security or EtcdSecurity()
        self._tls, self._endpoints = parse_endpoints(endpoints, self._security)
        self._credentials = load_credentials(self._security) if self._tls else None
        self._timeout = timeout
        self._current = 0
        self._client: aetcd.Client | None = None

    def _open(self) -> aetcd.Client:
        if self._client is None:
            if self._tls:
                try:
                    self._credentials = load_credentials(self._security)
                except StoreError as e:
                    log.warning("%s; keeping the TLS files read before", e)
            s = self._security
            self._client = SecureClient(
                self._endpoints[self._current],
                self._credentials,
                username=s.username,
                password=s.password,
                timeout=int(self._timeout) or 1,
            )
        return self._client

    async def _rotate(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None
        self._current = (self._current + 1) % len(self._endpoints)

    def _forget(self, client: aetcd.Client) -> None:
        """Drop a client whose channel is already closed (by another task's
        rotate, which usually dropped it already)."""
        if self._client is client:
            self._client = None

    async def _call(self, what: str, fn: Any) -> Any:
        last: BaseException | None = None
        rotations = closed = 0
        while rotations < len(self._endpoints) and closed <= _CLOSED_RETRIES:
            client = self._open()
            try:
                return await fn(client)
            except _RETRYABLE as e:
                last = e
                rotations += 1
                await self._rotate()
            except _CLOSED_UNDER_US as e:
                if not _closed_under_us(e):
                    raise
                last = e
                closed += 1
                self._forget(client)
            except aetcd.exceptions.UnauthenticatedError as e:
                # etcd's auth token lapsed (simple tokens live 5 min): log in anew
                last = e
                rotations += 1
                await self._rotate()
            except aetcd.exceptions.ClientError as e:
                if any(m in str(e) for m in _TOO_LARGE):
                    raise RequestTooLarge(f"etcd refused the {what} as too large: {e}") from e
                raise StoreError(f"etcd {what}: {self._explain(e)}") from e
        endpoints = ", ".join(map(str, self._endpoints))
        why = self._explain(last) if last else "no endpoint"
        raise StoreError(f"etcd unreachable at {endpoints} ({what}): {why}") from last

    def _explain(self, e: BaseException) -> str:
        return explain(str(e), self._tls, self._security)

    async def get(self, key: bytes) -> Versioned | None:
        r = await self._call("get", lambda c: c.get(key))
        return None if r is None else Versioned(r.value, r.mod_revision)

    async def list(self, prefix: bytes) -> Listing:
        r = await self._call("list", lambda c: c.get_prefix(prefix))
        items = {kv.key: Versioned(kv.value, kv.mod_revision) for kv in r}
        return Listing(items, int(r.header.revision))

    async def txn(self, compares: Sequence[Condition], ops: Sequence[Op]) -> int:
        async def run(c: aetcd.Client) -> int:
            t = c.transactions
            cmp = [
                t.mod(x.key) == x.mod_revision
                if isinstance(x, Compare)
                # every key of the range: etcd holds an empty range true
                else t.mod(x.prefix, range_end=aetcd.utils.prefix_range_end(x.prefix))
                < x.revision + 1
                for x in compares
            ]
            success = []
            for op in ops:
                if isinstance(op, Put):
                    success.append(t.put(op.key, op.value, lease=op.lease))
                elif isinstance(op, Delete):
                    success.append(t.delete(op.key))
            ok, responses = await c.transaction(compare=cmp, success=success, failure=[])
            if not ok:
                return 0
            return _revision_of(responses)

        return int(await self._call("transaction", run))

    async def changes(self, prefix: bytes, after_revision: int) -> AsyncIterator[int]:
        """etcd ends a watch when the member goes away: re-watch from the last
        revision seen (a compacted one means "re-read everything", which the
        caller does on the revision yielded right after reconnecting)."""
        last = after_revision
        failures = 0
        while True:
            try:
                client = self._open()
                watch = await client.watch_prefix(prefix, start_revision=last + 1)
                if failures:
                    failures = 0
                    yield last  # whatever happened while we were away: re-read
                async for event in watch:
                    last = max(last, int(event.kv.mod_revision))
                    yield last
            except aetcd.exceptions.RevisionCompactedError:
                last = (await self.list(prefix)).revision
                yield last
            except (*_RETRYABLE, aetcd.exceptions.WatchTimeoutError) as e:
                failures += 1
                log.info("etcd watch on %s broke (%s); resuming", prefix.decode(), self._explain(e))
                await self._rotate()
                await asyncio.sleep(min(5.0, 0.1 * 2**failures))
            except _CLOSED_UNDER_US as e:
                if not _closed_under_us(e):
                    raise
                failures += 1
                log.info("etcd watch on %s: client closed under it; resuming", prefix.decode())
                self._forget(client)
                await asyncio.sleep(min(5.0, 0.1 * 2**failures))

    async def grant_lease(self, ttl: int) -> int:
        lease = await self._call("lease", lambda c: c.lease(ttl))
        return int(lease.id)

    async def refresh_lease(self, lease: int) -> None:
        await self._call("lease refresh", lambda c: c.refresh_lease(lease))

    async def revoke_lease(self, lease: int) -> None:
        await self._call("lease revoke", lambda c: c.revoke_lease(lease))

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None
