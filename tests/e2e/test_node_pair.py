"""Two real ``meshroute node`` processes on one subnet, each programming its
own network namespace, on a real etcd: they peer over BGP (ExaBGP), learn
each other's block, install a direct route, and pods created by Debian's
bridge plugin ping across. Then the operator's view: status, readiness,
metrics, systemd notifications; and a kill -9 of a node during a ping loses
nothing."""

from __future__ import annotations

import contextlib
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from lab.etcd import EtcdCluster
from lab.netns import NetnsFactory
from lab.node_rig import REPO, NodeUnderTest, add_pod, wait_for
from tests.harness.cli import cli
from tests.harness.node_pair import stop_nodes, two_nodes

pytestmark = [pytest.mark.etcd, pytest.mark.netns, pytest.mark.slow]
POOLS = """
apiVersion: meshroute.io/v1
kind: IPPool
metadata: {name: pods}
spec: {cidr: 10.244.0.0/16, blockSize: 26, vxlanMode: CrossSubnet}
"""


@dataclass
class Pair:
    a: NodeUnderTest
    b: NodeUnderTest
    cni_bin: Path
    netns: NetnsFactory
    notify: socket.socket  # node A's NOTIFY_SOCKET


@pytest.fixture
def pair(
    etcd_server: EtcdCluster, etcd_prefix: str, netns: NetnsFactory, tmp_path: Path
) -> Iterator[Pair]:
    assert cli(etcd_server, etcd_prefix, "apply", "-f", "-", stdin=POOLS).returncode == 0
    nodes, cni_bin = two_nodes(etcd_server, etcd_prefix, netns, tmp_path)
    # Node A runs as systemd would run it: a notify socket and a watchdog.
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(0.2)
    systemd_env = {"NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": "1000000"}
    try:
        for n in nodes:
            n.start(env=systemd_env if n is nodes[0] else None)
        for n in nodes:
            n.wait_ready()
        yield Pair(nodes[0], nodes[1], cni_bin, netns, notify)
    finally:
        notify.close()
        stop_nodes(nodes)


def notifications(sock: socket.socket, seconds: float) -> list[bytes]:
    got = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(TimeoutError):
            got.append(sock.recv(4096))
    return got


def learned(n: NodeUnderTest, via: str) -> list[dict[str, Any]]:
    return [r for r in n.routes() if r.get("gateway") == via]


def test_two_nodes_peer_learn_blocks_and_pods_ping(pair: Pair) -> None:
    a, b = pair.a, pair.b
    told = notifications(pair.notify, 1.5)
    assert any(m.startswith(b"READY=1") for m in told), told
    assert told.count(b"WATCHDOG=1") >= 2, told  # every half WATCHDOG_USEC
    pod_a, ip_a = add_pod(a, pair.netns, pair.cni_bin, "pod-a")
    pod_b, ip_b = add_pod(b, pair.netns, pair.cni_bin, "pod-b")

    [ra] = wait_for("a learns b's block", lambda: learned(a, b.address))
    [rb] = wait_for("b learns a's block", lambda: learned(b, a.address))
    assert ra["dev"] == "eth0" and rb["dev"] == "eth0"  # same subnet: direct, no tunnel
    assert re.sub(r"\.\d+$", "", ip_b) in ra["dst"]
    out = pod_a.sh(f"ping -c 3 -i 0.2 -W 2 {ip_b}", check=False)
    assert " 0% packet loss" in out, out

    status = a.status()
    assert [(p["peer"], p["state"], p["type"]) for p in status["peers"]] == [
        (b.address, "established", "node-to-node mesh")
    ]
    assert status["peers"][0]["accepted"] == 1

    # the kernel holds the route a moment before the reconciler has recorded
    # its acknowledgement: wait for the node's own count, do not race it
    def counted() -> str | None:
        m = a.get("/metrics")[1].decode()
        return m if 'meshroute_routes_programmed{kind="direct"} 1.0' in m else None

    metrics = wait_for("the node counts the route it programmed", counted)
    assert 'meshroute_bgp_peers{state="established"} 1.0' in metrics
    assert re.search(r'meshroute_reconcile_seconds_count\{pass="full"\} [1-9]', metrics), metrics
    shown = subprocess.run(
        [sys.executable, "-m", "meshroute.cli", "status", "--endpoint", a.http],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    text = shown.stdout
    assert b.address in text and "established" in text and "1/1" in text, shown.stderr

    # kill -9 node A during a ping: the kernel keeps its routes, B keeps A's
    # routes through graceful restart; the restarted node converges.
    ping = subprocess.Popen(
        ["ip", "netns", "exec", pod_b.name, "ping", "-c", "60", "-i", "0.1", "-W", "1", ip_a],
        stdout=subprocess.PIPE,
        text=True,
    )
    time.sleep(1)
    a.stop(signal.SIGKILL)
    assert learned(a, b.address)  # routes stay in A's kernel
    time.sleep(1)
    a.start(a.work / "restart.log")
    a.wait_ready()
    out, _ = ping.communicate(timeout=30)
    assert " 0% packet loss" in out, out
    assert learned(a, b.address) and learned(b, a.address)
