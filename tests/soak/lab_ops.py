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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from lab.build import Lab, NodeLaunch, meshroute_cli, start_meshroute_node
from lab.netns import NetnsFactory, run
from lab.pods import BRIDGE_PLUGIN, pod_netconf, run_cni
from lab.state import PodRecord, alive, end_processes, record_process, still_ours
from lab.status import node_routes
from lab.topology import NodePlan, _node_protocol
from lab.up import converged
from tests.soak.ipam_reader import IpamReader

DEFAULT_GRACEFUL_RESTART_S = 120.0
APPLY_TIMEOUT_S = 180.0  # a CLI start alone took 85 s at load average 38


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
        if lab.state.namespaces.get("mgmt"):
            raise RuntimeError("the soak reads etcd from the root namespace: no management one")
        self.reader = IpamReader(lab.etcd_endpoint, lab.plan.params.etcd_prefix)

    def close(self) -> None:
        self.reader.close()

    # ---- pods -------------------------------------------------------------------

    def add_pod(self, node: NodePlan, label: str) -> PodRecord:
        """Namespace, recorded in the lab state, then CNI ADD; a failed ADD
        raises ``AddFailed`` with the record, which the caller must DEL."""
        ns = self.factory.new(label).name  # two ``ip`` calls: not under the lock
        with self.lock:
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

    def lab_pool(self) -> dict[str, Any]:
        """The IPPool document the lab applied."""
        docs = yaml.safe_load_all(self.lab.plan.resources_yaml)
        return dict(next(d for d in docs if d["kind"] == "IPPool"))

    def pool_doc(self, name: str, cidr: str, block_size: int) -> dict[str, Any]:
        """An enabled IPPool like the lab's (encapsulation, selector) with
        this name, CIDR and block size."""
        doc = self.lab_pool()
        doc["metadata"] = {"name": name}
        doc["spec"] = {**doc["spec"], "cidr": cidr, "blockSize": block_size, "disabled": False}
        return doc

    def apply(self, docs: list[dict[str, Any]], path: Path) -> tuple[int, str]:
        """``meshroute apply -f`` of ``docs`` as one file (all or nothing)."""
        path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
        return self._cli(APPLY_TIMEOUT_S, "apply", "-f", str(path))

    def delete_pool(self, name: str) -> tuple[int, str]:
        return self._cli(APPLY_TIMEOUT_S, "delete", "ippool", name)

    def _cli(self, timeout: float, *args: str) -> tuple[int, str]:
        """Exit status and output (-1 when it did not answer in time)."""
        try:
            p = meshroute_cli(self.lab, *args, timeout=timeout)
        except subprocess.TimeoutExpired:
            return -1, f"meshroute {' '.join(args)} did not answer in {timeout:.0f} s"
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

    def routes(self) -> list[tuple[str, str]]:
        """(where, destination) of the kernel routes the nodes programmed
        (felix_lite's protocol) and the ToRs' BIRD exported: one ``ip``
        read per namespace, all at once."""

        def node(n: NodePlan) -> list[tuple[str, str]]:
            return [(n.name, r.dst) for r in node_routes(self.lab.state.ns(n.ns))]

        def tor(ns: str) -> list[tuple[str, str]]:
            cmd = ["ip", "-n", self.lab.state.ns(ns), "-j", "route", "show", "proto", "bird"]
            return [(ns, str(r["dst"])) for r in json.loads(run(cmd) or "[]")]

        with ThreadPoolExecutor(max_workers=8) as pool:
            parts = [pool.submit(node, n) for n in self.lab.plan.nodes]
            parts += [pool.submit(tor, sp.ns) for sp in self.lab.plan.speakers]
            return [r for f in parts for r in f.result()]

    def ipam_show(self, timeout: float) -> dict[str, Any] | None:
        """``meshroute ipam show --json``'s view, read in process (see
        ``ipam_reader``); None when etcd does not answer in ``timeout`` s."""
        return self.reader.show(timeout)

    def ipam_check(self) -> tuple[int, str]:
        return self._cli(120, "ipam", "check")


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
