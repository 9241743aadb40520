"""What the soak does to and reads from a running lab, as an operator
would: the lab's state file and node configs, ``meshroute`` and ``birdc``,
the nodes' HTTP endpoints, ``/proc`` for the processes the lab started, and
CNI ADD/DEL of pods with ``meshroute-cni``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from lab.build import Lab, NodeLaunch, meshroute_cli, start_meshroute_node
from lab.netns import NetnsFactory, run
from lab.pods import BRIDGE_PLUGIN, pod_netconf, run_cni
from lab.state import PodRecord, alive, end_processes, record_process, still_ours
from lab.status import bird_protocols, node_ready, node_routes
from lab.topology import NodePlan, _node_protocol
from lab.up import converged

DEFAULT_GRACEFUL_RESTART_S = 120.0


class AddFailed(Exception):
    def __init__(self, rec: PodRecord, error: str) -> None:
        super().__init__(error)
        self.rec = rec


class LabOps:
    """The lab the soak runs against; thread-safe where the pod churn and
    the checker share it (the state file)."""

    def __init__(self, lab: Lab, cni_bin: Path) -> None:
        self.lab = lab
        self.cni_path = f"{cni_bin}:{os.path.dirname(BRIDGE_PLUGIN)}"
        self.factory = NetnsFactory(prefix=lab.state.prefix)
        self.lock = threading.Lock()

    # ---- pods -------------------------------------------------------------------

    def add_pod(self, node: NodePlan, label: str) -> PodRecord:
        """Namespace, recorded in the lab state, then CNI ADD; a failed ADD
        raises ``AddFailed`` with the record, which the caller must DEL."""
        with self.lock:
            ns = self.factory.new(label).name
            rec = PodRecord(label, node.name, ns, label, "")
            self.lab.state.pods.append(rec)
            self.lab.state.save()
        conf = pod_netconf(node, self.lab.plan.params.pod_mode)
        try:
            res = run_cni(self.lab.state.ns(node.ns), "ADD", ns, label, conf, self.cni_path)
            address = str(res["ips"][0]["address"]).split("/")[0]
        except Exception as e:
            raise AddFailed(rec, str(e)) from e
        done = PodRecord(label, node.name, ns, label, address)
        with self.lock:
            pods = self.lab.state.pods
            pods[pods.index(rec)] = done
            self.lab.state.save()
        return done

    def remove_pod(self, rec: PodRecord) -> None:
        """CNI DEL, then the namespace; the record goes only when DEL
        succeeded (a failed DEL raises and the pod stays, to be retried)."""
        node = self.lab.plan.node(rec.node)
        conf = pod_netconf(node, self.lab.plan.params.pod_mode)
        run_cni(self.lab.state.ns(node.ns), "DEL", rec.netns, rec.container_id, conf, self.cni_path)
        run(["ip", "netns", "del", rec.netns], check=False)
        with self.lock:
            self.lab.state.pods = [
                p for p in self.lab.state.pods if p.container_id != rec.container_id
            ]
            self.lab.state.save()

    # ---- processes --------------------------------------------------------------

    def node_record(self, node: NodePlan):  # type: ignore[no-untyped-def]
        return next(r for r in self.lab.state.processes if r.role == "node" and r.label == node.ns)

    def node_alive(self, node: NodePlan) -> bool:
        return alive(self.node_record(node))

    def node_pid(self, node: NodePlan) -> int:
        return int(self.node_record(node).pid)

    def restart_node(self, node: NodePlan, sig: int) -> None:
        """End the node (SIGTERM with the lab's grace, or SIGKILL) and start
        it again the way ``lab up`` starts it, with its node.yaml."""
        rec = self.node_record(node)
        if sig == signal.SIGKILL:
            if still_ours(rec):
                os.kill(rec.pid, signal.SIGKILL)
                with_reap(rec.pid)
        else:
            end_processes([rec], grace=20.0)
        launch = NodeLaunch(
            node,
            self.lab.state.ns(node.ns),
            Path(node.config_path),
            Path(node.log_path),
            self.lab.plan.params.node_placement == "root",
        )
        p = start_meshroute_node(launch)
        new = record_process("node", node.ns, p.pid, p.argv)
        with self.lock:
            procs = self.lab.state.processes
            procs[procs.index(rec)] = new
            self.lab.state.save()

    def kill_exabgp(self, node: NodePlan) -> bool:
        """SIGKILL to the ExaBGP the node runs (its PID file); False when
        there is none running."""
        pidfile = Path(self.node_config(node)["bgp"]["workDir"]) / "exabgp.pid"
        try:
            pid = int(pidfile.read_text().split()[0])
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            return False
        if b"exabgp" not in cmd:
            return False
        os.kill(pid, signal.SIGKILL)
        return True

    def etcd_pid(self) -> int:
        return int(next(r for r in self.lab.state.processes if r.role == "etcd").pid)

    def freeze_etcd(self, seconds: float, stop: threading.Event) -> None:
        pid = self.etcd_pid()
        os.kill(pid, signal.SIGSTOP)
        try:
            stop.wait(seconds)
        finally:
            os.kill(pid, signal.SIGCONT)

    def reset_tor_session(self, node: NodePlan) -> str:
        """``birdc restart`` of the node's session on its rack's ToR."""
        sock = next(sp.socket_path for sp in self.lab.plan.speakers if sp.ns == f"r{node.rack}-tor")
        proto = _node_protocol(node)
        p = run(["birdc", "-s", sock, "restart", proto], check=False)
        return p.strip()

    def apply_block_size(self, size: int, path: Path) -> tuple[int, str]:
        """``meshroute apply -f`` of the lab's pool with ``blockSize: size``."""
        docs = list(yaml.safe_load_all(self.lab.plan.resources_yaml))
        pool = next(d for d in docs if d["kind"] == "IPPool")
        pool["spec"]["blockSize"] = size
        path.write_text(yaml.safe_dump(pool, sort_keys=False))
        try:
            p = meshroute_cli(self.lab, "apply", "-f", str(path), timeout=60)
        except subprocess.TimeoutExpired:
            return -1, "meshroute apply -f did not answer in 60 s"
        return p.returncode, (p.stdout + p.stderr).strip()

    # ---- reading ----------------------------------------------------------------

    def node_config(self, node: NodePlan) -> dict:  # type: ignore[type-arg]
        return dict(yaml.safe_load(Path(node.config_path).read_text()))

    def graceful_restart_s(self) -> float:
        """The longest time a peer keeps a stopped node's routes: the lab's
        BGPPeers' ``gracefulRestartTime`` (120 s for the mesh and for a
        BGPPeer that names none)."""
        docs = yaml.safe_load_all(self.lab.plan.resources_yaml)
        times = [
            d["spec"].get("gracefulRestartTime", DEFAULT_GRACEFUL_RESTART_S)
            for d in docs
            if d and d.get("kind") == "BGPPeer"
        ]
        return float(max(times, default=DEFAULT_GRACEFUL_RESTART_S))

    def converged(self) -> bool:
        return converged(self.lab)

    def node_ready(self, node: NodePlan) -> bool:
        return node_ready(self.lab, node)

    def routes(self) -> list[tuple[str, str]]:
        """(where, destination) of the kernel routes the nodes programmed
        (felix_lite's protocol) and the ToRs' BIRD exported."""
        out = [
            (n.name, r.dst)
            for n in self.lab.plan.nodes
            for r in node_routes(self.lab.state.ns(n.ns))
        ]
        for sp in self.lab.plan.speakers:
            raw = run(
                ["ip", "-n", self.lab.state.ns(sp.ns), "-j", "route", "show", "proto", "bird"]
            )
            out += [(sp.ns, str(r["dst"])) for r in json.loads(raw or "[]")]
        return out

    def ipam_show(self) -> dict | None:  # type: ignore[type-arg]
        try:
            p = meshroute_cli(self.lab, "ipam", "show", "--json", timeout=30)
        except subprocess.TimeoutExpired:
            return None  # etcd frozen, or the machine too busy: compare next time
        if p.returncode != 0:
            return None
        return dict(json.loads(p.stdout))

    def ipam_check(self) -> tuple[int, str]:
        try:
            p = meshroute_cli(self.lab, "ipam", "check", timeout=120)
        except subprocess.TimeoutExpired:
            return -1, "meshroute ipam check did not answer in 120 s"
        return p.returncode, (p.stdout + p.stderr).strip()

    def tor_sessions_established(self) -> bool:
        return all(
            pr.established
            for sp in self.lab.plan.speakers
            for pr in bird_protocols(sp.socket_path)
            if pr.proto == "BGP"
        )


@dataclass(frozen=True)
class ProcSample:
    rss_kib: int
    fds: int


def proc_sample(pid: int) -> ProcSample | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None
    rss = next(
        (int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0
    )
    return ProcSample(rss, fds)


def with_reap(pid: int, timeout: float = 10.0) -> None:
    """Wait for a killed process of ours to be gone (reaping it if it is
    our child)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                return
        except ChildProcessError:
            if not os.path.exists(f"/proc/{pid}"):
                return
        time.sleep(0.05)
