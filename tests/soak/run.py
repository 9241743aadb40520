"""The soak's run: build a 4-node lab (ToR topology, routed pods) with the
lab package, churn pods, inject the planned faults one at a time, check the
invariants every 10 s, then write ``summary.json`` and ``soak.png`` to
``--out``. Exit 0 only with zero violations."""

from __future__ import annotations

import argparse
import faulthandler
import ipaddress
import itertools
import json
import os
import random
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lab.build import start_meshroute_node
from lab.state import PodRecord
from lab.topology import POOL_CIDR, LabParams, NodePlan
from lab.up import lab_down, lab_up
from tests.soak.core import (
    ETCD_STOP_S,
    Fault,
    FaultRecord,
    PoolState,
    distribution,
    duplicate_addresses,
    ended,
    failures_among_live,
    growth,
    measured_from,
    missing_block_routes,
    orphan_routes,
    overdue,
    plan_faults,
    plan_pool_move,
    pool_slots,
    rates_by_window,
    reachability_due,
    settled_pods,
    track_since,
    window_start,
)
from tests.soak.icmp import Target, probe_matrix
from tests.soak.lab_ops import AddFailed, LabOps, proc_sample
from tests.soak.plot import plot

CHECK_EVERY_S = 10.0
SETTLE_S = 5.0  # pods reach each other this long after the last fault
GROWTH_LIMIT_PCT = 10.0
RECOVERY_TIMEOUT_S = 120.0
IPAM_SHOW_TIMEOUT_S = 7.0  # a check must fit in CHECK_EVERY_S, etcd frozen or not
NEW_POOL_GRACE_S = 3.0  # a node's IPAM re-reads the pools every second
MIN_BLOCK_AGE_S = 60.0  # empty blocks of a disabled pool go back within minutes
POOL_SLOTS = 4
SYSTEMD_RESTART_S = 2.0  # RestartSec= of configs/systemd/meshroute-node.service
LAB_PREFIX = "mrsoak"


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
    live: dict[str, PodRecord] = field(default_factory=dict)
    created_at: dict[str, float] = field(default_factory=dict)
    held: dict[str, str] = field(default_factory=dict)  # address -> pod, from ADD to DEL start
    doomed: list[PodRecord] = field(default_factory=list)  # DEL failed: retried
    counts: Counter[str] = field(default_factory=Counter)
    op_ends: list[float] = field(default_factory=list)  # when each ADD or DEL succeeded
    latency: dict[str, list[float]] = field(default_factory=lambda: {"add": [], "del": []})
    churn_span: list[float] = field(default_factory=list)  # [start, end]
    faults: list[FaultRecord] = field(default_factory=list)
    violations: list[dict[str, Any]] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)
    check_starts: list[float] = field(default_factory=list)
    check_durations: list[float] = field(default_factory=list)
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
    slots: list[str] = field(default_factory=lambda: pool_slots(str(POOL_CIDR), POOL_SLOTS))
    pool_docs: dict[str, dict[str, Any]] = field(default_factory=dict)  # what the soak applied
    active_net: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    active_since: float = 0.0
    pool_moves: int = 0
    witnesses: set[str] = field(default_factory=set)  # pods a pool move keeps in the old pool
    graceful_restart_s: float = 0.0
    restarting: set[str] = field(default_factory=set)  # nodes a fault is stopping and starting
    start_failures: list[dict[str, Any]] = field(default_factory=list)

    def now(self) -> float:
        return time.monotonic() - self.t0

    def violation(self, kind: str, **detail: Any) -> None:
        v = {"at_s": round(self.now(), 1), "kind": kind, **detail}
        print(f"soak: VIOLATION {json.dumps(v)[:400]}", flush=True)
        with self.mu:
            self.violations.append(v)

    def quiet(self) -> bool:
        return reachability_due(self.now(), self.last_fault_end, self.fault_active, SETTLE_S)

    def in_active_pool(self, address: str) -> bool:
        return self.active_net is None or ipaddress.ip_address(address) in self.active_net

    # ---- setup ------------------------------------------------------------------

    def setup_pools(self) -> None:
        """The lab's pool narrowed to the first slot (it has no blocks yet),
        and empty blocks given back after MIN_BLOCK_AGE_S, so a disabled
        pool empties within minutes and can be deleted."""
        lab_pool = self.ops.lab_pool()
        name, size = lab_pool["metadata"]["name"], int(lab_pool["spec"]["blockSize"])
        first = self.ops.pool_doc(name, self.slots[0], size)
        settings = {
            "apiVersion": first["apiVersion"],
            "kind": "IPAMConfiguration",
            "metadata": {"name": "default"},
            "spec": {"minBlockAgeSeconds": MIN_BLOCK_AGE_S},
        }
        rc, msg = self.ops.apply([first, settings], self.out / "pools.yaml")
        if rc != 0:
            raise RuntimeError(f"the soak's first pool was refused: {msg[-500:]}")
        self.pool_docs[name] = first
        self.active_net = ipaddress.ip_network(self.slots[0])

    # ---- pod churn --------------------------------------------------------------

    def _slot(self) -> bool:
        """Wait for this worker's turn at ``rate`` operations a second."""
        with self.mu:
            self.next_slot = max(self.next_slot + 1.0 / self.rate, self.now())
            wait = self.next_slot - self.now()
        return not self.stop.wait(max(0.0, wait))

    def churn(self, rng: random.Random) -> None:
        """Keep about ``pods_per_node`` pods a node, alternating ADDs and
        DELs; pods outside the enabled pool are deleted first (they leave
        a disabled pool, as Calico's migration deletes them)."""
        nodes = self.ops.lab.plan.nodes
        target = self.pods_per_node * len(nodes)
        while self._slot():
            victim = None
            with self.mu:
                retry = self.doomed.pop() if self.doomed else None
                grow = retry is None and len(self.live) < target
                if retry is None and not grow:
                    pods = [p for p in self.live if p not in self.witnesses]
                    leaving = [p for p in pods if not self.in_active_pool(self.live[p].address)]
                    if pods:
                        victim = self.live.pop(rng.choice(leaving or pods))
                        self.created_at.pop(victim.container_id, None)
                self.seq += 1
                label = f"p{self.seq}"
            if retry or victim:
                self._delete(retry or victim)  # type: ignore[arg-type]
            elif grow:
                self._add(rng.choice(nodes), label)

    def _add(self, node: NodePlan, label: str) -> None:
        quiet_before, t0 = self.quiet(), self.now()
        try:
            rec = self.ops.add_pod(node, label)
        except AddFailed as e:
            with self.mu:
                self.counts["add_errors"] += 1
                self.doomed.insert(0, e.rec)  # DEL until it works
            if quiet_before and self.quiet():
                self.violation(
                    "pod ADD failed with no fault in progress", pod=label, error=str(e)[:300]
                )
            return
        t1 = self.now()
        with self.mu:
            self.live[rec.container_id] = rec
            self.created_at[rec.container_id] = t1
            self.op_ends.append(t1)
            self.latency["add"].append(t1 - t0)
            self.counts["added"] += 1
            fresh = t0 >= self.active_since + NEW_POOL_GRACE_S
            holder = self.held.setdefault(rec.address, rec.container_id)
        if holder != rec.container_id:
            self.violation(
                "an address was handed out again before its pod was deleted",
                address=rec.address,
                pods=[holder, rec.container_id],
            )
        if fresh and not self.in_active_pool(rec.address):
            self.violation(
                "a new pod's address is not from the enabled pool",
                pod=label,
                address=rec.address,
                pool=str(self.active_net),
            )

    def _delete(self, rec: PodRecord) -> None:
        t0 = self.now()
        with self.mu:
            # From here IPAM may free the address at any moment, and hand it
            # out again before this thread hears that the DEL is done.
            if self.held.get(rec.address) == rec.container_id:
                del self.held[rec.address]
        try:
            self.ops.remove_pod(rec)
        except Exception:
            with self.mu:
                self.counts["del_errors"] += 1
                self.doomed.insert(0, rec)
            return
        t1 = self.now()
        with self.mu:
            self.op_ends.append(t1)
            self.latency["del"].append(t1 - t0)
            self.counts["deleted"] += 1

    # ---- faults -----------------------------------------------------------------

    def inject(self, plan: Sequence[Fault], until_s: float) -> None:
        for f in plan:
            if self.stop.wait(f.gap_s) or self.now() > until_s:
                return
            self._one(f)

    def _one(self, f: Fault) -> None:
        rec = FaultRecord(f.kind, f.target, round(self.now(), 1))
        self.faults.append(rec)
        self.fault_active = True
        print(f"soak: {rec.start_s:7.1f}s fault {f.kind} {f.target}", flush=True)
        node = self.ops.lab.plan.node(f.target) if f.target and not f.target.isdigit() else None
        try:
            if f.kind == "node_restart" and node:
                self._restart_by_fault(node, signal.SIGTERM)
            elif f.kind == "node_kill9" and node:
                self._restart_by_fault(node, signal.SIGKILL)
            elif f.kind == "exabgp_kill" and node:
                rec.outcome = "killed" if self.ops.kill_exabgp(node) else "no ExaBGP running"
            elif f.kind == "etcd_stop":
                self.ops.freeze_etcd(ETCD_STOP_S, self.stop)
            elif f.kind == "tor_reset" and node:
                rec.outcome = self.ops.reset_tor_session(node)[-200:]
            elif f.kind == "pool_block_size":
                rec.outcome = self._move_pool(int(f.target))
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
            print(f"soak: {rec.end_s:7.1f}s recovered from {f.kind}: {rec.outcome}", flush=True)

    def _move_pool(self, size: int) -> str:
        """A new pool of ``size`` blocks in the next free slot, the pool in
        use disabled (one ``apply -f``), the empty disabled pools deleted
        first; done when no live pod is left outside the new pool."""
        show = self.ops.ipam_show(30)
        if show is None:
            self.violation("ipam show did not answer before a pool move")
            return "no move: ipam show did not answer"
        pools = [
            PoolState(n, str(p["cidr"]), bool(p["disabled"]), int(p["blocks"]))
            for n, p in show["pools"].items()
        ]
        self.pool_moves += 1
        move = plan_pool_move(pools, self.slots, size, f"soak-{self.pool_moves}-b{size}")
        if isinstance(move, str):
            return f"no move: {move}"
        done = []
        for name in move.delete:
            rc, msg = self.ops.delete_pool(name)
            if rc != 0:
                self.violation("deleting an empty disabled pool failed", pool=name, output=msg)
            done.append(f"deleted {name}" if rc == 0 else f"{name} not deleted")
            self.pool_docs.pop(name, None)
        new = self.ops.pool_doc(move.create, move.cidr, move.block_size)
        old = [{**d, "spec": {**d["spec"], "disabled": True}} for n, d in self.pool_docs.items()]
        old = [d for d in old if d["metadata"]["name"] in move.disable]
        with self.mu:
            # ADDs may get either pool until apply -f has answered; one
            # settled pod a node stays in the old pool until it is checked
            self.active_since = float("inf")
            by_node: dict[str, str] = {}
            for p in settled_pods(self.created_at, self.now(), SETTLE_S):
                if p in self.live:
                    by_node.setdefault(self.live[p].node, p)
            self.witnesses = set(by_node.values())
        try:
            rc, msg = self.ops.apply([new, *old], self.out / "pools.yaml")
            t0 = self.now()
            with self.mu:
                self.active_since = t0
                if rc == 0:
                    self.pool_docs[move.create] = new
                    for d in old:
                        self.pool_docs[d["metadata"]["name"]] = d
                    self.active_net = ipaddress.ip_network(move.cidr)
            if rc != 0:
                self.violation("a pool move was refused", output=msg[-500:])
                return f"{'; '.join(done)}; apply -f exit {rc}: {msg[-300:]}"
            done.append(self._check_disabled_pool(move.disable))
        finally:
            with self.mu:
                self.witnesses = set()
        deadline = time.monotonic() + RECOVERY_TIMEOUT_S
        while not self.stop.is_set():
            with self.mu:
                left = [r.address for r in self.live.values() if not self.in_active_pool(r.address)]
            if not left:
                break
            if time.monotonic() > deadline:
                self.violation("pods did not leave the disabled pools", left=left[:20])
                break
            self.stop.wait(0.5)
        done.append(
            f"created {move.create} ({move.cidr}, /{size} blocks), disabled "
            f"{', '.join(move.disable) or 'none'}; the pods left them in {self.now() - t0:.1f} s"
        )
        return "; ".join(done)

    def _check_disabled_pool(self, disabled: Sequence[str]) -> str:
        """Disabling a pool stops new addresses from it, nothing else: once
        the nodes have seen the change, every other node still routes the
        disabled pools' blocks and their pods still reach every pod."""
        self.stop.wait(SETTLE_S)
        routes = self.ops.routes()
        show = self.ops.ipam_show(30)
        nodes = [n.name for n in self.ops.lab.plan.nodes]
        if show is not None:
            # blocks with pods in them: never released while the routes are read
            owners = {
                b["cidr"]: host
                for host, blocks in show["hosts"].items()
                for b in blocks
                if b["pool"] in disabled and b["used"] > 0
            }
            missing = missing_block_routes([r for r in routes if r[0] in nodes], owners, nodes)
            if missing:
                self.violation(
                    "a node stopped routing a disabled pool's blocks",
                    missing=len(missing),
                    sample=sorted(missing)[:10],
                )
        with self.mu:
            names = settled_pods(self.created_at, self.now(), SETTLE_S)
            pods = [self.live[n] for n in names if n in self.live]
        old = [p for p in pods if not self.in_active_pool(p.address)]
        targets = [Target(p.container_id, p.netns, p.address) for p in pods]
        ok = probe_matrix(targets) if old else frozenset()
        with self.mu:
            still = set(self.live)
        every = {(a.label, b.label) for a in targets for b in targets}
        failing = failures_among_live(every - ok, still) if old else set()
        if failing:
            self.violation(
                "the pods of a disabled pool lost their reachability",
                failing=len(failing),
                of=len(every),
                sample=sorted(failing)[:10],
            )
        return f"{len(old)} pods of the disabled pools pinged"

    # ---- checks -----------------------------------------------------------------

    def check(self, *, final: bool = False) -> None:
        """One round of checks, its reads side by side so that it fits in
        CHECK_EVERY_S: ``ipam show`` in the background, one ``ip`` read per
        namespace in parallel, the ping matrix from this process."""
        t = self.now()
        with self.mu:
            live = {p: r.address for p, r in self.live.items()}
        dups = duplicate_addresses(live)
        if dups:
            self.violation("two live pods share an address", duplicates=dups)
        with ThreadPoolExecutor(max_workers=1) as bg:
            show = bg.submit(self.ops.ipam_show, IPAM_SHOW_TIMEOUT_S)
            routes = self.ops.routes()
            self._check_reach(final=final)
            self._check_routes(t, routes, show.result())
        self._sample(t, len(live))
        self.check_durations.append(self.now() - t)
        print(
            f"soak: {t:7.1f}s check ({self.now() - t:.1f} s): {len(live)} pods, "
            f"{self.routes_now} routes, {self.pairs_checked} pod pairs pinged so far, "
            f"{len(self.fail_since)} failing, {len(self.violations)} violations",
            flush=True,
        )

    def supervise(self) -> None:
        """What the shipped unit's ``Restart=on-failure``/``RestartSec=2`` does:
        a node that exited is started again 2 s later. A node refuses to
        start when etcd does not answer in time (it fails fast by design and
        leaves the retry to systemd): that is recorded, not a violation. Any
        other exit is one."""
        while not self.stop.wait(0.5):
            for n in self.ops.lab.plan.nodes:
                with self.mu:
                    if n.name in self.restarting or self.ops.node_alive(n):
                        continue
                    self.restarting.add(n.name)
                try:
                    tail = Path(n.log_path).read_text(errors="replace")[-600:]
                    event = {"at_s": round(self.now(), 1), "node": n.name}
                    if "cannot start:" in tail:
                        self.start_failures.append({**event, "why": tail.strip()[-300:]})
                    else:
                        self.violation("node exited by itself", **event, log_tail=tail)
                    if not self.stop.wait(SYSTEMD_RESTART_S):
                        self.ops.restart_node(n, signal.SIGKILL)
                finally:
                    with self.mu:
                        self.restarting.discard(n.name)

    def _restart_by_fault(self, node: NodePlan, sig: int) -> None:
        with self.mu:
            self.restarting.add(node.name)
        try:
            self.ops.restart_node(node, sig)
        finally:
            with self.mu:
                self.restarting.discard(node.name)

    def _check_routes(
        self, t: float, routes: list[tuple[str, str]], show: dict[str, Any] | None
    ) -> None:
        """Routes into any slot a pool ever had (a deleted pool's too) that
        lie in no block some host owns, for longer than graceful restart."""
        self.routes_now = len(routes)
        if show is None:  # etcd frozen: nothing to compare with this time
            return
        owned = [b["cidr"] for blocks in show["hosts"].values() for b in blocks]
        orphans = orphan_routes(routes, owned, self.slots)
        self.orphan_since = track_since(self.orphan_since, orphans, t)
        for key in overdue(self.orphan_since, t, self.graceful_restart_s):
            if key not in self.reported_orphans:
                self.reported_orphans.add(key)
                self.violation("route to a block nobody owns", where=key[0], dst=key[1])

    def _check_reach(self, *, final: bool) -> None:
        due = final or self.quiet()
        with self.mu:
            names = settled_pods(self.created_at, self.now(), SETTLE_S)
            pods = [self.live[n] for n in names if n in self.live]
        targets = [Target(p.container_id, p.netns, p.address) for p in pods]
        ok = probe_matrix(targets) if targets else frozenset()
        with self.mu:
            still = set(self.live)
        every = {(a.label, b.label) for a in targets for b in targets}
        failing = failures_among_live(every - ok, still)
        t = self.now()
        # a pair that stopped failing because a pod was deleted had no end
        prev = {k: v for k, v in self.fail_since.items() if k[0] in still and k[1] in still}
        new_since = track_since(prev, failing, t)
        self.outages += ended(prev, new_since, t)
        self.fail_since = new_since
        self.pairs_checked += len(every)
        if failing and due:
            self.violation(
                "pods do not reach each other",
                failing=len(failing),
                of=len(every),
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

    def pod_ops(self) -> dict[str, Any]:
        """How fast the churn went: successful ADDs and DELs a second over
        the churn, per whole minute, and their latencies."""
        start, end = self.churn_span if len(self.churn_span) == 2 else (0.0, self.now())
        minutes = rates_by_window(self.op_ends, start, end, 60.0)
        return {
            **dict(self.counts),
            "target_per_s": self.rate,
            "ops_per_s": round(len(self.op_ends) / max(end - start, 1e-9), 2),
            "ops_per_s_by_minute": [round(r, 2) for r in minutes],
            "min_minute_ops_per_s": round(min(minutes), 2) if minutes else None,
            "add_latency_s": distribution(self.latency["add"]),
            "del_latency_s": distribution(self.latency["del"]),
        }

    def summary(self, plot: Path) -> dict[str, Any]:
        rss, fds = self.growth_of("rss_kib"), self.growth_of("fds")
        for name, g in (("RSS", rss), ("open fds", fds)):
            if g["growth_pct"] is not None and g["growth_pct"] >= GROWTH_LIMIT_PCT:
                self.violation(f"node {name} grew {g['growth_pct']}%", **g)
        open_outages = [self.now() - t for t in self.fail_since.values()]
        intervals = [b - a for a, b in itertools.pairwise(self.check_starts)]
        return {
            "minutes": self.duration_s / 60,
            "seed": self.seed,
            "nodes": [n.name for n in self.ops.lab.plan.nodes],
            "faults_injected": dict(Counter(f.kind for f in self.faults)),
            "faults": [asdict(f) for f in self.faults],
            "pod_ops": self.pod_ops(),
            "checks": len(self.samples),
            "check_interval_s": distribution(intervals),
            "checks_over_interval": sum(1 for i in intervals if i > CHECK_EVERY_S + 0.5),
            "check_duration_s": distribution(self.check_durations),
            "pod_pairs_pinged": self.pairs_checked,
            "invariant_violations": len(self.violations),
            "node_start_failures": self.start_failures,
            "violations": self.violations,
            "max_pod_outage_s": round(max(self.outages + open_outages, default=0.0), 1),
            "rss_kib": rss,
            "fds": fds,
            "ipam_check_with_pods": getattr(self, "ipam_with_pods", None),
            "ipam_check_without_pods": getattr(self, "ipam_without_pods", None),
            "pools_at_end": {n: d["spec"] for n, d in self.pool_docs.items()},
            "graceful_restart_s": self.graceful_restart_s,
            "plot": str(plot),
        }


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tests.soak", description=__doc__)
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--seed", type=int, default=None, help="fault plan seed (default: random)")
    p.add_argument("--out", default="soak-results", help="where summary.json and soak.png go")
    p.add_argument("--run-dir", default="/run/meshroute-soak")
    p.add_argument("--pods-per-node", type=int, default=4, help="pods kept per node by the churn")
    p.add_argument("--rate", type=float, default=5.0, help="pod creations + deletions a second")
    p.add_argument("--workers", type=int, default=32, help="pod operations in flight at most")
    args = p.parse_args(argv)
    if not 0.5 <= args.minutes <= 24 * 60:
        p.error("--minutes: 0.5 .. 1440")
    if not 0.1 <= args.rate <= 50:
        p.error("--rate: 0.1 .. 50")
    if not 1 <= args.pods_per_node <= 50:
        p.error("--pods-per-node: 1 .. 50")
    if not 1 <= args.workers <= 64:
        p.error("--workers: 1 .. 64")
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
    ops: LabOps | None = None
    try:
        ops = LabOps(res.lab, Path(args.run_dir) / "cni-bin")
        soak = Soak(ops, duration, seed, out, args.pods_per_node, args.rate)
        soak.graceful_restart_s = ops.graceful_restart_s()
        soak.setup_pools()
        names = [n.name for n in res.lab.plan.nodes]
        faults = plan_faults(seed, duration, names)
        quiet_tail = max(30.0, 0.1 * duration)
        rng = random.Random(seed + 1)
        workers = [
            threading.Thread(target=soak.churn, args=(random.Random(rng.random()),), daemon=True)
            for _ in range(args.workers)
        ]
        injector = threading.Thread(
            target=soak.inject, args=(faults, duration - quiet_tail), daemon=True
        )
        print(f"soak: {args.minutes} min, seed {seed}, output in {out}", flush=True)
        soak.churn_span.append(soak.now())
        for w in workers:
            w.start()
        injector.start()
        threading.Thread(target=soak.supervise, daemon=True).start()
        next_at = soak.now() + CHECK_EVERY_S
        while next_at < duration:
            time.sleep(max(0.0, next_at - soak.now()))
            soak.check_starts.append(soak.now())
            soak.check()
            # an overrun check is followed at once, and shows in the intervals
            next_at = max(next_at + CHECK_EVERY_S, soak.now())
        injector.join()
        soak.stop.set()
        for w in workers:
            w.join()
        soak.churn_span.append(soak.now())
        soak.finish()
        png = out / "soak.png"
        summary = soak.summary(png)
        plot(soak.samples, soak.faults, png)
        (out / "samples.json").write_text(json.dumps(soak.samples))
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        print(json.dumps({k: v for k, v in summary.items() if k != "faults"}, indent=2))
        return 0 if not soak.violations else 1
    finally:
        if ops is not None:
            ops.close()
        lab_down(args.run_dir, LAB_PREFIX)
