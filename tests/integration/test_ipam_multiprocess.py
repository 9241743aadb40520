"""Several allocator processes on one real etcd: every address distinct, no
orphan blocks; and a kill -9 mid-run leaves nothing that check does not find
and gc does not repair."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from netaddr import IPAddress, IPNetwork

from lab.etcd import EtcdCluster
from tests.harness.cli import cli

pytestmark = [pytest.mark.etcd, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
POOLS = """
apiVersion: meshroute.io/v1
kind: IPPool
metadata: {name: race}
spec: {cidr: 10.244.0.0/16, blockSize: 29}
"""


def start(server: EtcdCluster, prefix: str, host: str, count: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.integration.ipam_allocator_proc",
            "--etcd",
            server.endpoint,
            "--prefix",
            prefix,
            "--host",
            host,
            "--count",
            str(count),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )


def collect(p: subprocess.Popen[str]) -> tuple[list[tuple[IPAddress, str]], str]:
    out, err = p.communicate(timeout=120)
    return [(IPAddress(ln.split()[0]), ln.split()[1]) for ln in out.splitlines()], err


def test_four_processes_1000_distinct_addresses_no_orphans(
    etcd_server: EtcdCluster, etcd_prefix: str
) -> None:
    assert cli(etcd_server, etcd_prefix, "apply", "-f", "-", stdin=POOLS).returncode == 0
    procs = [start(etcd_server, etcd_prefix, f"host{i}", 250) for i in range(4)]
    got: list[tuple[IPAddress, str]] = []
    for p in procs:
        lines, err = collect(p)
        assert p.returncode == 0, err
        assert len(lines) == 250
        got += lines
    assert len({ip for ip, _ in got}) == 1000
    assert all(ip in IPNetwork("10.244.0.0/16") for ip, _ in got)
    check = cli(etcd_server, etcd_prefix, "ipam", "check", "--grace", "0")
    assert check.returncode == 0, check.stdout + check.stderr
    show = json.loads(cli(etcd_server, etcd_prefix, "ipam", "show", "--json").stdout)
    assert show["pools"]["race"]["allocated"] == 1000
    blocks = [b for bs in show["hosts"].values() for b in bs]
    assert set(show["hosts"]) == {f"host{i}" for i in range(4)}  # no block without a host
    assert all(b["used"] > 0 for b in blocks)  # and none claimed for nothing
    # 250 per host in /29 blocks: a host needs 32; racing tasks may claim a few more.
    assert len(blocks) <= 4 * 36


def test_kill_9_mid_run_then_check_finds_and_gc_repairs(
    etcd_server: EtcdCluster, etcd_prefix: str
) -> None:
    assert cli(etcd_server, etcd_prefix, "apply", "-f", "-", stdin=POOLS).returncode == 0
    procs = [start(etcd_server, etcd_prefix, f"host{i}", 250) for i in range(4)]
    victim = procs[3]
    assert victim.stdout is not None
    for _ in range(60):  # let it get well into its run
        victim.stdout.readline()
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=10)
    survivors: list[tuple[IPAddress, str]] = []
    for p in procs[:3]:
        lines, err = collect(p)
        assert p.returncode == 0, err
        survivors += lines
    assert len({ip for ip, _ in survivors}) == 750

    # The killed host is still registered: at most a half-finished claim is left.
    time.sleep(0.1)
    before = cli(etcd_server, etcd_prefix, "ipam", "check", "--json", "--grace", "0")
    kinds = {i["kind"] for i in json.loads(before.stdout)}
    assert kinds <= {"half-finished-claim"}, before.stdout
    # Decommission it: everything it held is now reported, then repaired.
    assert cli(etcd_server, etcd_prefix, "delete", "node", "host3").returncode == 0
    found = cli(etcd_server, etcd_prefix, "ipam", "check", "--json")
    assert found.returncode == 3
    kinds = {i["kind"] for i in json.loads(found.stdout)}
    assert {"block-of-missing-host", "allocation-of-missing-host"} <= kinds, found.stdout
    gc = cli(etcd_server, etcd_prefix, "ipam", "gc")
    assert gc.returncode == 0, gc.stderr
    after = cli(etcd_server, etcd_prefix, "ipam", "check")
    assert after.returncode == 0, after.stdout
    show = json.loads(cli(etcd_server, etcd_prefix, "ipam", "show", "--json").stdout)
    assert show["pools"]["race"]["allocated"] == 750
    assert set(show["hosts"]) == {"host0", "host1", "host2"}
