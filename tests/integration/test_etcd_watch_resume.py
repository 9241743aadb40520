"""A watch survives etcd restarting: the stream resumes from the last
revision it saw and reports what changed while etcd was down."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from datastore.etcd import EtcdStore
from datastore.port import Put, StoreError
from lab.etcd import start_etcd

pytestmark = [pytest.mark.etcd, pytest.mark.slow]


async def write_when_back(store: EtcdStore) -> int:
    """etcd's /health can answer before its gRPC port takes connections."""
    for _ in range(100):
        try:
            return await store.txn([], [Put(b"/w/b", b"2")])
        except StoreError:
            await asyncio.sleep(0.1)
    raise AssertionError("etcd did not come back")


async def test_watch_resumes_after_etcd_restart(tmp_path: Path) -> None:
    etcd = start_etcd(tmp_path / "etcd")
    watcher = EtcdStore([etcd.endpoint])
    writer = EtcdStore([etcd.endpoint])
    try:
        start = (await watcher.list(b"/w/")).revision
        stream = watcher.changes(b"/w/", start)
        nxt = asyncio.ensure_future(anext(stream))
        await asyncio.sleep(0.2)
        r1 = await writer.txn([], [Put(b"/w/a", b"1")])
        assert await asyncio.wait_for(nxt, 5) >= r1

        etcd.members[0].kill()
        nxt = asyncio.ensure_future(anext(stream))
        await asyncio.sleep(0.5)
        etcd.members[0].start()
        etcd.wait_healthy()
        await writer.close()
        writer = EtcdStore([etcd.endpoint])
        r2 = await write_when_back(writer)
        got = await asyncio.wait_for(nxt, 15)
        while got < r2:  # a resume tick may come first; the change follows
            got = await asyncio.wait_for(anext(stream), 15)
        assert got >= r2
        await stream.aclose()  # type: ignore[attr-defined]
    finally:
        await watcher.close()
        await writer.close()
        etcd.stop()


async def test_watch_survives_its_channel_closed_under_it(tmp_path: Path) -> None:
    """Found by the soak: with etcd frozen, a lease refresh times out and
    rotates (closes) the client the watch shares, and re-watching on the
    closed channel raised grpc's UsageError out of ``changes``: every node
    exited ("task watch ended"). The watch must reconnect instead."""
    etcd = start_etcd(tmp_path / "etcd")
    watcher = EtcdStore([etcd.endpoint])
    writer = EtcdStore([etcd.endpoint])
    try:
        start = (await watcher.list(b"/w/")).revision
        # what a concurrent _rotate leaves a watch being set up: a client
        # that is connected, on a channel that is closed
        client = watcher._open()
        await client.connect()
        await client.channel.close()
        stream = watcher.changes(b"/w/", start)
        nxt = asyncio.ensure_future(anext(stream))
        await asyncio.sleep(0.5)
        r1 = await writer.txn([], [Put(b"/w/a", b"1")])
        got = await asyncio.wait_for(nxt, 15)
        while got < r1:  # the resume tick comes first; the change follows
            got = await asyncio.wait_for(anext(stream), 15)
        assert got >= r1
        await stream.aclose()  # type: ignore[attr-defined]
    finally:
        await watcher.close()
        await writer.close()
        etcd.stop()
