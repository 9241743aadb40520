"""One contract for every KvStore: the memory fake and real etcd must agree
on compare-and-swap, prefix listing, atomicity and leases."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import pytest

from datastore.etcd import EtcdStore
from datastore.port import (
    Changed,
    Compare,
    Delete,
    KeyChange,
    KvStore,
    Put,
    Relisted,
    UnchangedSince,
    WatchEvent,
)

pytestmark = pytest.mark.etcd


def _p() -> bytes:
    return f"/contract/{os.urandom(4).hex()}/".encode()


async def compact(store: EtcdStore, revision: int) -> None:
    """Drops etcd's history before ``revision`` (no product code compacts)."""
    request = {"revision": str(revision), "physical": True}
    await store._call("compaction", "/v3/kv/compaction", request, lambda _: None)


async def test_get_missing_is_none(kv: KvStore) -> None:
    assert await kv.get(_p() + b"nothing") is None


async def test_create_only_if_absent(kv: KvStore) -> None:
    k = _p() + b"a"
    assert await kv.txn([Compare(k, 0)], [Put(k, b"1")])
    assert not await kv.txn([Compare(k, 0)], [Put(k, b"2")])
    v = await kv.get(k)
    assert v is not None and v.value == b"1" and v.mod_revision > 0


async def test_cas_on_mod_revision(kv: KvStore) -> None:
    k = _p() + b"a"
    await kv.txn([], [Put(k, b"1")])
    v1 = await kv.get(k)
    assert v1 is not None
    assert await kv.txn([Compare(k, v1.mod_revision)], [Put(k, b"2")])
    assert not await kv.txn([Compare(k, v1.mod_revision)], [Put(k, b"3")])
    v2 = await kv.get(k)
    assert v2 is not None and v2.value == b"2" and v2.mod_revision > v1.mod_revision


async def test_txn_is_atomic_over_keys(kv: KvStore) -> None:
    p = _p()
    a, b = p + b"a", p + b"b"
    await kv.txn([], [Put(a, b"1")])
    va = await kv.get(a)
    assert va is not None
    # One compare fails: neither op happens.
    assert not await kv.txn(
        [Compare(a, va.mod_revision), Compare(b, 12345)], [Put(a, b"x"), Put(b, b"y")]
    )
    assert (await kv.get(a)).value == b"1"  # type: ignore[union-attr]
    assert await kv.get(b) is None
    assert await kv.txn([Compare(a, va.mod_revision), Compare(b, 0)], [Delete(a), Put(b, b"y")])
    assert await kv.get(a) is None
    assert (await kv.get(b)).value == b"y"  # type: ignore[union-attr]


async def test_list_prefix_only(kv: KvStore) -> None:
    p = _p()
    for name in (b"x/1", b"x/2", b"y/1"):
        await kv.txn([], [Put(p + name, name)])
    listing = await kv.list(p + b"x/")
    assert sorted(listing.items) == [p + b"x/1", p + b"x/2"]
    assert listing.revision >= max(v.mod_revision for v in listing.items.values())


async def test_lease_revoke_removes_keys(kv: KvStore) -> None:
    k = _p() + b"alive"
    lease = await kv.grant_lease(30)
    assert await kv.txn([], [Put(k, b"1", lease=lease)])
    await kv.refresh_lease(lease)
    assert await kv.get(k) is not None
    await kv.revoke_lease(lease)
    assert await kv.get(k) is None


async def test_txn_returns_the_revision_it_wrote(kv: KvStore) -> None:
    p = _p()
    rev = await kv.txn([Compare(p + b"a", 0)], [Put(p + b"a", b"1"), Put(p + b"b", b"2")])
    assert rev > 0
    for k in (p + b"a", p + b"b"):
        v = await kv.get(k)
        assert v is not None and v.mod_revision == rev
    rev2 = await kv.txn([Compare(p + b"a", rev)], [Delete(p + b"a")])
    assert rev2 > rev
    assert await kv.txn([Compare(p + b"a", rev)], [Put(p + b"a", b"x")]) == 0


async def test_changes_under_a_prefix_are_reported(kv: KvStore) -> None:
    p = _p()
    start = (await kv.list(p)).revision
    stream = kv.changes(p + b"watched/", start)
    first = asyncio.ensure_future(anext(stream))
    await asyncio.sleep(0.1)
    await kv.txn([], [Put(p + b"other", b"x")])  # outside the prefix
    await asyncio.sleep(0.2)
    assert not first.done()
    rev = await kv.txn([], [Put(p + b"watched/a", b"1")])
    assert await asyncio.wait_for(first, 5) >= rev
    rev2 = await kv.txn([], [Delete(p + b"watched/a")])
    assert await asyncio.wait_for(anext(stream), 5) >= rev2
    await stream.aclose()  # type: ignore[attr-defined]


async def test_unchanged_since_guards_a_listing(kv: KvStore) -> None:
    p = _p()
    other = _p() + b"x"
    empty = await kv.list(p)
    assert await kv.txn([UnchangedSince(p, empty.revision)], [Put(other, b"1")])  # outside p
    assert await kv.txn([UnchangedSince(p, empty.revision)], [])
    await kv.txn([], [Put(p + b"a", b"1")])
    assert not await kv.txn([UnchangedSince(p, empty.revision)], [Put(other, b"2")])
    seen = await kv.list(p)
    assert await kv.txn([UnchangedSince(p, seen.revision)], [])
    await kv.txn([], [Put(p + b"a", b"2")])  # modified
    assert not await kv.txn([UnchangedSince(p, seen.revision)], [])
    assert (await kv.get(other)).value == b"1"  # type: ignore[union-attr]


async def next_event(stream: AsyncIterator[WatchEvent]) -> WatchEvent:
    return await asyncio.wait_for(anext(stream), 5)


async def test_a_watch_reports_each_key_change_in_order(kv: KvStore) -> None:
    p = _p()
    w = p + b"watched/"
    start = (await kv.list(p)).revision
    stream = kv.watch(w, start)
    first = asyncio.ensure_future(next_event(stream))
    await asyncio.sleep(0.1)
    r1 = await kv.txn([], [Put(w + b"a", b"1"), Put(p + b"other", b"x"), Put(w + b"b", b"")])
    r2 = await kv.txn([], [Delete(w + b"a")])
    r3 = await kv.txn([], [Put(w + b"b", b"3")])
    got = [await first, await next_event(stream), await next_event(stream)]
    assert got == [
        Changed(r1, (KeyChange(w + b"a", b"1", r1), KeyChange(w + b"b", b"", r1))),
        Changed(r2, (KeyChange(w + b"a", None, r2),)),
        Changed(r3, (KeyChange(w + b"b", b"3", r3),)),
    ]
    await stream.aclose()  # type: ignore[attr-defined]


async def test_a_watch_from_history_the_store_lacks_starts_with_a_listing(kv: KvStore) -> None:
    """etcd keeps history until compacted; the memory store keeps none."""
    p = _p()
    start = (await kv.list(p)).revision
    await kv.txn([], [Put(p + b"a", b"1")])
    await kv.txn([], [Put(p + b"a", b"2"), Put(p + b"b", b"1")])
    now = await kv.txn([], [Delete(p + b"b")])
    if isinstance(kv, EtcdStore):
        await compact(kv, now)
    stream = kv.watch(p, start)
    got = await next_event(stream)
    assert isinstance(got, Relisted) and got.listing.revision >= now
    assert {k: v.value for k, v in got.listing.items.items()} == {p + b"a": b"2"}
    r = await kv.txn([], [Put(p + b"c", b"1")])
    assert await next_event(stream) == Changed(r, (KeyChange(p + b"c", b"1", r),))
    await stream.aclose()  # type: ignore[attr-defined]
