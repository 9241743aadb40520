"""The container images, built with ``make image``'s script and run as an
operator runs them: through our Quadlet units (configs/systemd/*.container),
turned into systemd services by Podman Quadlet's own generator and run the
way systemd runs them (ExecStartPre, ExecStart under a notify socket,
ExecStopPost, ExecStop). A small lab on one L2 segment (a bridge in a
``lan`` namespace) holds etcd, a BIRD top-of-rack router, the reflector
container and two node containers, each started inside its own lab
namespace (the units say ``Network=host``). The CNI plugins come from the
node unit's installer step. Checked: READY=1 and watchdog pings from every
container, the reflector's and the ToR's sessions with both nodes, the ToR
learns both nodes' pod blocks, a pod behind one node container pings a pod
behind the other; then the reflector's lifecycle: BIRD killed inside the
container is restarted by the reflector, the reflector killed ends its
container (and BIRD with it) with the status systemd restarts on, and the
restarted unit brings the sessions back.

    lan (br0) 192.0.2.0/24
      .100 etcd       .1 BIRD ToR (AS 65001)      .2 meshroute-reflector
      .11 meshroute-node a   .12 meshroute-node b   (AS 64512, no mesh)

Budget, measured on the shared 2-core development machine: from nothing
(debootstrap base and both images) 2.5 min when it was quiet, up to 6 min
under load (17 min at load 40-50); with podman's layer cache warm 30-50 s
in all. The lab with the reflector's lifecycle: 67 s at load 40-50 (2 min
45 s in all with a warm cache)."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
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
from tests.harness.quadlet import GeneratedService, generate

pytestmark = [pytest.mark.slow, pytest.mark.netns, pytest.mark.timeout(1200)]
# its own tag: other runs of this test on the same podman storage retag theirs
TAG = f"smoke-{os.getpid()}"
# Quadlet's ExecStart puts conmon and the container in sub-cgroups of the
# unit's own cgroup (Delegate=yes). Without systemd as PID 1 there is no
# such cgroup, and podman stops ("could not find cgroup mount in
# /proc/self/cgroup"): here the command runs without this one flag, every
# other one as generated.
SPLIT_CGROUPS = "--cgroups=split"
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
def images() -> Iterator[dict[str, str]]:
    p = subprocess.run(
        [str(REPO / "docker" / "build.sh")],
        env={**os.environ, "TAG": TAG, "CONTAINERS_CONF": CONF},
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert p.returncode == 0, p.stdout + p.stderr[-3000:]
    sys.stderr.write(p.stdout)  # the sizes, for the record
    tagged = {k: f"localhost/meshroute-{k}:{TAG}" for k in ("node", "reflector")}
    yield tagged
    for name in tagged.values():  # the layers stay cached for the next run
        podman("untag", name, name)


class Notify:
    """A NOTIFY_SOCKET as systemd holds one for a unit: what was said on it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.said: set[str] = set()

    def heard(self) -> set[str]:
        with contextlib.suppress(BlockingIOError):
            while True:
                self.said.update(self.sock.recv(4096).decode().splitlines())
        return self.said

    def close(self) -> None:
        self.sock.close()


@dataclass
class Container:
    """One of our Quadlet units on this machine: the systemd service Quadlet
    generated for it, run the way systemd runs it (ExecStartPre, ExecStart
    with the unit's environment and a notify socket, ExecStopPost after the
    main process ends, ExecStop to stop it), inside the lab namespace ``ns``
    (``Network=host``: podman runs in the namespace and the container shares
    it)."""

    unit: GeneratedService
    name: str
    ns: Netns
    work: Path
    http: str  # inside ns
    notify: Notify | None = None

    def _run(self, argv: list[str], env: dict[str, str] | None = None, check: bool = True) -> None:
        p = subprocess.run(
            # only the network namespace: podman's mounts stay the host's
            ["nsenter", f"--net=/run/netns/{self.ns.name}", *argv],
            env={**os.environ, "CONTAINERS_CONF": CONF, **(env or {})},
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert p.returncode == 0 or not check, f"{shlex.join(argv)}: {p.stderr[-2000:]}"

    def start(self, pre: Callable[[list[str]], list[str]] = lambda argv: argv) -> None:
        """ExecStartPre (each through ``pre``), then ExecStart; systemd's
        WATCHDOG_USEC comes from WatchdogSec (30 s), shortened to 2 s here
        so that pings arrive within the test's patience."""
        rt = self.work / "rt"
        rt.mkdir(exist_ok=True)
        for argv in self.unit.commands("ExecStartPre", rt):
            self._run(pre(argv))
        if self.notify is not None:
            self.notify.close()
            self.notify.path.unlink()
        self.notify = Notify(self.work / "notify.sock")
        env = {
            **self.unit.environment(),
            "NOTIFY_SOCKET": str(self.notify.path),
            "WATCHDOG_USEC": "2000000",
        }
        (argv,) = self.unit.commands("ExecStart", rt)
        self._run([a for a in argv if a != SPLIT_CGROUPS], env)

    def stopped(self) -> None:
        """What systemd runs once the main process has ended (ExecStopPost,
        whose failure systemd ignores: the unit says '-')."""
        for argv in self.unit.commands("ExecStopPost", self.work / "rt"):
            self._run(argv, check=False)
        # Podman 4.4 and later remove the --cidfile with the container, and
        # Quadlet relies on it (it no longer generates the ExecStartPre
        # 'rm -f %t/%N.cid' it once had); podman 4.3 leaves the file, and
        # the next ExecStart would refuse to run: what that line did, here.
        (self.work / "rt" / f"{self.unit.name.removesuffix('.service')}.cid").unlink(
            missing_ok=True
        )

    def stop(self) -> None:
        for argv in self.unit.commands("ExecStop", self.work / "rt"):
            self._run(argv)
        self.stopped()

    def wait_notified(self, *messages: str) -> None:
        assert self.notify is not None
        notify = self.notify
        wait_for(
            f"{' and '.join(messages)} from {self.name}",
            lambda: set(messages) <= notify.heard(),
            90,
        )

    def get(self, path: str) -> tuple[int, bytes]:
        return call_in_netns(self.ns.name, lambda: http_get(self.http, path))

    def status(self) -> dict[str, Any]:
        code, body = self.get("/status")
        return json.loads(body) if code == 200 else {}

    def running(self) -> bool:
        p = podman("container", "inspect", "--format", "{{.State.Running}}", self.name)
        return p.returncode == 0 and p.stdout.strip() == "true"

    def logs(self) -> str:
        p = podman("logs", self.name)
        return f"--- {self.name} ---\n{(p.stdout + p.stderr)[-4000:]}\n"


def site_unit(kind: str, work: Path, cni: Path, label: str) -> str:
    """configs/systemd/meshroute-KIND.container as this site has it: the
    image under test, a container name of its own, host directories under
    ``work`` (and ``cni`` for /opt/cni). Nothing else changes."""
    text = (REPO / "configs" / "systemd" / f"meshroute-{kind}.container").read_text()
    site = {
        f"Image=localhost/meshroute-{kind}:latest": f"Image=localhost/meshroute-{kind}:{TAG}",
        "meshroute-node:latest install-cni": f"meshroute-node:{TAG} install-cni",
        f"ContainerName=meshroute-{kind}\n": f"ContainerName={container_name(label)}\n",
        "Volume=/etc/meshroute:": f"Volume={work / 'etc'}:",
        "Volume=/run/meshroute:": f"Volume={work / 'run'}:",
        "mkdir -p /run/meshroute": f"mkdir -p {work / 'run'}",
        " /opt/cni/bin": f" {cni / 'bin'}",
        "-v /opt/cni:/opt/cni": f"-v {cni}:/opt/cni",
    }
    for old, new in site.items():
        text = text.replace(old, new)
    return text


def container_name(label: str) -> str:
    return f"meshroute-smoke-{label}-{os.getpid()}"


def generated(kind: str, work: Path, cni: Path, label: str) -> GeneratedService:
    """The systemd service Quadlet generates from our unit for ``kind``, as
    this site has it (``site_unit``)."""
    units = work / "units"
    units.mkdir(parents=True)
    (units / f"meshroute-{kind}.container").write_text(site_unit(kind, work, cni, label))
    return generate(units)[f"meshroute-{kind}.service"]


@dataclass
class Lab:
    lan: Lan
    tmp: Path
    etcd: EtcdMember
    tor: Bird
    containers: list[Container]

    def unit(self, kind: str, label: str, ns: Netns, config: dict[str, Any]) -> Container:
        """Our Quadlet unit for ``kind`` through Quadlet's generator, with
        ``config`` as its /etc/meshroute/KIND.yaml; not started."""
        work = self.tmp / label
        unit = generated(kind, work, self.tmp / "opt-cni", label)
        (work / "etc").mkdir()
        (work / "etc" / f"{kind}.yaml").write_text(yaml.safe_dump(config))
        c = Container(unit, container_name(label), ns, work, config["http"]["listen"])
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
            if c.notify is not None:
                c.notify.close()
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


def install_cni_here(cni: Path) -> Callable[[list[str]], list[str]]:
    """The node unit's ExecStartPre as this site needs it: the host's CNI
    directory is not /opt/cni here, so the installer is told where it is
    (HOST_CNI_DIR), as an operator with another directory would tell it."""

    def pre(argv: list[str]) -> list[str]:
        if argv[-1] != "install-cni":
            return argv
        i = argv.index("run") + 1
        return [*argv[:i], f"--env=HOST_CNI_DIR={cni}", *argv[i:]]

    return pre


def test_generated_services_are_the_units_systemd_expects(tmp_path: Path) -> None:
    """What Quadlet makes of our units, checked where it matters: Type=notify
    with the container's notifications accepted, the restart policy, and
    the podman flags that make the container what the units promise."""
    for kind, caps in (
        ("reflector", ["cap_net_bind_service"]),
        ("node", ["cap_net_admin", "cap_net_raw", "cap_net_bind_service"]),
    ):
        u = generated(kind, tmp_path / kind, tmp_path / "opt-cni", kind)
        assert (u.value("Type"), u.value("NotifyAccess")) == ("notify", "all"), u.text
        assert (u.value("Restart"), u.value("WatchdogSec"), u.value("KillMode")) == (
            "on-failure",
            "30",
            "mixed",
        )
        (argv,) = u.commands("ExecStart", tmp_path)
        assert argv[:4] == ["/usr/bin/podman", "run", "--name", container_name(kind)], argv
        flags = set(argv)
        assert {"--sdnotify=container", "--env=WATCHDOG_USEC", "--read-only", "-d"} <= flags
        assert {"--security-opt=no-new-privileges", "--replace", "--rm", SPLIT_CGROUPS} <= flags
        assert argv[argv.index("--network") + 1] == "host"
        assert argv[argv.index("--cap-drop") + 1] == "all"
        assert [argv[i + 1] for i, a in enumerate(argv) if a == "--cap-add"] == caps
        image = argv.index(f"localhost/meshroute-{kind}:{TAG}")
        assert argv[image + 1 :] == [
            "meshroute", kind, "--config", f"/etc/meshroute/{kind}.yaml"
        ]  # fmt: skip
        assert u.commands("ExecStop", tmp_path)[0][:3] == ["/usr/bin/podman", "rm", "-v"]
    pre = u.commands("ExecStartPre", tmp_path)
    assert pre[-1][-2:] == [f"localhost/meshroute-node:{TAG}", "install-cni"], pre


def node_sessions(c: Container) -> dict[str, str]:
    return {p["peer"]: p["state"] for p in c.status().get("peers", [])}


def test_the_node_image_runs_bfds_compiled_path(images: dict[str, str]) -> None:
    """The BFD daemon's engine (bgpd/bfd/engine.c) is built in the build
    stage, which alone has a compiler: the node image must load and run it."""
    code = "from bgpd.bfd.engine import Engine; e = Engine(); e.start(); e.close(); print('ran')"
    p = podman(
        "run", "--rm", "--network=none", "--entrypoint", "/opt/meshroute/bin/python",
        images["node"], "-c", code,
    )  # fmt: skip
    assert (p.returncode, p.stdout.strip()) == (0, "ran"), p.stderr[-2000:]


def test_reflector_and_node_images_in_a_lab(images: dict[str, str], lab: Lab) -> None:
    cni = lab.tmp / "opt-cni"
    rr = lab.unit(
        "reflector",
        "rr",
        lab.lan.member("rr", RR_IP),
        {
            "name": "rr1",
            "ipv4": f"{RR_IP}/24",
            "clusterId": "244.0.0.1",
            "etcd": etcd_section(),
            "bird": {"workDir": "/run/meshroute/reflector", "errorWaitSeconds": [1, 3]},
            "http": {"listen": f"{RR_IP}:9098"},
        },
    )
    rr.start()
    # as systemd runs it: Type=notify, the watchdog pinged
    rr.wait_notified("READY=1", "WATCHDOG=1")
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
        nodes[name] = lab.unit("node", name, ns, config)
        nodes[name].start(install_cni_here(cni))
    assert (cni / "bin" / "meshroute-cni-ipam").exists() and (cni / "bin" / "bridge").exists()

    def sessions_up() -> bool:
        ss = rr.status().get("sessions", [])
        return sorted((s["node"], s["state"]) for s in ss) == [
            ("node-a", "Established"),
            ("node-b", "Established"),
        ]

    wait_for("the reflector's sessions with both node containers", sessions_up, 90)
    for name in NODES:
        lab.tor.wait_established(proto(name), 60)
        nodes[name].wait_notified("READY=1", "WATCHDOG=1")
        assert nodes[name].get("/readiness")[0] == 200

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

    # The reflector's lifecycle in its container. BIRD dying is the
    # reflector's to repair: it starts BIRD again, the container stays.
    killed = podman(
        "exec", rr.name, "sh", "-c", "kill -9 $(cat /run/meshroute/reflector/bird.pid)"
    )  # fmt: skip
    assert killed.returncode == 0, killed.stderr
    wait_for("BIRD started again", lambda: rr.status().get("birdRestarts") == 1, 30)
    wait_for("the sessions back", sessions_up, 90)
    assert rr.running()

    # The reflector dying is the container's end: BIRD, its child in the
    # container's PID namespace, ends with it (no BIRD outlives meshroute
    # to be adopted, as on a bare host), the container exits with the
    # status systemd's Restart=on-failure acts on, and the restart (the same
    # ExecStart) brings the sessions back.
    waiter = subprocess.Popen(
        ["podman", "wait", rr.name],
        env={**os.environ, "CONTAINERS_CONF": CONF},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    killed = podman("kill", "--signal", "KILL", rr.name)
    assert killed.returncode == 0, killed.stderr
    out, err = waiter.communicate(timeout=60)
    assert out.strip() == "137", (out, err)
    wait_for(
        "node-a sees the reflector's session go",
        lambda: node_sessions(nodes["node-a"]).get(RR_IP) != "established",
        30,
    )
    rr.stopped()
    rr.start()
    rr.wait_notified("READY=1", "WATCHDOG=1")
    wait_for("the sessions with the restarted reflector", sessions_up, 90)
    wait_for(
        "node-a's session with it",
        lambda: node_sessions(nodes["node-a"]).get(RR_IP) == "established",
        60,
    )
    rr.stop()
    assert not rr.running()
