"""A real ``meshroute node`` under test: its config written for a network
namespace (the process stays in the root namespace with etcd on loopback,
ExaBGP and routes live in the namespace), started and stopped by PID, seen
through its HTTP endpoint; and pods created behind it by Debian's bridge
plugin with ``meshroute-cni-ipam``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from lab.etcd import EtcdCluster
from lab.netns import Netns, NetnsFactory, plug
from lab.poll import http_get, wait_for
from lab.ports import free_ports

REPO = Path(__file__).resolve().parents[1]
BRIDGE = "/usr/lib/cni/bridge"
Metrics = dict[tuple[str, frozenset[tuple[str, str]]], float]
__all__ = [
    "BRIDGE",
    "REPO",
    "Metrics",
    "NodeUnderTest",
    "add_pod",
    "add_pod_ips",
    "node_in",
    "nodes_on_switch",
    "wait_for",
]


@dataclass
class NodeUnderTest:
    name: str
    ns: Netns
    address: str  # underlay address, no prefix length
    work: Path
    http: str
    socket: str
    proc: subprocess.Popen[bytes] | None = None

    @property
    def config(self) -> Path:
        return self.work / "node.yaml"

    @property
    def bgp_dir(self) -> Path:
        return self.work / "bgp"

    def start(self, log: Path | None = None, env: Mapping[str, str] | None = None) -> None:
        with open(log or self.work / "node.log", "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "meshroute.cli", "node", "--config", str(self.config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                env={**os.environ, **(env or {})},
            )

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def get(self, path: str) -> tuple[int, bytes]:
        return http_get(self.http, path)

    def wait_ready(self, timeout: float = 60) -> None:
        try:
            wait_for(f"{self.name} ready", lambda: self.get("/readiness")[0] == 200, timeout)
        except TimeoutError:
            why = f"{self.name}: {self.get('/readiness')} {self.get('/status')}"
            raise TimeoutError(why) from None

    def status(self) -> dict[str, Any]:
        code, body = self.get("/status")
        return json.loads(body) if code == 200 else {}

    def metrics(self) -> Metrics:
        text = self.get("/metrics")[1].decode()
        return {
            (s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text)
            for s in fam.samples
        }

    def routes(self, *extra: str) -> list[dict[str, Any]]:
        """The routes this node owns (proto 213) in its namespace."""
        return json.loads(self.ns.ip("-j", "route", "show", "proto", "213", *extra) or "[]")

    def exabgp_pid(self) -> int:
        """The ExaBGP the node's speaker runs now (it records the PID)."""
        return int((self.bgp_dir / "exabgp.pid").read_text().split()[0])

    def logs(self) -> str:
        out = []
        for f in (self.work / "node.log", self.bgp_dir / "exabgp.log"):
            if f.exists():
                out.append(f"--- {f} (tail) ---\n{f.read_text()[-3000:]}")
        return "\n".join(out)


def node_in(
    ns: Netns,
    name: str,
    address: str,
    prefixlen: int,
    etcd: EtcdCluster | str,
    etcd_prefix: str,
    work: Path,
    **extra: Any,
) -> NodeUnderTest:
    """Write the node.yaml of a node whose network lives in ``ns``; ``extra``
    replaces top-level sections."""
    endpoint = etcd if isinstance(etcd, str) else etcd.endpoint
    work.mkdir(parents=True, exist_ok=True)
    http = f"127.0.0.1:{free_ports(1)[0]}"
    config: dict[str, Any] = {
        "nodeName": name,
        "ipv4": f"{address}/{prefixlen}",
        "netns": ns.name,
        "etcd": {"endpoints": [endpoint], "prefix": etcd_prefix},
        "ipam": {"socket": str(work / "ipam.sock"), "l2Segment": True},
        "bgp": {"workDir": str(work / "bgp")},
        "http": {"listen": http},
        **extra,
    }
    (work / "node.yaml").write_text(yaml.safe_dump(config))
    return NodeUnderTest(name, ns, address, work, http, config["ipam"]["socket"])


def nodes_on_switch(
    sw: Netns,
    netns: NetnsFactory,
    addresses: Mapping[str, str],
    etcd: EtcdCluster | str,
    etcd_prefix: str,
    work: Path,
    prefixlen: int = 24,
) -> list[NodeUnderTest]:
    """A node per (name, underlay address), each in its own namespace on
    the switch ``sw`` (``lab.netns.switch``), forwarding on, not started."""
    out = []
    for name, address in addresses.items():
        ns = netns.new(name)
        plug(sw, ns, f"p-{name}"[:15], f"{address}/{prefixlen}")
        ns.sh("sysctl -qw net.ipv4.ip_forward=1")
        out.append(node_in(ns, name, address, prefixlen, etcd, etcd_prefix, work / name))
    return out


def add_pod(
    node: NodeUnderTest, netns: NetnsFactory, cni_bin: Path, label: str
) -> tuple[Netns, str]:
    """A pod behind ``node`` (bridge plugin on cni0, meshroute IPAM); its
    namespace and address."""
    pod, ips = add_pod_ips(node, netns, cni_bin, label)
    return pod, ips[0]


def add_pod_ips(
    node: NodeUnderTest, netns: NetnsFactory, cni_bin: Path, label: str, *, ipv6: bool = False
) -> tuple[Netns, list[str]]:
    """``add_pod`` with an IPv6 address too when ``ipv6``; every address."""
    pod = netns.new(label)
    conf = {
        "cniVersion": "1.0.0",
        "name": "pods",
        "type": "bridge",
        "bridge": "cni0",
        "isGateway": True,
        "ipam": {"type": "meshroute-cni-ipam", "socket": node.socket, "assign_ipv6": ipv6},
    }
    env = {
        "PATH": os.environ["PATH"],
        "CNI_COMMAND": "ADD",
        "CNI_CONTAINERID": pod.name,
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
    return pod, [ip["address"].split("/")[0] for ip in json.loads(p.stdout)["ips"]]
