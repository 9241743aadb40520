"""A block claim killed half way (SIGKILL after the pending affinity, before
the block), on real etcd with the real service and plugin: ``ipam check``
shows the claim in progress instead of hiding it, and the restarted service
settles it at once, so the next pod gets an address at once rather than
after the 30 s grace; and a claimant that meets a claim of its host still
being made waits for it instead of burning its retries."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from netaddr import IPNetwork

from datastore.etcd import EtcdStore
from ipam.ipam import AssignRequest, Ipam
from ipam.model import AffinityState, Pool
from lab.etcd import EtcdCluster
from tests.harness.cli import REPO, cli
from tests.harness.cni import cni_env, netconf, run_plugin, start_ipam_service

pytestmark = pytest.mark.etcd
HOST = "node-k"
POOL = Pool("pods", IPNetwork("10.244.0.0/16"), 26)


def serve(etcd: EtcdCluster, prefix: str, sock: str, module: str) -> subprocess.Popen[str]:
    return start_ipam_service(
        [
            sys.executable,
            "-m",
            module,
            "--host",
            HOST,
            "--socket",
            sock,
            "--etcd",
            etcd.endpoint,
            "--prefix",
            prefix,
        ],
        ready_within=20,
        cwd=REPO,
    )


async def snapshot(etcd: EtcdCluster, prefix: str):  # type: ignore[no-untyped-def]
    store = EtcdStore([etcd.endpoint])
    try:
        return await Ipam(store, prefix=prefix).snapshot()
    finally:
        await store.close()


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
        p.communicate(timeout=15)


@pytest.mark.slow
async def test_killed_claim_is_shown_in_progress_and_settled_by_the_restart(
    etcd_server: EtcdCluster,
    etcd_prefix: str,
    tmp_path: Path,
    procs: list[subprocess.Popen[str]],
) -> None:
    store = EtcdStore([etcd_server.endpoint])
    try:
        await Ipam(store, prefix=etcd_prefix).apply_pool(POOL)
    finally:
        await store.close()
    sock = str(tmp_path / "ipam.sock")
    doomed = serve(etcd_server, etcd_prefix, sock, "tests.integration.ipam_killed_claim_proc")
    procs.append(doomed)
    killed = run_plugin(cni_env("ADD", "c1"), netconf(sock))
    assert killed.rc == 1 and killed.out is not None and killed.out["code"] == 101, killed.raw
    assert doomed.wait(10) == -signal.SIGKILL

    snap = await snapshot(etcd_server, etcd_prefix)
    [(aff, _)] = snap.affinities.values()
    assert aff.host == HOST and aff.state is AffinityState.PENDING
    assert snap.blocks == {}  # killed between the two writes

    check = cli(etcd_server, etcd_prefix, "ipam", "check", "--json")
    assert check.returncode == 0, check.stdout + check.stderr
    [finding] = json.loads(check.stdout)
    assert finding["kind"] == "claim-in-progress", finding
    assert finding["subject"] == f"{HOST}/{aff.cidr}"
    table = cli(etcd_server, etcd_prefix, "ipam", "check")
    assert "in progress" in table.stdout, table.stdout

    procs.append(serve(etcd_server, etcd_prefix, sock, "meshroute.cmd_ipam_serve"))
    t = time.monotonic()
    ok = run_plugin(cni_env("ADD", "c2"), netconf(sock))
    assert ok.rc == 0, ok.raw
    assert time.monotonic() - t < 5  # not after the 30 s grace

    snap = await snapshot(etcd_server, etcd_prefix)
    assert {a.state for a, _ in snap.affinities.values()} == {AffinityState.CONFIRMED}
    clean = cli(etcd_server, etcd_prefix, "ipam", "check")
    assert clean.returncode == 0 and "IPAM is consistent" in clean.stdout, clean.stdout


class _PausingStore(EtcdStore):
    """Test-only: holds its first pending-affinity write until released, as
    a claimant of the same host that is alive and mid-claim."""

    def __init__(self, endpoint: str) -> None:
        super().__init__([endpoint])
        self.pending_written = asyncio.Event()
        self.release = asyncio.Event()

    async def txn(self, compares, ops):  # type: ignore[no-untyped-def]
        rev = await super().txn(compares, ops)
        if rev and not self.pending_written.is_set() and b"/affinity/" in ops[0].key:
            self.pending_written.set()
            await self.release.wait()
        return rev


class _CountingStore(EtcdStore):
    def __init__(self, endpoint: str) -> None:
        super().__init__([endpoint])
        self.affinity_reads = 0

    async def get(self, key):  # type: ignore[no-untyped-def]
        if b"/affinity/" in key:
            self.affinity_reads += 1
        return await super().get(key)


async def test_a_claimant_waits_for_a_live_claim_of_its_host(
    etcd_server: EtcdCluster, etcd_prefix: str
) -> None:
    slow = _PausingStore(etcd_server.endpoint)
    other = _CountingStore(etcd_server.endpoint)
    try:
        first = Ipam(slow, prefix=etcd_prefix)
        second = Ipam(other, prefix=etcd_prefix, max_conflicts=4)
        await first.apply_pool(POOL)
        claiming = asyncio.create_task(first.assign(AssignRequest(HOST, "a.eth0")))
        await asyncio.wait_for(slow.pending_written.wait(), 10)
        meeting = asyncio.create_task(second.assign(AssignRequest(HOST, "b.eth0")))
        deadline = time.monotonic() + 10
        while other.affinity_reads < 3 and not meeting.done():
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        slow.release.set()
        [a] = await asyncio.wait_for(claiming, 10)
        [b] = await asyncio.wait_for(meeting, 10)  # before: Conflict, "lost 5 races"
        assert a.block == b.block and a.ip != b.ip
        snap = await Ipam(other, prefix=etcd_prefix).snapshot()
        assert len(snap.blocks) == 1
        assert {x.state for x, _ in snap.affinities.values()} == {AffinityState.CONFIRMED}
    finally:
        slow.release.set()
        await slow.close()
        await other.close()
