"""The mirror's copy is the store's: after any writes, a watch broken and
resumed among them, it reads what the store lists; a reader told of a change
reads it from the copy; reads elsewhere go to the store."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
from collections.abc import AsyncIterator

import pytest

from datastore.etcd import EtcdStore
from datastore.mirror import StoreMirror
from datastore.port import Delete, KvStore, Op, Put

pytestmark = pytest.mark.etcd


def _p() -> bytes:
    return f"/mirror/{os.urandom(4).hex()}/".encode()


@contextlib.asynccontextmanager
async def running(mirror: StoreMirror) -> AsyncIterator[StoreMirror]:
    await mirror.sync()
    task = asyncio.create_task(mirror.run())
    try:
        yield mirror
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def settled(mirror: StoreMirror, store: KvStore, prefix: bytes) -> None:
    for _ in range(500):
        if (await mirror.list(prefix)).items == (await store.list(prefix)).items:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the copy never caught up with the store")


@pytest.mark.parametrize("seed", [1, 2])
async def test_the_copy_is_what_the_store_lists_after_any_writes(kv: KvStore, seed: int) -> None:
    p = _p()
    m = p + b"m/"
    rng = random.Random(seed)
    keys = [m + k for k in (b"a", b"b", b"b/c", b"d", b"e")] + [p + b"n", p + b"z"]
    async with running(StoreMirror(kv, [m])) as mirror:
        for step in range(120):
            ops: list[Op] = [
                Put(k, rng.randbytes(rng.randrange(4))) if rng.random() < 0.6 else Delete(k)
                for k in rng.sample(keys, rng.randint(1, 3))
            ]
            await kv.txn([], ops)
            if step == 60 and isinstance(kv, EtcdStore):
                await kv.txn([], [Put(m + b"a", b"there")])
                await settled(mirror, kv, m)
                await kv.close()  # the watch's connection too: it lists again,
                await kv.txn([], [Delete(k) for k in keys])  # which alone tells of this
                await settled(mirror, kv, m)
        await settled(mirror, kv, m)
        for key in keys:
            assert await mirror.get(key) == await kv.get(key)
        assert (await mirror.list(m + b"b")).items == (await kv.list(m + b"b")).items


async def test_a_reader_told_of_a_change_reads_it_from_the_copy(kv: KvStore) -> None:
    p = _p()
    async with running(StoreMirror(kv, [p])) as mirror:
        start = (await mirror.list(p)).revision
        told = mirror.changes(p + b"peers/", start)
        for value in (b"1", b"2", b"3"):
            written = await kv.txn([], [Put(p + b"peers/a", value)])
            assert await asyncio.wait_for(anext(told), 5) >= written
            got = await mirror.get(p + b"peers/a")
            assert got is not None and got.value == value and got.mod_revision == written
        # a change beside the reader's prefix does not wake it
        nxt = asyncio.ensure_future(anext(told))
        await kv.txn([], [Put(p + b"nodes/x", b"1")])
        await settled(mirror, kv, p)
        await asyncio.sleep(0.1)
        assert not nxt.done()
        written = await kv.txn([], [Delete(p + b"peers/a")])
        assert await asyncio.wait_for(nxt, 5) >= written
        assert await mirror.get(p + b"peers/a") is None
        await told.aclose()  # type: ignore[attr-defined]


async def test_reads_outside_the_mirrored_prefixes_go_to_the_store(kv: KvStore) -> None:
    p = _p()
    async with running(StoreMirror(kv, [p + b"m/"])) as mirror:
        await kv.txn([], [Put(p + b"elsewhere", b"1")])
        got = await mirror.get(p + b"elsewhere")  # no watch delay: the store answered
        assert got is not None and got.value == b"1"
        assert list((await mirror.list(p)).items) == [p + b"elsewhere"]


def test_overlapping_prefixes_are_refused() -> None:
    with pytest.raises(ValueError, match="overlap"):
        StoreMirror(None, [b"/a/", b"/a/b/"])  # type: ignore[arg-type]
