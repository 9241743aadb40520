"""The container images, built with ``make image``'s script and run as an
operator runs them: a small lab on one L2 segment (a bridge in a ``lan``
namespace) with etcd, a BIRD top-of-rack router, the reflector image and two
node images, each container in its own lab namespace through
``podman run --network ns:``. The CNI plugins come from the node image's
installer. Checked: the reflector's and the ToR's sessions with both nodes,
the ToR learns both nodes' pod blocks, a pod behind one node container pings
a pod behind the other.

    lan (br0) 192.0.2.0/24
      .100 etcd       .1 BIRD ToR (AS 65001)      .2 meshroute-reflector
      .11 meshroute-node a   .12 meshroute-node b   (AS 64512, no mesh)

Budget, measured on the shared 2-core development machine: from nothing
(debootstrap base and both images) 2.5 min when it was quiet, up to 6 min
under load; with podman's layer cache warm 30-50 s in all, the lab ~12 s."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from netaddr import IPNetwork

from lab.etcd import EtcdMember, lab_member
from lab.netns import Netns, NetnsFactory, call_in_netns
from lab.poll import http_get, wait_for
from lab.reflector_rig import Lan
from tests.harness.bgp_peers import Bird, BirdNeighbor, BirdSpec, start_bird
from tests.harness.cli import REPO

pytestmark = [pytest.mark.slow, pytest.mark.netns, pytest.mark.timeout(1200)]
TAG = "smoke"
CONF = str(REPO / "docker" / "containers.conf")
ETCD_IP, TOR_IP, RR_IP = "192.0.2.100", "192.0.2.1", "192.0.2.2"
NODES = {"node-a": "192.0.2.11", "node-b": "192.0.2.12"}
NODE_AS, TOR_AS = 64512, 65001
RESOURCES = f"""
apiVersion: meshroute.io/v1
kind: BGPConfiguration
metadata: {{name: default}}
spec: {{asNumber: {NODE_AS}, nodeToNodeMeshEnabled: false}}
---
apiVersion: meshroute.io/v1
kind: BGPPeer
metadata: {{name: to-reflectors}}
spec: {{nodeSelector: "!has(route-reflector)", peerSelector: "route-reflector == 'true'"}}
---
apiVersion: meshroute.io/v1
kind: BGPPeer
metadata: {{name: tor}}
spec: {{nodeSelector: "!has(route-reflector)", peerIP: {TOR_IP}, asNumber: {TOR_AS}}}
---
apiVersion: meshroute.io/v1
kind: IPPool
metadata: {{name: pods}}
spec: {{cidr: 10.244.0.0/16, blockSize: 26}}
"""


def podman(
    *args: str, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["podman", *args],
        env={**os.environ, "CONTAINERS_CONF": CONF, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def images() -> dict[str, str]:
    p = subprocess.run(
        [str(REPO / "docker" / "build.sh")],
        env={**os.environ, "TAG": TAG, "CONTAINERS_CONF": CONF},
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert p.returncode == 0, p.stdout + p.stderr[-3000:]
    sys.stderr.write(p.stdout)  # the sizes, for the record
    return {k: f"localhost/meshroute-{k}:{TAG}" for k in ("node", "reflector")}


@dataclass
class Container:
    name: str
    ns: Netns
    http: str  # inside ns

    def get(self, path: str) -> tuple[int, bytes]:
        return call_in_netns(self.ns.name, lambda: http_get(self.http, path))

    def status(self) -> dict[str, Any]:
        code, body = self.get("/status")
        return json.loads(body) if code == 200 else {}

    def logs(self) -> str:
        p = podman("logs", self.name)
        return f"--- {self.name} ---\n{(p.stdout + p.stderr)[-4000:]}\n"


@dataclass
class Lab:
    lan: Lan
    tmp: Path
    etcd: EtcdMember
    tor: Bird
    containers: list[Container]

    def run(
        self,
        image: str,
        label: str,
        ns: Netns,
        config: dict[str, Any],
        *caps: str,
        systemd: dict[str, str] | None = None,
    ) -> Container:
        """``image`` in ``ns`` with ``config`` at /etc/meshroute/config.yaml
        and a host directory at /run/meshroute (sockets, daemon files).
        ``systemd``: the NOTIFY_SOCKET and WATCHDOG_USEC systemd would give
        podman, passed on as the Quadlet units do."""
        work = self.tmp / label
        (work / "etc").mkdir(parents=True)
        (work / "run").mkdir()
        (work / "etc" / "config.yaml").write_text(yaml.safe_dump(config))
        name = f"meshroute-smoke-{label}-{os.getpid()}"
        kind = "node" if "node" in image else "reflector"
        p = podman(
            "run", "-d", "--name", name, f"--network=ns:/run/netns/{ns.name}",
            "--cap-drop=all", *[f"--cap-add={c}" for c in caps],
            # as the Quadlet units: ReadOnly=true, NoNewPrivileges=true
            "--read-only", "--security-opt=no-new-privileges",
            "-v", f"{work / 'etc'}:/etc/meshroute:ro", "-v", f"{work / 'run'}:/run/meshroute",
            *(["--sdnotify=container", "--env=WATCHDOG_USEC"] if systemd else []),
            image, "meshroute", kind, "--config", "/etc/meshroute/config.yaml",
            env=systemd,
        )  # fmt: skip
        assert p.returncode == 0, p.stderr
        c = Container(name, ns, config["http"]["listen"])
        self.containers.append(c)
        return c


def proto(node: str) -> str:
    """The ToR's BIRD protocol towards ``node`` (no '-' in BIRD names)."""
    return node.replace("-", "_")


def etcd_section() -> dict[str, Any]:
    return {"endpoints": [f"{ETCD_IP}:2379"], "prefix": "/smoke"}


@pytest.fixture
def lab(netns: NetnsFactory, tmp_path: Path) -> Iterator[Lab]:
    lan = Lan(netns)
    etcd_ns = lan.member("etcd", ETCD_IP)
    etcd = lab_member(tmp_path / "etcd", etcd_ns.name, ETCD_IP)
    etcd.start()
    tor_ns = lan.member("tor", TOR_IP)
    neighbors = tuple(BirdNeighbor(proto(n), ip, NODE_AS, TOR_IP) for n, ip in NODES.items())
    tor = start_bird(tor_ns, tmp_path / "tor", BirdSpec(TOR_IP, TOR_AS, neighbors))
    lab = Lab(lan, tmp_path, etcd, tor, [])
    try:
        wait_for("etcd", etcd.healthy, 20)
        apply = subprocess.run(
            ["ip", "netns", "exec", etcd_ns.name, sys.executable, "-m", "meshroute.cli",
             "apply", "-f", "-", f"--etcd={ETCD_IP}:2379", "--prefix=/smoke"],
            input=RESOURCES, capture_output=True, text=True, timeout=60, cwd=REPO,
        )  # fmt: skip
        assert apply.returncode == 0, apply.stderr
        yield lab
    finally:
        for c in lab.containers:
            sys.stderr.write(c.logs())
            podman("rm", "-f", "-t", "5", c.name)
        tor.stop()
        etcd.kill()


def add_pod(lab: Lab, node_ns: Netns, cni: Path, socket: Path, label: str) -> tuple[Netns, str]:
    """A pod behind a node: the bridge plugin and meshroute-cni-ipam as the
    node image installed them (the host's python3 runs the IPAM plugin)."""
    pod = lab.lan.factory.new(label)
    conf = {
        "cniVersion": "1.0.0",
        "name": "pods",
        "type": "bridge",
        "bridge": "cni0",
        "isGateway": True,
        "ipam": {"type": "meshroute-cni-ipam", "socket": str(socket)},
    }
    env = {
        "PATH": os.environ["PATH"],
        "CNI_COMMAND": "ADD",
        "CNI_CONTAINERID": pod.name,
        "CNI_NETNS": f"/var/run/netns/{pod.name}",
        "CNI_IFNAME": "eth0",
        "CNI_PATH": str(cni),
    }
    p = subprocess.run(
        ["ip", "netns", "exec", node_ns.name, str(cni / "bridge")],
        input=json.dumps(conf),
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    return pod, json.loads(p.stdout)["ips"][0]["address"].split("/")[0]


def pinged(pod: Netns, ip: str) -> bool:
    p = subprocess.run(
        ["ip", "netns", "exec", pod.name, "ping", "-c", "1", "-W", "1", ip],
        capture_output=True,
        timeout=10,
    )
    return p.returncode == 0


def test_reflector_and_node_images_in_a_lab(images: dict[str, str], lab: Lab) -> None:
    cni = lab.tmp / "opt-cni"
    cni.mkdir()
    p = podman(
        "run", "--rm", "-v", f"{cni}:/opt/cni", f"--env=HOST_CNI_DIR={cni}",
        images["node"], "install-cni",
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert (cni / "bin" / "meshroute-cni-ipam").exists() and (cni / "bin" / "bridge").exists()

    rr_ns = lab.lan.member("rr", RR_IP)
    # the reflector runs as systemd runs it (Type=notify, WatchdogSec=2)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(lab.tmp / "notify.sock"))
    notify.settimeout(1)
    systemd = {"NOTIFY_SOCKET": str(lab.tmp / "notify.sock"), "WATCHDOG_USEC": "2000000"}
    rr = lab.run(
        images["reflector"],
        "rr",
        rr_ns,
        {
            "name": "rr1",
            "ipv4": f"{RR_IP}/24",
            "clusterId": "244.0.0.1",
            "etcd": etcd_section(),
            "bird": {"workDir": "/run/meshroute/reflector", "errorWaitSeconds": [1, 3]},
            "http": {"listen": f"{RR_IP}:9098"},
        },
        "CAP_NET_BIND_SERVICE",
        systemd=systemd,
    )
    heard: set[str] = set()

    def ready_and_pinging() -> bool:
        with contextlib.suppress(TimeoutError):
            heard.update(notify.recv(4096).decode().splitlines())
        return {"READY=1", "WATCHDOG=1"} <= heard

    wait_for("READY=1 and watchdog pings from the reflector container", ready_and_pinging, 60)
    notify.close()
    nodes = {}
    for name, ip in NODES.items():
        ns = lab.lan.member(name, ip)
        ns.sh("sysctl -qw net.ipv4.ip_forward=1")
        config = {
            "nodeName": name,
            "ipv4": f"{ip}/24",
            "etcd": etcd_section(),
            "ipam": {"socket": "/run/meshroute/ipam.sock", "l2Segment": True},
            "bgp": {"workDir": "/run/meshroute/bgp"},
            "http": {"listen": f"{ip}:9099"},
        }
        caps = ("CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_NET_BIND_SERVICE")
        nodes[name] = lab.run(images["node"], name, ns, config, *caps)

    def sessions_up() -> bool:
        ss = rr.status().get("sessions", [])
        return sorted((s["node"], s["state"]) for s in ss) == [
            ("node-a", "Established"),
            ("node-b", "Established"),
        ]

    wait_for("the reflector's sessions with both node containers", sessions_up, 90)
    for name in NODES:
        lab.tor.wait_established(proto(name), 60)
        wait_for(f"{name} ready", lambda n=name: nodes[n].get("/readiness")[0] == 200, 60)

    pods = {}
    for name in NODES:
        sock = lab.tmp / name / "run" / "ipam.sock"
        pods[name] = add_pod(lab, nodes[name].ns, cni / "bin", sock, f"pod-{name}")
    (pod_a, ip_a), (_, ip_b) = pods["node-a"], pods["node-b"]
    blocks = {str(IPNetwork(f"{ip}/26").cidr) for ip in (ip_a, ip_b)}
    wait_for(
        "the ToR learns both pod blocks",
        lambda: blocks <= lab.tor.routes_from("node_a") | lab.tor.routes_from("node_b"),
        30,
    )
    wait_for(
        "a pod behind node-a reaches a pod behind node-b",
        lambda: pinged(pod_a, ip_b),
        30,
    )
