"""Real etcd servers: one member or a three-member cluster on
loopback, each with a temporary data dir, stopped by the PID we started."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from lab.netns import call_in_netns
from lab.ports import free_ports

ETCD = "/usr/bin/etcd"


@dataclass
class EtcdMember:
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    log_path: Path
    cluster: str
    proc: subprocess.Popen[bytes] | None = None
    host: str = "127.0.0.1"
    # run inside this network namespace (the lab's management namespace,
    # which starts the member itself from ``argv``)
    netns: str | None = None

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.client_port}"

    def argv(self, *, new_cluster: bool = True) -> list[str]:
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        return [
            *prefix,
            ETCD,
            "--name",
            self.name,
            "--data-dir",
            str(self.data_dir),
            "--listen-client-urls",
            f"http://{self.host}:{self.client_port}",
            "--advertise-client-urls",
            f"http://{self.host}:{self.client_port}",
            "--listen-peer-urls",
            f"http://{self.host}:{self.peer_port}",
            "--initial-advertise-peer-urls",
            f"http://{self.host}:{self.peer_port}",
            "--initial-cluster",
            self.cluster,
            "--initial-cluster-state",
            "new" if new_cluster else "existing",
            "--initial-cluster-token",
            f"meshroute-test-{os.getpid()}",
            "--heartbeat-interval",
            "50",
            "--election-timeout",
            "500",
            "--log-level",
            "warn",
        ]

    def start(self, *, new_cluster: bool = True) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen(
            self.argv(new_cluster=new_cluster), stdout=log, stderr=subprocess.STDOUT
        )
        log.close()

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def healthy(self) -> bool:
        def probe() -> bool:
            try:
                with urllib.request.urlopen(
                    f"http://{self.host}:{self.client_port}/health", timeout=0.5
                ) as r:
                    return b'"true"' in r.read()
            except OSError:
                return False

        return probe() if self.netns is None else call_in_netns(self.netns, probe)


@dataclass
class EtcdCluster:
    members: list[EtcdMember] = field(default_factory=list)

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    @property
    def endpoint(self) -> str:
        return self.members[0].endpoint

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def port(self) -> int:
        return self.members[0].client_port

    def wait_healthy(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(m.proc is None or m.healthy() for m in self.members):
                return
            for m in self.members:
                if m.proc is not None and m.proc.poll() is not None:
                    raise RuntimeError(f"etcd {m.name} exited: {m.log_path.read_text()[-2000:]}")
            time.sleep(0.05)
        raise TimeoutError("etcd did not become healthy")

    def stop(self) -> None:
        for m in self.members:
            m.kill(signal.SIGTERM)


def start_etcd(workdir: Path, size: int = 1) -> EtcdCluster:
    ports = free_ports(2 * size)
    names = [f"m{i}" for i in range(size)]
    cluster = ",".join(f"{n}=http://127.0.0.1:{ports[2 * i + 1]}" for i, n in enumerate(names))
    members = []
    for i, name in enumerate(names):
        d = workdir / name
        d.mkdir(parents=True, exist_ok=True)
        members.append(
            EtcdMember(
                name,
                ports[2 * i],
                ports[2 * i + 1],
                d / "data",
                d / "log",
                cluster,
            )
        )
    c = EtcdCluster(members)
    try:
        for m in members:
            m.start()
        c.wait_healthy()
    except BaseException:
        c.stop()
        raise
    return c


def lab_member(workdir: Path, netns: str | None, host: str, port: int = 2379) -> EtcdMember:
    """A one-member cluster for the lab on ``host`` (in namespace ``netns``
    if given); the lab starts ``argv()`` itself, detached."""
    d = workdir / "m0"
    d.mkdir(parents=True, exist_ok=True)
    cluster = f"m0=http://{host}:{port + 1}"
    return EtcdMember("m0", port, port + 1, d / "data", d / "log", cluster, host=host, netns=netns)
