"""Two real ``meshroute node`` processes on one subnet, each programming its
own network namespace, on a real etcd: they peer over BGP (ExaBGP), learn
each other's block, install a direct route, and pods created by Debian's
bridge plugin ping across. Then the operator's view: status, readiness,
metrics; and a kill -9 of a node during a ping loses nothing."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from ipam.cni_install import install_plugin
from tests.harness.etcd import EtcdCluster
from tests.harness.netns import Netns, NetnsFactory, veth
from tests.harness.ports import free_ports

pytestmark = [pytest.mark.etcd, pytest.mark.netns, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
BRIDGE = "/usr/lib/cni/bridge"
POOLS = """
apiVersion: meshroute.io/v1
kind: IPPool
metadata: {name: pods}
spec: {cidr: 10.244.0.0/16, blockSize: 26, vxlanMode: CrossSubnet}
"""


def wait_for(what: str, pred: Callable[[], Any], timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@dataclass
class Node:
    name: str
    ns: Netns
    address: str
    config: Path
    http: str
    socket: str
    proc: subprocess.Popen[bytes] | None = None

    def start(self, log: Path, env: dict[str, str] | None = None) -> None:
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "meshroute.cli", "node", "--config", str(self.config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                env={**os.environ, **(env or {})},
            )

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://{self.http}{path}", timeout=2) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()
        except OSError:
            return 0, b""

    def routes(self) -> list[dict[str, Any]]:
        return json.loads(self.ns.ip("-j", "route", "show", "proto", "213") or "[]")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def cni(node: Node, command: str, pod: Netns, cid: str, cni_bin: Path) -> dict[str, Any]:
    conf = {
        "cniVersion": "1.0.0",
        "name": "pods",
        "type": "bridge",
        "bridge": "cni0",
        "isGateway": True,
        "ipam": {"type": "meshroute-cni-ipam", "socket": node.socket},
    }
    env = {
        "PATH": os.environ["PATH"],
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": cid,
        "CNI_NETNS": f"/var/run/netns/{pod.name}",
        "CNI_IFNAME": "eth0",
        "CNI_PATH": f"{cni_bin}:/usr/lib/cni",
    }
    p = subprocess.run(
        ["ip", "netns", "exec", node.ns.name, BRIDGE],
        input=json.dumps(conf),
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    return json.loads(p.stdout) if p.stdout.strip() else {}


@dataclass
class Pair:
    a: Node
    b: Node
    cni_bin: Path
    netns: NetnsFactory
    notify: socket.socket  # node A's NOTIFY_SOCKET


@pytest.fixture
def pair(
    etcd_server: EtcdCluster, etcd_prefix: str, netns: NetnsFactory, tmp_path: Path
) -> Iterator[Pair]:
    env = {**os.environ, "MESHROUTE_ETCD": etcd_server.endpoint, "MESHROUTE_PREFIX": etcd_prefix}
    applied = subprocess.run(
        [sys.executable, "-m", "meshroute.cli", "apply", "-f", "-"],
        input=POOLS,
        env=env,
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert applied.returncode == 0, applied.stderr
    a_ns, b_ns = netns.new("nodeA"), netns.new("nodeB")
    veth(a_ns, "eth0", b_ns, "eth0")
    ports = free_ports(2)
    nodes = []
    for i, (ns, addr) in enumerate(((a_ns, "192.0.2.11"), (b_ns, "192.0.2.12"))):
        ns.ip("addr", "add", f"{addr}/24", "dev", "eth0")
        ns.sh("sysctl -qw net.ipv4.ip_forward=1")
        name = f"node-{'ab'[i]}"
        work = tmp_path / name
        work.mkdir()
        config = {
            "nodeName": name,
            "ipv4": f"{addr}/24",
            "netns": ns.name,
            "etcd": {"endpoints": [etcd_server.endpoint], "prefix": etcd_prefix},
            "ipam": {"socket": str(work / "ipam.sock"), "l2Segment": True},
            "bgp": {"workDir": str(work / "bgp"), "gracefulRestartSeconds": 120},
            "http": {"listen": f"127.0.0.1:{ports[i]}"},
        }
        path = work / "node.yaml"
        path.write_text(yaml.safe_dump(config))
        nodes.append(
            Node(
                name,
                ns,
                addr,
                path,
                config["http"]["listen"],  # type: ignore[index]
                config["ipam"]["socket"],
            )
        )  # type: ignore[index]
    cni_bin = tmp_path / "cni-bin"
    install_plugin(cni_bin)
    # Node A runs as systemd would run it: a notify socket and a watchdog.
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(0.2)
    systemd_env = {"NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": "1000000"}
    try:
        for n in nodes:
            n.start(tmp_path / f"{n.name}.log", systemd_env if n is nodes[0] else None)
        for n in nodes:
            try:
                wait_for(f"{n.name} ready", lambda n=n: n.get("/readiness")[0] == 200, 60)
            except AssertionError:
                why = f"{n.name}: {n.get('/readiness')} {n.get('/status')}"
                raise AssertionError(why) from None
        yield Pair(nodes[0], nodes[1], cni_bin, netns, notify)
    finally:
        notify.close()
        for n in nodes:
            n.stop()
        for n in nodes:
            for log in (tmp_path / f"{n.name}.log", tmp_path / n.name / "bgp" / "exabgp.log"):
                if log.exists():
                    sys.stderr.write(f"--- {log} (tail) ---\n{log.read_text()[-3000:]}\n")


def notifications(sock: socket.socket, seconds: float) -> list[bytes]:
    got = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(TimeoutError):
            got.append(sock.recv(4096))
    return got


def test_two_nodes_peer_learn_blocks_and_pods_ping(pair: Pair) -> None:
    a, b = pair.a, pair.b
    told = notifications(pair.notify, 1.5)
    assert any(m.startswith(b"READY=1") for m in told), told
    assert told.count(b"WATCHDOG=1") >= 2, told  # every half WATCHDOG_USEC
    pods = {}
    for n in (a, b):
        pod = pair.netns.new(f"pod-{n.name}")
        res = cni(n, "ADD", pod, f"pod-{n.name}", pair.cni_bin)
        pods[n.name] = (pod, res["ips"][0]["address"].split("/")[0])

    def learned(n: Node, via: str) -> list[dict[str, Any]]:
        return [r for r in n.routes() if r.get("gateway") == via]

    [ra] = wait_for("a learns b's block", lambda: learned(a, b.address))
    [rb] = wait_for("b learns a's block", lambda: learned(b, a.address))
    assert ra["dev"] == "eth0" and rb["dev"] == "eth0"  # same subnet: direct, no tunnel
    pod_a, ip_a = pods[a.name]
    pod_b, ip_b = pods[b.name]
    assert re.sub(r"\.\d+$", "", ip_b) in ra["dst"]
    out = pod_a.sh(f"ping -c 3 -i 0.2 -W 2 {ip_b}", check=False)
    assert " 0% packet loss" in out, out

    status = json.loads(a.get("/status")[1])
    assert [(p["peer"], p["state"], p["type"]) for p in status["peers"]] == [
        (b.address, "established", "node-to-node mesh")
    ]
    assert status["peers"][0]["accepted"] == 1
    metrics = a.get("/metrics")[1].decode()
    assert 'meshroute_bgp_peers{state="established"} 1.0' in metrics
    assert 'meshroute_routes_programmed{kind="direct"} 1.0' in metrics
    assert re.search(r'meshroute_reconcile_seconds_count\{pass="full"\} [1-9]', metrics), metrics
    text = subprocess.run(
        [sys.executable, "-m", "meshroute.cli", "status", "--endpoint", a.http],
        capture_output=True,
        text=True,
        cwd=REPO,
    ).stdout
    assert b.address in text and "established" in text and "1/1" in text

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
    a.start(a.config.parent / "restart.log")
    wait_for("a ready again", lambda: a.get("/readiness")[0] == 200, 60)
    out, _ = ping.communicate(timeout=30)
    assert " 0% packet loss" in out, out
    assert learned(a, b.address) and learned(b, a.address)
