"""A real ``meshroute node`` (its own process in the root namespace, ExaBGP
and routes in a test namespace, real etcd) against real external peers in a
second namespace on the same subnet: GoBGP as an eBGP peer configured by a
BGPPeer resource, a BIRD peer with a wrong TCP-MD5 password, a BIRD peer
announcing what import policy must refuse, and ExaBGP killed under a ping.

Layout (192.0.2.0/24 on one veth)::

    pod --cni0-- [node ns] eth0 192.0.2.11 ==== 192.0.2.21 eth0 [peer ns]
                 meshroute node (AS 64512)           BIRD or GoBGP (AS 65020)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from netaddr import IPNetwork

from bgpd.policy import RejectReason
from ipam.cni_install import install_plugin
from lab.etcd import EtcdCluster
from lab.netns import Netns, NetnsFactory, veth
from lab.node_rig import REPO, Metrics, NodeUnderTest, add_pod, node_in, wait_for
from tests.harness.bgp_peers import (
    BirdNeighbor,
    BirdSpec,
    GobgpNeighbor,
    GobgpSpec,
    start_bird,
    start_gobgp,
)

pytestmark = [pytest.mark.etcd, pytest.mark.netns, pytest.mark.slow]
NODE_IP, PEER_IP = "192.0.2.11", "192.0.2.21"
NODE_AS, PEER_AS = 64512, 65020
PEER_BLOCK = "10.244.200.0/26"  # in the pool, claimed by nobody: the peer's own
PEER_LOOPBACK = "10.244.200.1"
POOL = """
apiVersion: meshroute.io/v1
kind: IPPool
metadata: {name: pods}
spec: {cidr: 10.244.0.0/16, blockSize: 26}
"""


def bgp_peer(password: str | None = None, **more: Any) -> str:
    spec: dict[str, Any] = {"peerIP": PEER_IP, "asNumber": PEER_AS, **more}
    if password is not None:
        spec["password"] = password
    doc = {
        "apiVersion": "meshroute.io/v1",
        "kind": "BGPPeer",
        "metadata": {"name": "external"},
        "spec": spec,
    }
    return yaml.safe_dump(doc)


def bird_spec(
    *, password: str | None = None, static: tuple[str, ...] = (), kernel: bool = False
) -> BirdSpec:
    return BirdSpec(
        router_id=PEER_IP,
        local_as=PEER_AS,
        neighbors=(BirdNeighbor("node", NODE_IP, NODE_AS, PEER_IP, password=password),),
        static4=static,
        kernel=kernel,
    )


@dataclass
class Rig:
    """One node in ``node_ns`` and an empty peer namespace beside it."""

    node: NodeUnderTest
    peer_ns: Netns
    netns: NetnsFactory
    tmp: Path
    env: dict[str, str]
    cni_bin: Path
    pods: list[tuple[Netns, str]] = field(default_factory=list)

    @property
    def node_ns(self) -> Netns:
        return self.node.ns

    @property
    def work(self) -> Path:
        return self.node.work

    def apply(self, text: str) -> None:
        p = subprocess.run(
            [sys.executable, "-m", "meshroute.cli", "apply", "-f", "-"],
            input=text,
            env=self.env,
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=30,
        )
        assert p.returncode == 0, p.stderr

    def peer_status(self) -> dict[str, Any]:
        peers = [p for p in self.node.status().get("peers", []) if p["peer"] == PEER_IP]
        return peers[0] if peers else {}

    def established(self) -> bool:
        return self.peer_status().get("state") == "established"

    def metrics(self) -> Metrics:
        return self.node.metrics()

    def routes(self, *extra: str) -> list[dict[str, Any]]:
        return self.node.routes(*extra)

    def via_peer(self) -> set[str]:
        return {r["dst"] for r in self.routes() if r.get("gateway") == PEER_IP}

    def kernel_routes(self, dst: str) -> list[dict[str, Any]]:
        return json.loads(self.node_ns.ip("-j", "route", "show", "exact", dst) or "[]")

    def pod(self) -> tuple[Netns, str, str]:
        """A pod behind the node, its address and the block the node claimed
        for it (with ``l2Segment`` the block is the bridge's connected
        subnet, so no blackhole marks it)."""
        pod, ip = add_pod(self.node, self.netns, self.cni_bin, f"pod{len(self.pods)}")
        self.pods.append((pod, ip))
        return pod, ip, str(IPNetwork(f"{ip}/26").cidr)


@pytest.fixture
def rig(
    etcd_server: EtcdCluster, etcd_prefix: str, netns: NetnsFactory, tmp_path: Path
) -> Iterator[Rig]:
    env = {**os.environ, "MESHROUTE_ETCD": etcd_server.endpoint, "MESHROUTE_PREFIX": etcd_prefix}
    node_ns, peer_ns = netns.new("node"), netns.new("peer")
    veth(node_ns, "eth0", peer_ns, "eth0")
    node_ns.ip("addr", "add", f"{NODE_IP}/24", "dev", "eth0")
    peer_ns.ip("addr", "add", f"{PEER_IP}/24", "dev", "eth0")
    node_ns.sh("sysctl -qw net.ipv4.ip_forward=1")
    node = node_in(node_ns, "node-a", NODE_IP, 24, etcd_server, etcd_prefix, tmp_path / "node")
    cni_bin = tmp_path / "cni-bin"
    install_plugin(cni_bin)
    r = Rig(node, peer_ns, netns, tmp_path, env, cni_bin)
    r.apply(POOL)
    node.start()
    try:
        node.wait_ready(30)
        yield r
    finally:
        node.stop()
        sys.stderr.write(node.logs() + "\n")


def established_count(r: Rig) -> float:
    return r.metrics().get(("meshroute_bgp_peers", frozenset({("state", "established")})), -1)


def test_gobgp_external_peer_learns_our_block_and_we_install_its_route(rig: Rig) -> None:
    _, _, block = rig.pod()
    gobgp = start_gobgp(
        rig.peer_ns,
        rig.tmp / "gobgp",
        GobgpSpec(PEER_IP, PEER_AS, (GobgpNeighbor(NODE_IP, NODE_AS),)),
    )
    try:
        rig.apply(bgp_peer())  # the node learns of the peer from etcd: a reload
        gobgp.wait_established(NODE_IP, 20)
        wait_for("node sees the session", rig.established, 10)
        assert rig.peer_status()["type"] == "global"
        wait_for("GoBGP learns the node's block", lambda: block in gobgp.rib(), 10)
        path = json.loads(gobgp.cli("global", "rib", "-a", "ipv4", block, "-j"))[block][0]
        nexthops = [a.get("nexthop") for a in path["attrs"] if "nexthop" in a]
        assert nexthops == [NODE_IP], path

        gobgp.add_route(PEER_BLOCK)
        wait_for("the node installs GoBGP's route", lambda: PEER_BLOCK in rig.via_peer(), 10)
        [r] = rig.routes(PEER_BLOCK)
        assert (r["gateway"], r["dev"]) == (PEER_IP, "eth0")  # same subnet: direct
        assert rig.peer_status()["accepted"] == 1
        assert established_count(rig) == 1
    finally:
        gobgp.stop()


def test_routes_are_installed_as_learned_and_nothing_swept_before_the_sync(rig: Rig) -> None:
    """A restarted node with a peer that answers and one that never does:
    bgpd is not synced until its timeout (30 s), yet what the live peer sends
    is in the kernel at once, and the last run's route stays until the
    sync; then it goes."""
    rig.node.stop()
    silent = yaml.safe_load(bgp_peer())
    silent["metadata"]["name"] = "silent"
    silent["spec"]["peerIP"] = "192.0.2.99"  # nobody: never sends End-of-RIB
    rig.apply(bgp_peer() + "---\n" + yaml.safe_dump(silent))
    stale = "10.244.77.0/26"  # the last run's, learned from nobody now
    rig.node_ns.ip("route", "add", stale, "via", PEER_IP, "proto", "213")
    gobgp = start_gobgp(
        rig.peer_ns,
        rig.tmp / "gobgp",
        GobgpSpec(PEER_IP, PEER_AS, (GobgpNeighbor(NODE_IP, NODE_AS),)),
    )
    try:
        gobgp.add_route(PEER_BLOCK)
        started = time.monotonic()
        rig.node.start()
        wait_for("the node installs GoBGP's route", lambda: PEER_BLOCK in rig.via_peer(), 20)
        assert time.monotonic() - started < 25  # bgpd syncs at 30 s
        assert rig.kernel_routes(stale), "swept before bgpd was synced"
        wait_for("the stale route swept after the sync", lambda: not rig.kernel_routes(stale), 40)
        assert PEER_BLOCK in rig.via_peer()
    finally:
        gobgp.stop()


def test_wrong_md5_password_never_comes_up_the_right_one_does(rig: Rig) -> None:
    rig.apply(bgp_peer(password="s3cret pass"))
    bird = start_bird(rig.peer_ns, rig.tmp / "bird", bird_spec(password="wrong pass"))
    try:
        wait_for("the node configures the peer", rig.peer_status, 10)
        time.sleep(10)
        assert rig.peer_status()["state"] != "established"
        assert not bird.established("node")
        assert established_count(rig) == 0

        bird.reconfigure(bird_spec(password="s3cret pass"))
        bird.wait_established("node", 20)
        wait_for("the node sees the session", rig.established, 10)
        assert established_count(rig) == 1
    finally:
        bird.stop()


def test_import_policy_refuses_foreign_default_and_own_block(rig: Rig) -> None:
    _, _, own = rig.pod()
    refused = {
        "198.51.100.0/24": RejectReason.NOT_IN_POOL,
        "0.0.0.0/0": RejectReason.DEFAULT_ROUTE,
        own: RejectReason.OWN_BLOCK,
    }
    rig.apply(bgp_peer())
    bird = start_bird(rig.peer_ns, rig.tmp / "bird", bird_spec(static=(*refused, PEER_BLOCK)))
    try:
        bird.wait_established("node", 20)
        wait_for("the node receives all four", lambda: rig.peer_status().get("received") == 4)
        wait_for("the legitimate /26 installed", lambda: PEER_BLOCK in rig.via_peer(), 10)
        assert rig.via_peer() == {PEER_BLOCK}
        [connected] = rig.kernel_routes(own)  # still the bridge's subnet, not via the peer
        assert connected["dev"] == "cni0" and "gateway" not in connected, connected
        assert rig.node_ns.ip("route", "show", "default") == ""
        assert rig.node_ns.ip("route", "show", "198.51.100.0/24") == ""
        status = rig.peer_status()
        assert status["accepted"] == 1
        metrics = rig.metrics()
        for reason in refused.values():
            key = (
                "meshroute_bgp_prefixes_rejected_total",
                frozenset({("peer", PEER_IP), ("reason", reason.value)}),
            )
            assert metrics.get(key) == 1, (reason, sorted(k for k in metrics if "rejected" in k[0]))
        family = frozenset({("peer", PEER_IP), ("family", "ipv4")})
        assert metrics[("meshroute_bgp_prefixes_accepted", family)] == 1
    finally:
        bird.stop()


@pytest.mark.parametrize("action", ["drop", "close"])
def test_max_prefix_drops_the_excess_or_closes_the_session(rig: Rig, action: str) -> None:
    blocks = ("10.244.200.0/26", "10.244.201.0/26", "10.244.202.0/26")
    rig.apply(bgp_peer(maxPrefix=2, maxPrefixAction=action))
    bird = start_bird(rig.peer_ns, rig.tmp / "bird", bird_spec(static=blocks))
    try:
        if action == "drop":
            bird.wait_established("node", 20)
            wait_for("the node receives all three", lambda: rig.peer_status().get("received") == 3)
            wait_for("two installed", lambda: len(rig.via_peer()) == 2, 10)
            time.sleep(1)
            assert rig.established() and len(rig.via_peer()) == 2
            key = (
                "meshroute_bgp_prefixes_rejected_total",
                frozenset({("peer", PEER_IP), ("reason", RejectReason.MAX_PREFIX.value)}),
            )
            assert rig.metrics().get(key) == 1
        else:  # the session may close before anyone sees it established
            wait_for("the session closed", lambda: rig.peer_status().get("heldDown"), 20)
            total = ("meshroute_bgp_prefixes_received_total", frozenset({("peer", PEER_IP)}))
            assert rig.metrics().get(total, 0) >= 3
            wait_for("not established", lambda: not rig.established(), 10)
            assert rig.via_peer() == set()
            time.sleep(3)  # held down: ExaBGP does not reconnect it
            assert not rig.established() and not bird.established("node")
    finally:
        bird.stop()


def exabgp_pid(rig: Rig) -> int:
    """ExaBGP's PID from the speaker's pid file, checked against
    /proc/PID/cmdline so we never signal anything else."""
    pid_file = rig.work / "bgp" / "exabgp.pid"
    pid = int(pid_file.read_text().strip())
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert any(b"exabgp" in a for a in cmdline), cmdline
    assert str(rig.work / "bgp" / "exabgp.conf").encode() in cmdline, cmdline
    return pid


def test_exabgp_killed_is_restarted_session_returns_no_reply_lost(rig: Rig) -> None:
    pod, _, own = rig.pod()
    rig.peer_ns.ip("addr", "add", f"{PEER_LOOPBACK}/32", "dev", "lo")
    rig.apply(bgp_peer())
    bird = start_bird(rig.peer_ns, rig.tmp / "bird", bird_spec(static=(PEER_BLOCK,), kernel=True))
    try:
        bird.wait_established("node", 20)
        wait_for("the node installs the peer's block", lambda: PEER_BLOCK in rig.via_peer(), 10)
        wait_for("BIRD's kernel has our block", lambda: rig.peer_ns.ip("route", "show", own), 10)
        out = pod.sh(f"ping -c 2 -i 0.2 -W 1 {PEER_LOOPBACK}", check=False)
        assert " 0% packet loss" in out, out

        # every route change in both kernels while ExaBGP is down and back
        monitors = [
            subprocess.Popen(
                ["ip", "netns", "exec", ns.name, "ip", "monitor", "route"],
                stdout=subprocess.PIPE,
                text=True,
            )
            for ns in (rig.node_ns, rig.peer_ns)
        ]
        ping = subprocess.Popen(
            ["ip", "netns", "exec", pod.name, "ping", "-c80", "-i0.1", "-W1", PEER_LOOPBACK],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            time.sleep(1)
            old = exabgp_pid(rig)
            os.kill(old, signal.SIGKILL)
            killed = time.monotonic()
            wait_for("the node sees the session drop", lambda: not rig.established(), 5)
            assert PEER_BLOCK in rig.via_peer()  # stale, kept through graceful restart
            assert rig.peer_ns.ip("route", "show", own)  # BIRD keeps ours the same way

            def restarted() -> bool:
                try:
                    return exabgp_pid(rig) != old
                except (OSError, ValueError, AssertionError):
                    return False

            wait_for("the supervisor restarts ExaBGP", restarted, 10)
            wait_for("the session returns", rig.established, 15)
            bird.wait_established("node", 5)
            back_after = time.monotonic() - killed
            assert ping.poll() is None, "ping ended before the session returned"
            out, _ = ping.communicate(timeout=30)
        finally:
            for p in (ping, *monitors):
                if p.poll() is None:
                    p.terminate()
        deleted = [
            [ln for ln in m.communicate(timeout=10)[0].splitlines() if ln.startswith("Deleted")]
            for m in monitors
        ]
        assert " 0% packet loss" in out, out
        # not even a brief flush: the stale routes stay until replaced
        assert not [ln for ln in deleted[0] if PEER_BLOCK in ln], deleted[0]
        assert not [ln for ln in deleted[1] if own in ln], deleted[1]
        sys.stderr.write(f"session back {back_after:.1f} s after SIGKILL of ExaBGP\n")
        wait_for("the peer's route is fresh again", lambda: rig.peer_status()["accepted"] == 1)
        assert rig.via_peer() == {PEER_BLOCK}
        assert rig.peer_ns.ip("route", "show", own)
    finally:
        bird.stop()


def cli_run(rig: Rig, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshroute.cli", *args],
        input=stdin,
        env=rig.env,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=30,
    )


def test_md5_password_from_a_secret_or_a_file_is_never_shown(rig: Rig) -> None:
    """The password comes from an etcd secret, then a literal (warned about),
    then a file that is rewritten live; BIRD follows each. ``get`` and
    ``status`` redact it, ExaBGP's file is 0600 and ours, and no log or
    command output holds any of the passwords."""
    secret, literal, in_file, rotated = (
        "from-etcd-7f3a",
        "literal-9c1e",
        "from-file-4b2d",
        "rot-8e5f",
    )
    outputs: list[str] = []

    def run(*args: str, stdin: str | None = None) -> str:
        p = cli_run(rig, *args, stdin=stdin)
        assert p.returncode == 0, p.stderr
        outputs.append(p.stdout + p.stderr)
        return p.stdout + p.stderr

    def session_with(password: str) -> None:
        bird.reconfigure(bird_spec(password=password))
        bird.wait_established("node", 30)
        wait_for("the node sees the session", rig.established, 15)

    run("secret", "set", "md5", stdin=secret + "\n")
    assert "md5" in run("secret", "list")
    assert "warning" not in run("apply", "-f", "-", stdin=bgp_peer(passwordSecret="md5"))
    bird = start_bird(rig.peer_ns, rig.tmp / "bird", bird_spec(password=secret))
    try:
        bird.wait_established("node", 30)
        wait_for("the node sees the session", rig.established, 15)
        assert rig.peer_status()["password"] == "<redacted>"
        conf = rig.node.bgp_dir / "exabgp.conf"
        st = conf.stat()
        assert (st.st_mode & 0o777, st.st_uid) == (0o600, os.getuid())
        assert secret in conf.read_text()

        out = run("apply", "-f", "-", stdin=bgp_peer(password=literal))
        assert "warning" in out and "stored in etcd in the clear" in out
        session_with(literal)
        for fmt in ("yaml", "json", "table"):
            assert "<redacted>" in run("get", "bgppeers", "-o", fmt)
        status = run("status", "--endpoint", rig.node.http, "--json")
        assert "<redacted>" in status and "<redacted>" in run("status", "--endpoint", rig.node.http)

        pw_file = rig.tmp / "secrets" / "external"
        pw_file.parent.mkdir()
        pw_file.write_text(in_file + "\n")
        run("apply", "-f", "-", stdin=bgp_peer(passwordFile=str(pw_file)))
        session_with(in_file)
        assert f"file {pw_file}" in run("get", "bgppeers")
        pw_file.write_text(rotated + "\n")  # live: no apply, no restart
        session_with(rotated)
        assert (conf.stat().st_mode & 0o777) == 0o600

        pw_file.unlink()
        wait_for("the node reports the missing file", lambda: rig.node.status()["peerProblems"])
        [problem] = rig.node.status()["peerProblems"]
        assert f"passwordFile {pw_file}: cannot read" in problem
    finally:
        bird.stop()
    rig.node.stop()
    logs = rig.node.logs() + "".join(
        f.read_text(errors="replace") for f in rig.node.work.rglob("*.log")
    )
    for pw in (secret, literal, in_file, rotated):
        assert pw not in logs, pw
        assert not any(pw in o for o in outputs), pw
