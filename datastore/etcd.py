"""The etcd KvStore, over etcd's JSON gateway (HTTP/1.1 from ``etcd_http``,
the messages from ``etcd_codec``): no gRPC. It rotates over the configured
endpoints when one cannot be reached, and turns every failure into a
``StoreError`` at once (puts while etcd is down fail fast; a call has
``timeout`` seconds in all, nothing here blocks for long). Calls share a few
kept-alive connections; each watch holds one of its own. TLS and etcd users
come from ``etcd_tls``: the TLS files are read again whenever the store
reconnects after a failure or ``close``, so renewed certificates are taken up
without a restart, and a token etcd refuses is replaced by logging in again."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from typing import Any, TypeVar

from datastore.etcd_codec import (
    Refused,
    Verdict,
    WatchMessage,
    answer,
    authenticate_request,
    encode,
    kvs,
    lease_granted,
    lease_request,
    lease_ttl,
    range_request,
    refusal,
    revision,
    stream_message,
    token,
    txn_request,
    txn_revision,
    watch_message,
    watch_request,
)
from datastore.etcd_http import Broken, Connection
from datastore.etcd_tls import EtcdSecurity, explain, load_credentials, parse_endpoints
from datastore.port import (
    Changed,
    Condition,
    KeyChange,
    Listing,
    Op,
    Relisted,
    RequestTooLarge,
    StoreError,
    Versioned,
    WatchEvent,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_IDLE = 8  # kept-alive connections; more concurrent calls open (and close) their own


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
        self._context = load_credentials(self._security) if self._tls else None
        self._reread_tls = False
        self._timeout = timeout
        self._current = 0
        # a connection goes back to the pool only if no rotate or close came
        # while its request ran (it may reach the endpoint left behind)
        self._generation = 0
        self._idle: list[Connection] = []
        self._watching: set[Connection] = set()
        self._token: str | None = None

    def _tls_context(self) -> ssl.SSLContext | None:
        if self._tls and self._reread_tls:
            self._reread_tls = False
            try:
                self._context = load_credentials(self._security)
            except StoreError as e:
                log.warning("%s; keeping the TLS files read before", e)
        return self._context

    async def _connect(self) -> Connection:
        e = self._endpoints[self._current]
        return await Connection.open(e.host, e.port, self._tls_context())

    def _reset(self) -> None:
        """New connections from here on, with the TLS files read again."""
        self._generation += 1
        self._reread_tls = True
        while self._idle:
            self._idle.pop().close()

    def _rotate(self) -> None:
        """The next endpoint, for the calls that start from now on."""
        self._reset()
        self._current = (self._current + 1) % len(self._endpoints)

    async def _exchange(self, path: str, body: bytes, headers: dict[str, str]) -> dict[str, Any]:
        """One request, on an idle connection when there is one. A kept-alive
        connection that etcd closed meanwhile fails before any answer: the
        request goes again on the next one (or a new one)."""
        generation = self._generation
        while True:
            conn = self._idle.pop() if self._idle else None
            reused = conn is not None
            if conn is None:
                conn = await self._connect()
            try:
                if reused and conn.stale:
                    raise Broken("closed while idle", before_response=True)
                head = await conn.send(path, body, headers)
                data = await conn.read_body(head)
            except Broken as e:
                conn.close()
                if reused and e.before_response:
                    continue
                raise
            except BaseException:  # a timeout or cancellation mid-answer
                conn.close()
                raise
            if conn.reusable and generation == self._generation and len(self._idle) < MAX_IDLE:
                self._idle.append(conn)
            else:
                conn.close()
            return answer(head.status, data)

    async def _headers(self) -> dict[str, str]:
        s = self._security
        if not s.username:
            return {}
        if self._token is None:
            body = encode(authenticate_request(s.username, s.password or ""))
            try:
                self._token = token(await self._exchange("/v3/auth/authenticate", body, {}))
            except Refused as e:
                raise Refused(f"logging in as {s.username}: {e}", e.code, e.status) from e
        return {"Authorization": self._token}

    async def _call(
        self, what: str, path: str, request: dict[str, Any], decode: Callable[[dict[str, Any]], T]
    ) -> T:
        body = encode(request)
        last: BaseException | None = None
        tries = 0
        logged_in_again = False
        while tries < len(self._endpoints):
            try:
                async with asyncio.timeout(self._timeout):
                    return decode(await self._exchange(path, body, await self._headers()))
            except Refused as e:
                last = e
                if e.verdict is Verdict.TOO_LARGE:
                    raise RequestTooLarge(f"etcd refused the {what} as too large: {e}") from e
                if e.verdict is Verdict.LOG_IN and self._token and not logged_in_again:
                    # the token lapsed (simple tokens live 5 min): log in anew
                    self._token = None
                    logged_in_again = True
                    continue
                if e.verdict is not Verdict.ELSEWHERE:
                    raise StoreError(f"etcd {what}: {self._explain(e)}") from e
            except (Broken, TimeoutError) as e:
                last = e
            tries += 1
            self._rotate()
        endpoints = ", ".join(map(str, self._endpoints))
        why = self._explain(last) if last else "no endpoint"
        raise StoreError(f"etcd unreachable at {endpoints} ({what}): {why}") from last

    def _explain(self, e: BaseException) -> str:
        if isinstance(e, TimeoutError):
            return f"no answer within {self._timeout:g} s"
        return explain(str(e), self._tls, self._security)

    async def get(self, key: bytes) -> Versioned | None:
        found = await self._call("get", "/v3/kv/range", range_request(key), kvs)
        return found.get(key)

    async def list(self, prefix: bytes) -> Listing:
        def listing(resp: dict[str, Any]) -> Listing:
            return Listing(kvs(resp), revision(resp))

        return await self._call("list", "/v3/kv/range", range_request(prefix, prefix=True), listing)

    async def txn(self, compares: Sequence[Condition], ops: Sequence[Op]) -> int:
        request = txn_request(compares, ops)
        return await self._call("transaction", "/v3/kv/txn", request, txn_revision)

    async def changes(self, prefix: bytes, after_revision: int) -> AsyncIterator[int]:
        async with contextlib.aclosing(self.watch(prefix, after_revision)) as events:
            async for event in events:
                yield event.revision if isinstance(event, Changed) else event.listing.revision

    async def watch(self, prefix: bytes, after_revision: int) -> AsyncGenerator[WatchEvent, None]:
        """etcd ends a watch when the member goes away, and cannot resume one
        from compacted history: either way the prefix is listed again (which
        also catches an etcd restored from a backup), and watched from the
        listing's revision. A transaction etcd sends in fragments is yielded
        whole."""
        last = after_revision
        failures = 0
        relist = False
        while True:
            try:
                if relist:
                    listing = await self.list(prefix)
                    last, relist = listing.revision, False
                    yield Relisted(listing)
                async with contextlib.aclosing(self._watch(prefix, last + 1)) as messages:
                    async with asyncio.timeout(self._timeout):
                        created = await anext(messages, None)
                    if created is None or created.canceled or not created.created:
                        why = created.cancel_reason if created else "the stream ended"
                        raise Broken(f"etcd did not start the watch: {why}")
                    failures = 0
                    pending: list[KeyChange] = []
                    async for m in messages:
                        if m.compact_revision:
                            relist = True
                            break
                        if m.canceled:
                            raise Broken(f"etcd canceled the watch: {m.cancel_reason}")
                        pending += m.changes
                        if pending and not m.fragment:
                            last = max(last, *(c.revision for c in pending))
                            yield Changed(last, tuple(pending))
                            pending = []
                    else:
                        raise Broken("etcd ended the watch")
            except (StoreError, TimeoutError) as e:
                failures += 1
                relist = True
                where = prefix.decode(errors="replace")
                log.info("etcd watch on %s broke (%s); resuming", where, self._explain(e))
                self._token = None  # an expired one cancels a watch; logging in is cheap
                self._rotate()
                await asyncio.sleep(min(5.0, 0.1 * 2**failures))

    async def _watch(self, prefix: bytes, start: int) -> AsyncGenerator[WatchMessage, None]:
        """The watch's messages, on a connection of its own (``close`` ends it)."""
        body = encode(watch_request(prefix, start))
        headers = await self._headers()
        conn = await self._connect()
        self._watching.add(conn)
        try:
            head = await conn.send("/v3/watch", body, headers)
            if head.status != 200:
                raise refusal(head.status, await conn.read_body(head))
            async with contextlib.aclosing(conn.lines(head)) as lines:
                async for line in lines:
                    yield watch_message(stream_message(line))
        finally:
            self._watching.discard(conn)
            conn.close()

    async def grant_lease(self, ttl: int) -> int:
        return await self._call("lease", "/v3/lease/grant", {"TTL": str(ttl)}, lease_granted)

    async def refresh_lease(self, lease: int) -> None:
        request = lease_request(lease)
        ttl = await self._call("lease refresh", "/v3/lease/keepalive", request, lease_ttl)
        if ttl <= 0:
            raise StoreError(f"etcd lease refresh: lease {lease:x} not found (expired or revoked)")

    async def revoke_lease(self, lease: int) -> None:
        await self._call("lease revoke", "/v3/lease/revoke", lease_request(lease), lambda r: None)

    async def close(self) -> None:
        """Closes every connection, a watch's too (which resumes on a new one
        if its consumer goes on). The store stays usable."""
        self._reset()
        for conn in list(self._watching):
            conn.close()
