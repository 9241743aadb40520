"""``lab up`` and ``lab down`` as one call each: the order of the steps and
their progress messages. The node process is whatever ``start_node``
starts (``build.start_meshroute_node`` runs ``meshroute node``), so this
module never needs to know how a node works.

    underlay (namespaces, links, etcd, BIRD) -> resources (pools, BGP)
    -> nodes (start_node per node, wait for their IPAM sockets)
    -> pods (meshroute-cni, or bridge + meshroute-cni-ipam) -> sessions up
    -> ping matrix (and the IPv6 one, ``ping -6``, in a dual-stack lab)
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lab.build import (
    LAB_PREFIX,
    Lab,
    Say,
    StartNode,
    apply_resources,
    build_underlay,
    down_after_crash,
    start_nodes,
    teardown,
    wait_nodes_ready,
)
from lab.dual_homed import plan_topology
from lab.pods import CNI_TIMEOUT_S, PingMatrix, create_pods, ping_matrix, pod_endpoints
from lab.state import PodRecord, load_state
from lab.status import (
    bird_protocols,
    frr_sessions,
    node_ready,
    pod_routes_missing,
    tentative_addresses,
)
from lab.topology import LabParams

# BIRD protocols towards nodes: the routers' (lab plan) and the
# reflectors' clients (meshroute reflector)
NODE_SESSIONS = ("node_", "c_")


def _say(msg: str) -> None:
    print(f"==> {msg}", flush=True)


@dataclass(frozen=True)
class UpResult:
    lab: Lab
    matrix: PingMatrix | None
    matrix6: PingMatrix | None = None  # dual stack only

    @property
    def all_ok(self) -> bool:
        return all(m is None or m.all_ok for m in (self.matrix, self.matrix6))


def wait_fabric(lab: Lab, timeout: float = 20.0, *, nodes_too: bool = False) -> bool:
    """Until every BGP session of the lab's BIRD and FRR routers is Established
    (with ``nodes_too``, also those towards the nodes); False on timeout."""
    deadline = time.monotonic() + timeout
    sockets = [sp.socket_path for sp in lab.plan.speakers]
    sockets += [r.socket_path for r in lab.plan.reflectors]
    node_ips = {n.ip for n in lab.plan.nodes}
    while True:
        states = [
            pr.established
            for sock in sockets
            for pr in bird_protocols(sock)
            if pr.proto == "BGP" and (nodes_too or not pr.name.startswith(NODE_SESSIONS))
        ]
        states += [
            state == "Established"
            for fp in lab.plan.frr
            for addr, state in frr_sessions(fp).items()
            if nodes_too or addr not in node_ips
        ]
        if all(states):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)


def converged(lab: Lab) -> bool:
    """Every BIRD session Established (those with the nodes too), every
    node's ``/readiness`` 200, on every node a route towards every other
    node's pods, both families (readiness alone says the sessions are up,
    not that the blocks the pods were just given a moment ago have arrived),
    and no IPv6 address of a node or pod still tentative (L2-segment pods)."""
    return (
        wait_fabric(lab, timeout=0, nodes_too=True)
        and all(node_ready(lab, n) for n in lab.plan.nodes)
        and not pod_routes_missing(lab)
        and not tentative_addresses(lab)
    )


def install_cni_plugin(cni_bin: Path, timeout: float = 60.0) -> None:
    """The CNI plugin's launcher, installed the way the README tells an
    operator to."""
    subprocess.run(
        [sys.executable, "-m", "ipam.cni_install", str(cni_bin)],
        check=True,
        capture_output=True,
        timeout=timeout,
    )


def lab_up(
    params: LabParams,
    start_node: StartNode,
    *,
    prefix: str = LAB_PREFIX,
    say: Say = _say,
    converge: Callable[[Lab], bool] | None = None,
    converge_timeout: float = 30.0,
    slowness: float = 1.0,
) -> UpResult:
    """Build the whole lab; on any failure everything is torn down again.
    Before the ping matrix, the routers' sessions among themselves get up
    to 20 s, then ``converge`` (default: every BIRD session Established,
    those with the nodes too, every node's ``/readiness``, on every node a
    route to every other node's pods, no tentative IPv6 address) is polled up
    to ``converge_timeout`` s. ``slowness`` multiplies every other wait
    (daemons and nodes coming up): more than 1 under CPU emulation, where
    importing a node alone takes tens of seconds."""
    plan = plan_topology(params)
    t0 = time.monotonic()
    lab = build_underlay(plan, prefix=prefix, say=say, slowness=slowness)
    try:
        apply_resources(lab)
        say(f"applied {Path(plan.run_dir) / 'resources.yaml'} (pool, BGP configuration, peers)")
        start_nodes(lab, start_node, say=say)
        wait_nodes_ready(lab, 30.0 * slowness)
        say("every node serves IPAM")
        cni_bin = Path(plan.run_dir) / "cni-bin"
        install_cni_plugin(cni_bin, timeout=60.0 * slowness)
        for node in plan.nodes:
            pods = create_pods(lab, node, cni_bin, timeout=CNI_TIMEOUT_S * slowness)
            say(f"{node.name}: pods " + ", ".join(_pod_addresses(p) for p in pods))
        if not wait_fabric(lab, timeout=20.0 * slowness):
            say("warning: some sessions between the routers are not Established")
        ready = converge or converged
        deadline = time.monotonic() + converge_timeout
        while not ready(lab) and time.monotonic() < deadline:
            time.sleep(0.5)
        dual = params.dual_stack and bool(lab.state.pods)
        say(f"built in {time.monotonic() - t0:.1f} s; ping matri{'ces' if dual else 'x'}")
        matrix = ping_matrix(pod_endpoints(lab)) if lab.state.pods else None
        matrix6 = ping_matrix(pod_endpoints(lab, 6)) if dual else None
    except BaseException:
        say("failed: tearing down what was built")
        teardown(lab.state)
        raise
    return UpResult(lab, matrix, matrix6)


def _pod_addresses(p: PodRecord) -> str:
    return f"{p.label} {p.address}" + (f" {p.address6}" if p.address6 else "")


def lab_down(run_dir: str, prefix: str = LAB_PREFIX, say: Say = _say) -> None:
    """Remove the lab in ``run_dir``, also after a crash (see
    ``down_after_crash``)."""
    state = load_state(run_dir)
    if state is not None:
        say(
            f"ending {len(state.processes)} processes, removing {len(state.namespaces)} "
            f"namespaces and {len(state.pods)} pods"
        )
    swept = down_after_crash(run_dir, prefix)
    if swept:
        say(f"swept {len(swept)} leftover namespaces")
