"""A small L2 segment for reflector tests and the benchmark: a bridge in a
``lan`` namespace, members (reflectors, clients) each in their own namespace
with a veth onto it, and ``meshroute reflector`` processes started from a
written reflector.yaml (etcd on the root loopback, BIRD in the member's
namespace through ``netns:``). Everything is ended by PID by the caller's
namespace factory or ``stop``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lab.netns import Netns, NetnsFactory, veth
from lab.poll import http_get
from lab.ports import free_ports

PREFIX_LEN = 24


class Lan:
    def __init__(self, factory: NetnsFactory) -> None:
        self.factory = factory
        self.ns = factory.new("lan")
        self.ns.ip("link", "add", "br0", "type", "bridge")
        self.ns.ip("link", "set", "br0", "up")
        self._n = 0

    def member(self, label: str, *addresses: str) -> Netns:
        """A namespace with ``eth0`` on the bridge carrying ``addresses``
        (each gets /24 unless it says otherwise)."""
        ns = self.factory.new(label)
        self._n += 1
        port = f"p{self._n}"
        veth(ns, "eth0", self.ns, port)
        self.ns.ip("link", "set", port, "master", "br0")
        for a in addresses:
            ns.ip("addr", "add", a if "/" in a else f"{a}/{PREFIX_LEN}", "dev", "eth0")
        return ns


@dataclass
class Reflector:
    name: str
    address: str
    ns: Netns
    workdir: Path
    etcd: str
    prefix: str
    cluster_id: str = "244.0.0.1"
    http_port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def config_path(self) -> Path:
        return self.workdir / "reflector.yaml"

    @property
    def bird_dir(self) -> Path:
        return self.workdir / "bird"

    def write_config(self) -> None:
        if not self.http_port:
            self.http_port = free_ports(1)[0]
        self.workdir.mkdir(parents=True, exist_ok=True)
        cfg = {
            "name": self.name,
            "ipv4": f"{self.address}/{PREFIX_LEN}",
            "clusterId": self.cluster_id,
            "etcd": {"endpoints": [self.etcd], "prefix": self.prefix},
            "bird": {"workDir": str(self.bird_dir), "errorWaitSeconds": [1, 3]},
            "http": {"listen": f"127.0.0.1:{self.http_port}"},
            "netns": self.ns.name,
            **self.extra,
        }
        self.config_path.write_text(yaml.safe_dump(cfg))

    def start(self) -> Reflector:
        self.write_config()
        with open(self.workdir / "reflector.log", "ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "meshroute",
                    "-v",
                    "reflector",
                    "--config",
                    str(self.config_path),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    def log(self) -> str:
        return (self.workdir / "reflector.log").read_text(errors="replace")[-4000:]

    def get(self, path: str) -> tuple[int, bytes]:
        return http_get(f"127.0.0.1:{self.http_port}", path, timeout=5)

    def status(self) -> dict[str, Any]:
        return json.loads(self.get("/status")[1])

    def answering(self) -> bool:
        return self.get("/liveness")[0] != 0

    def bird_pid(self) -> int | None:
        try:
            return int((self.bird_dir / "bird.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def birdc(self, *cmd: str) -> str:
        p = subprocess.run(
            ["birdc", "-s", str(self.bird_dir / "bird.ctl"), *cmd],
            capture_output=True,
            text=True,
            timeout=30,
        )
        return p.stdout

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        """SIGTERM (the reflector ends its BIRD); a BIRD left by a kill -9
        is ended by PID."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        pid = self.bird_pid()
        if pid is not None and _is_bird(pid, self.bird_dir):
            os.kill(pid, signal.SIGKILL)


def _is_bird(pid: int, bird_dir: Path) -> bool:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return str(bird_dir).encode() in cmd
