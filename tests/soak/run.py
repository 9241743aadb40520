"""The soak's run: build a 4-node lab (ToR topology, routed pods) with the
lab package, churn pods, inject the planned faults one at a time, check the
invariants every 10 s, then write ``summary.json`` and ``soak.png`` to
``--out``. Exit 0 only with zero violations."""

from __future__ import annotations

import argparse
import faulthandler
import json
import os
import random
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lab.build import start_meshroute_node
from lab.pods import Endpoint, ping_matrix
from lab.state import PodRecord
from lab.topology import LabParams, NodePlan
from lab.up import lab_down, lab_up
from tests.soak.core import (
    ETCD_STOP_S,
    Fault,
    duplicate_addresses,
    ended,
    growth,
    measured_from,
    orphan_routes,
    overdue,
    plan_faults,
    reachability_due,
    settled_pods,
    track_since,
    window_start,
)
from tests.soak.lab_ops import AddFailed, LabOps, proc_sample

CHECK_EVERY_S = 10.0
SETTLE_S = 5.0  # pods reach each other this long after the last fault
GROWTH_LIMIT_PCT = 10.0
RECOVERY_TIMEOUT_S = 120.0
LAB_PREFIX = "mrsoak"


@dataclass
class FaultRecord:
    kind: str
    target: str
    start_s: float
    end_s: float | None = None
    outcome: str = ""


@dataclass
class Soak:
    ops: LabOps
    duration_s: float
    seed: int
    out: Path
    pods_per_node: int
    rate: float
    t0: float = field(default_factory=time.monotonic)
    stop: threading.Event = field(default_factory=threading.Event)
    faults_done: threading.Event = field(default_factory=threading.Event)
    live: dict[str, PodRecord] = field(default_factory=dict)
    created_at: dict[str, float] = field(default_factory=dict)
    protected: set[str] = field(default_factory=set)
    doomed: list[PodRecord] = field(default_factory=list)  # DEL failed: retried
    counts: Counter[str] = field(default_factory=Counter)
    faults: list[FaultRecord] = field(default_factory=list)
    violations: list[dict[str, Any]] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)
    fault_active: bool = False
    routes_now: int | None = None
    pairs_checked: int = 0
    last_fault_end: float = 0.0
    fail_since: dict[tuple[str, str], float] = field(default_factory=dict)
    outages: list[float] = field(default_factory=list)
    orphan_since: dict[tuple[str, str], float] = field(default_factory=dict)
    reported_orphans: set[tuple[str, str]] = field(default_factory=set)
    mu: threading.Lock = field(default_factory=threading.Lock)
    next_slot: float = 0.0
    seq: int = 0

    def now(self) -> float:
        return time.monotonic() - self.t0

    def violation(self, kind: str, **detail: Any) -> None:
        v = {"at_s": round(self.now(), 1), "kind": kind, **detail}
        print(f"soak: VIOLATION {json.dumps(v)[:400]}", flush=True)
        with self.mu:
            self.violations.append(v)

    def quiet(self) -> bool:
        return reachability_due(self.now(), self.last_fault_end, self.fault_active, SETTLE_S)

    # ---- pod churn --------------------------------------------------------------

    def _slot(self) -> bool:
        """Wait for this worker's turn at ``rate`` operations a second."""
        with self.mu:
            self.next_slot = max(self.next_slot + 1.0 / self.rate, self.now())
            wait = self.next_slot - self.now()
        return not self.stop.wait(max(0.0, wait))

    def churn(self, rng: random.Random) -> None:
        nodes = self.ops.lab.plan.nodes
        target = self.pods_per_node * len(nodes)
        while self._slot():
            with self.mu:
                retry = self.doomed.pop() if self.doomed else None
                free = [p for p in self.live if p not in self.protected]
                grow = len(self.live) < target or not free
                victim = None if grow or retry else self.live.pop(rng.choice(free))
                if victim:
                    self.created_at.pop(victim.container_id, None)
                self.seq += 1
                label = f"p{self.seq}"
            if retry or victim:
                self._delete(retry or victim)  # type: ignore[arg-type]
            elif len(self.live) < target + 2 * len(nodes):
                self._add(rng.choice(nodes), label)

    def _add(self, node: NodePlan, label: str) -> None:
        quiet_before = self.quiet()
        try:
            rec = self.ops.add_pod(node, label)
        except AddFailed as e:
            self.counts["add_errors"] += 1
            with self.mu:
                self.doomed.insert(0, e.rec)  # DEL until it works
            if quiet_before and self.quiet():
                self.violation(
                    "pod ADD failed with no fault in progress", pod=label, error=str(e)[:300]
                )
            return
        self.counts["added"] += 1
        with self.mu:
            self.live[rec.container_id] = rec
            self.created_at[rec.container_id] = self.now()

    def _delete(self, rec: PodRecord) -> None:
        try:
            self.ops.remove_pod(rec)
        except Exception:
            self.counts["del_errors"] += 1
            with self.mu:
                self.doomed.insert(0, rec)
            return
        self.counts["deleted"] += 1

    # ---- faults -----------------------------------------------------------------

    def inject(self, plan: Sequence[Fault], until_s: float) -> None:
        try:
            for f in plan:
                if self.stop.wait(f.gap_s) or self.now() > until_s:
                    return
                self._one(f)
        finally:
            self.faults_done.set()

    def _one(self, f: Fault) -> None:
        rec = FaultRecord(f.kind, f.target, round(self.now(), 1))
        self.faults.append(rec)
        self.fault_active = True
        print(f"soak: {rec.start_s:7.1f}s fault {f.kind} {f.target}", flush=True)
        node = self.ops.lab.plan.node(f.target) if f.target and not f.target.isdigit() else None
        try:
            if f.kind == "node_restart" and node:
                self.ops.restart_node(node, signal.SIGTERM)
            elif f.kind == "node_kill9" and node:
                self.ops.restart_node(node, signal.SIGKILL)
            elif f.kind == "exabgp_kill" and node:
                rec.outcome = "killed" if self.ops.kill_exabgp(node) else "no ExaBGP running"
            elif f.kind == "etcd_stop":
                self.ops.freeze_etcd(ETCD_STOP_S, self.stop)
            elif f.kind == "tor_reset" and node:
                rec.outcome = self.ops.reset_tor_session(node)[-200:]
            elif f.kind == "pool_block_size":
                rc, msg = self.ops.apply_block_size(int(f.target), self.out / "pool.yaml")
                rec.outcome = f"exit {rc}: {msg[-300:]}"
            # let the fault be noticed before asking whether it healed
            self.stop.wait(2.0)
            deadline = time.monotonic() + RECOVERY_TIMEOUT_S
            while not self.ops.converged():
                if time.monotonic() > deadline:
                    self.violation("no recovery", fault=f.kind, target=f.target)
                    break
                if self.stop.wait(0.5):
                    break
        finally:
            rec.end_s = round(self.now(), 1)
            self.last_fault_end = self.now()
            self.fault_active = False
            print(f"soak: {rec.end_s:7.1f}s recovered from {f.kind}", flush=True)

    # ---- checks -----------------------------------------------------------------

    def check(self, *, final: bool = False) -> None:
        t = self.now()
        self._check_nodes_alive()
        with self.mu:
            live = dict(self.live)
        dups = duplicate_addresses({p: r.address for p, r in live.items()})
        if dups:
            self.violation("two live pods share an address", duplicates=dups)
        self._check_routes(t)
        self._check_reach(final=final)
        self._sample(t, len(live))
        print(
            f"soak: {t:7.1f}s check: {len(live)} pods, {self.routes_now} routes, "
            f"{self.pairs_checked} pod pairs pinged so far, {len(self.fail_since)} failing, "
            f"{len(self.violations)} violations",
            flush=True,
        )

    def _check_nodes_alive(self) -> None:
        """A node that exited by itself is a violation; it is started again,
        as systemd would, so the soak goes on."""
        if self.fault_active:
            return  # a restart fault may be between its stop and its start
        for n in self.ops.lab.plan.nodes:
            if not self.ops.node_alive(n):
                tail = Path(n.log_path).read_text()[-600:]
                self.violation("node exited by itself", node=n.name, log_tail=tail)
                self.ops.restart_node(n, signal.SIGKILL)

    def _check_routes(self, t: float) -> None:
        show = self.ops.ipam_show()
        if show is None:  # etcd frozen: nothing to compare with this time
            return
        owned = [b["cidr"] for blocks in show["hosts"].values() for b in blocks]
        pools = [p["cidr"] for p in show["pools"].values()]
        routes = self.ops.routes()
        self.routes_now = len(routes)
        orphans = orphan_routes(routes, owned, pools)
        self.orphan_since = track_since(self.orphan_since, orphans, t)
        for key in overdue(self.orphan_since, t, self.ops.graceful_restart_s()):
            if key not in self.reported_orphans:
                self.reported_orphans.add(key)
                self.violation("route to a block nobody owns", where=key[0], dst=key[1])

    def _check_reach(self, *, final: bool) -> None:
        due = final or self.quiet()
        with self.mu:
            names = settled_pods(self.created_at, self.now(), SETTLE_S)
            pods = [self.live[n] for n in names if n in self.live]
            self.protected = {p.container_id for p in pods}
        try:
            eps = [Endpoint(p.container_id, p.netns, p.address) for p in pods]
            m = ping_matrix(eps) if eps else None
        finally:
            with self.mu:
                self.protected = set()
        failing = set(m.failures) if m else set()
        t = self.now()
        new_since = track_since(self.fail_since, failing, t)
        self.outages += ended(self.fail_since, new_since, t)
        self.fail_since = new_since
        self.pairs_checked += len(eps) ** 2
        if failing and due:
            self.violation(
                "pods do not reach each other",
                failing=len(failing),
                of=len(eps) ** 2,
                sample=sorted(failing)[:10],
            )

    def _sample(self, t: float, pods: int) -> None:
        nodes = {}
        for n in self.ops.lab.plan.nodes:
            pid = self.ops.node_pid(n)
            s = proc_sample(pid)
            if s is not None:
                nodes[n.name] = {"pid": pid, "rss_kib": s.rss_kib, "fds": s.fds}
        self.samples.append(
            {
                "t": round(t, 1),
                "pods": pods,
                "routes": self.routes_now,
                "fault": self.fault_active,
                "nodes": nodes,
            }
        )

    # ---- the end ----------------------------------------------------------------

    def growth_of(self, metric: str) -> dict[str, Any]:
        """The worst (node, PID) incarnation's growth of ``metric`` from
        the growth window's start to the end."""
        start = window_start(self.duration_s)
        first_pids = (
            set(v["pid"] for v in self.samples[0]["nodes"].values()) if self.samples else set()
        )
        born: dict[int, float] = {}
        series: dict[tuple[str, int], list[tuple[float, float]]] = {}
        for s in self.samples:
            for name, v in s["nodes"].items():
                pid = v["pid"]
                born.setdefault(pid, 0.0 if pid in first_pids else s["t"])
                if s["t"] >= measured_from(born[pid], start):
                    series.setdefault((name, pid), []).append((s["t"], float(v[metric])))
        worst: dict[str, Any] = {"from_s": round(start, 1), "growth_pct": None}
        for (name, pid), pts in series.items():
            g = growth(pts)
            if g is None or g.span_s < 60:
                continue
            if worst["growth_pct"] is None or g.growth_pct > worst["growth_pct"]:
                worst = {
                    "from_s": round(start, 1),
                    "node": name,
                    "pid": pid,
                    "slope_per_min": round(g.slope_per_min, 2),
                    "growth_pct": round(g.growth_pct, 2),
                    "samples": g.samples,
                    "span_s": round(g.span_s, 1),
                }
        return worst

    def finish(self) -> None:
        """Faults are over: converge, check the pods once more, ``ipam
        check`` with the pods and again once every pod is gone."""
        deadline = time.monotonic() + RECOVERY_TIMEOUT_S
        while not self.ops.converged() and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(SETTLE_S)
        self.check(final=True)
        rc, text = self.ops.ipam_check()
        self.ipam_with_pods = {"exit": rc, "output": text[-2000:]}
        if rc != 0:
            self.violation("ipam check with the pods", output=text[-1000:])
        for rec in list(self.live.values()) + self.doomed:
            try:
                self.ops.remove_pod(rec)
                self.counts["deleted"] += 1
            except Exception as e:
                self.violation(
                    "pod DEL failed after the faults", pod=rec.container_id, error=str(e)[:300]
                )
        self.live.clear()
        self.doomed.clear()
        rc, text = self.ops.ipam_check()
        self.ipam_without_pods = {"exit": rc, "output": text[-2000:]}
        if rc != 0:
            self.violation("ipam check once every pod is gone", output=text[-1000:])

    def summary(self, plot: Path) -> dict[str, Any]:
        rss, fds = self.growth_of("rss_kib"), self.growth_of("fds")
        for name, g in (("RSS", rss), ("open fds", fds)):
            if g["growth_pct"] is not None and g["growth_pct"] >= GROWTH_LIMIT_PCT:
                self.violation(f"node {name} grew {g['growth_pct']}%", **g)
        open_outages = [self.now() - t for t in self.fail_since.values()]
        return {
            "minutes": self.duration_s / 60,
            "seed": self.seed,
            "nodes": [n.name for n in self.ops.lab.plan.nodes],
            "faults_injected": dict(Counter(f.kind for f in self.faults)),
            "faults": [asdict(f) for f in self.faults],
            "pods": dict(self.counts),
            "checks": len(self.samples),
            "pod_pairs_pinged": self.pairs_checked,
            "invariant_violations": len(self.violations),
            "violations": self.violations,
            "max_pod_outage_s": round(max(self.outages + open_outages, default=0.0), 1),
            "rss_kib": rss,
            "fds": fds,
            "ipam_check_with_pods": getattr(self, "ipam_with_pods", None),
            "ipam_check_without_pods": getattr(self, "ipam_without_pods", None),
            "graceful_restart_s": self.ops.graceful_restart_s(),
            "plot": str(plot),
        }


def plot(samples: list[dict[str, Any]], faults: list[FaultRecord], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ts = [s["t"] / 60 for s in samples]
    names = sorted({n for s in samples for n in s["nodes"]})
    fig, axes = plt.subplots(4, 1, figsize=(10, 11), sharex=True)
    for name in names:
        pts = [(s["t"] / 60, s["nodes"][name]) for s in samples if name in s["nodes"]]
        axes[0].plot([t for t, _ in pts], [v["rss_kib"] / 1024 for _, v in pts], label=name)
        axes[1].plot([t for t, _ in pts], [v["fds"] for _, v in pts], label=name)
    axes[2].plot(ts, [s["routes"] or 0 for s in samples], color="tab:green")
    axes[3].plot(ts, [s["pods"] for s in samples], color="tab:purple")
    for ax, label in zip(
        axes, ("node RSS (MiB)", "node open fds", "kernel routes", "live pods"), strict=True
    ):
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        for f in faults:
            end = f.end_s if f.end_s is not None else f.start_s
            ax.axvspan(f.start_s / 60, end / 60, color="tab:red", alpha=0.12)
    axes[0].legend(fontsize=7, loc="lower right")
    axes[-1].set_xlabel("minutes (red: a fault in progress)")
    fig.suptitle("meshroute soak: 4 nodes, ToR topology, routed pods")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tests.soak", description=__doc__)
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--seed", type=int, default=None, help="fault plan seed (default: random)")
    p.add_argument("--out", default="soak-results", help="where summary.json and soak.png go")
    p.add_argument("--run-dir", default="/run/meshroute-soak")
    p.add_argument("--pods-per-node", type=int, default=4, help="pods kept per node by the churn")
    p.add_argument("--rate", type=float, default=5.0, help="pod creations + deletions a second")
    args = p.parse_args(argv)
    if not 0.5 <= args.minutes <= 24 * 60:
        p.error("--minutes: 0.5 .. 1440")
    if not 0.1 <= args.rate <= 50:
        p.error("--rate: 0.1 .. 50")
    if not 1 <= args.pods_per_node <= 50:
        p.error("--pods-per-node: 1 .. 50")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    faulthandler.register(signal.SIGUSR1)  # kill -USR1 PID: where every thread is
    if os.geteuid() != 0:
        print(
            "python -m tests.soak: the lab creates network namespaces: run it as root",
            file=sys.stderr,
        )
        return 1
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    params = LabParams(
        topology="tor", racks=2, nodes_per_rack=2, pods_per_node=0, run_dir=args.run_dir
    )
    res = lab_up(params, start_meshroute_node, prefix=LAB_PREFIX, converge_timeout=60)
    duration = args.minutes * 60
    try:
        ops = LabOps(res.lab, Path(args.run_dir) / "cni-bin")
        soak = Soak(ops, duration, seed, out, args.pods_per_node, args.rate)
        names = [n.name for n in res.lab.plan.nodes]
        faults = plan_faults(seed, duration, names)
        quiet_tail = max(30.0, 0.1 * duration)
        rng = random.Random(seed + 1)
        workers = [
            threading.Thread(target=soak.churn, args=(random.Random(rng.random()),), daemon=True)
            for _ in range(6)
        ]
        injector = threading.Thread(
            target=soak.inject, args=(faults, duration - quiet_tail), daemon=True
        )
        print(f"soak: {args.minutes} min, seed {seed}, output in {out}", flush=True)
        for w in workers:
            w.start()
        injector.start()
        while soak.now() < duration - CHECK_EVERY_S:
            time.sleep(max(0.0, CHECK_EVERY_S - soak.now() % CHECK_EVERY_S))
            soak.check()
        injector.join()
        soak.stop.set()
        for w in workers:
            w.join()
        soak.finish()
        png = out / "soak.png"
        summary = soak.summary(png)
        plot(soak.samples, soak.faults, png)
        (out / "samples.json").write_text(json.dumps(soak.samples))
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        print(json.dumps({k: v for k, v in summary.items() if k != "faults"}, indent=2))
        return 0 if not soak.violations else 1
    finally:
        lab_down(args.run_dir, LAB_PREFIX)
