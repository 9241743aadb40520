"""A watch survives etcd restarting: the stream resumes from the last
revision it saw and reports what changed while etcd was down."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest

from datastore.etcd import EtcdStore
from datastore.port import Put, StoreError
from lab.etcd import start_etcd

pytestmark = [pytest.mark.etcd, pytest.mark.slow]


async def write_when_back(store: EtcdStore) -> int:
    """etcd's /health can answer before its client port serves requests."""
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


async def test_watch_survives_its_connection_closed_under_it(tmp_path: Path) -> None:
    """Found by the soak (on the gRPC client): with etcd frozen, a lease
    refresh timed out and closed the connection the watch shared, and every
    node exited ("task watch ended"). The watch must reconnect instead; here
    ``close`` drops its connection while it waits."""
    etcd = start_etcd(tmp_path / "etcd")
    watcher = EtcdStore([etcd.endpoint])
    writer = EtcdStore([etcd.endpoint])
    try:
        start = (await watcher.list(b"/w/")).revision
        stream = watcher.changes(b"/w/", start)
        nxt = asyncio.ensure_future(anext(stream))
        await asyncio.sleep(0.5)  # the watch is established
        await watcher.close()
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


def freeze(pid: int, timeout: float = 5.0) -> None:
    """SIGSTOP ``pid`` and return once every thread of it has stopped. The
    stop is not instant: a request sent at once can still be answered (the
    gateway client sends on the loop's next turn; the gRPC one was slower)."""
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + timeout
    while not all(_stopped(pid, tid) for tid in os.listdir(f"/proc/{pid}/task")):
        if time.monotonic() > deadline:
            raise TimeoutError(f"process {pid} has threads still running {timeout} s after SIGSTOP")
        time.sleep(0.001)


def _stopped(pid: int, tid: str) -> bool:
    try:
        with open(f"/proc/{pid}/task/{tid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:  # the thread ended meanwhile
        return True
    return state in ("T", "t", "Z", "X")


async def test_call_in_flight_survives_another_task_rotating(tmp_path: Path) -> None:
    """Found by the soak (on the gRPC client): while etcd hung, one task's
    timeout rotated the shared client, which cancelled the calls in flight,
    and that CancelledError ended the node's other tasks ("task housekeeping
    ended"). A call in flight must see its answer through a rotation."""
    etcd = start_etcd(tmp_path / "etcd")
    store = EtcdStore([etcd.endpoint])
    proc = etcd.members[0].proc
    assert proc is not None
    try:
        await store.txn([], [Put(b"/c/a", b"1")])
        freeze(proc.pid)
        pending = asyncio.ensure_future(store.get(b"/c/a"))
        await asyncio.sleep(0.5)
        assert not pending.done(), pending.exception() or pending.result()  # etcd hangs
        store._rotate()  # what another task's timeout does
        await asyncio.sleep(0.2)
        proc.send_signal(signal.SIGCONT)
        got = await asyncio.wait_for(pending, 15)
        assert got is not None and got.value == b"1"
    finally:
        proc.send_signal(signal.SIGCONT)
        await store.close()
        etcd.stop()


async def test_a_real_cancellation_still_cancels(tmp_path: Path) -> None:
    etcd = start_etcd(tmp_path / "etcd")
    store = EtcdStore([etcd.endpoint])
    proc = etcd.members[0].proc
    assert proc is not None
    try:
        freeze(proc.pid)
        pending = asyncio.ensure_future(store.get(b"/c/a"))
        await asyncio.sleep(0.3)
        pending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await pending
    finally:
        proc.send_signal(signal.SIGCONT)
        await store.close()
        etcd.stop()
