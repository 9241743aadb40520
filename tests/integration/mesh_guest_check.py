"""The mesh topology's cross-subnet pod ping over real IPIP, run INSIDE the
QEMU guest by test_ipip_qemu.py (after ipip_guest_check, in the same boot).

The real product path, built by the lab (``lab.up.lab_up``, as ``python -m
lab up --topology mesh --encap auto --ipv4-only`` does): etcd on the guest's
loopback, the pool with ``ipipMode: CrossSubnet``, two ``meshroute node``
processes on two racks (different subnets, joined by a ToR namespace that
knows nothing of pod addresses) in a BGP full mesh over ExaBGP, one pod on
each attached by ``meshroute-cni``. ``--encap auto`` must choose IPIP here,
since the guest kernel has the ipip module. Then, on each node, the route
the NODE installed towards the other node's pod must be ``via <peer> dev
tunl0 onlink``, and a pod-to-pod ping must grow tunl0's counters on both
nodes (the reply can only come back encapsulated).

Prints one ``MESH-CHECK {json}`` line and exits non-zero on any failure
(then with the tail of each node's log). Run as ``python -m
tests.integration.mesh_guest_check`` from the checkout.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
import time
from pathlib import Path

from lab.build import Lab, start_meshroute_node, teardown
from lab.kernel import kernel_has_module
from lab.netns import Netns
from lab.topology import LabParams, NodePlan, decide_encap
from lab.up import converged, lab_up
from tests.integration.ipip_guest_check import log, route_of, tunl0_counters

RUN_DIR = "/run/meshroute-mesh-check"
PINGS = 5
# Under TCG every daemon takes many times longer to start (a node imports
# for tens of seconds); the lab's waits are stretched by this much.
SLOWNESS = 10.0
CONVERGE_S = 180.0


def main() -> int:
    encap, _note = decide_encap("auto", kernel_has_module("ipip"))
    params = LabParams(
        topology="mesh",
        racks=2,
        nodes_per_rack=1,
        pods_per_node=1,
        run_dir=RUN_DIR,
        encap=encap,
        dual_stack=False,
    )
    t0 = time.monotonic()
    up = lab_up(
        params,
        start_meshroute_node,
        prefix="mrq",
        say=log,
        converge=lambda lab: converged(lab) and all(_tunnelled(lab)),
        converge_timeout=CONVERGE_S,
        slowness=SLOWNESS,
    )
    result: dict[str, object] = {"encap": encap, "up_s": round(time.monotonic() - t0, 1)}
    failures: list[str] = [] if encap == "ipip" else [f"--encap auto chose {encap}"]
    try:
        failures += _check(up.lab, result)
        assert up.matrix is not None
        result["matrix_failures"] = up.matrix.failures
        if up.matrix.failures:
            failures.append(f"ping matrix failures {up.matrix.failures}")
    finally:
        if failures:
            for n in up.lab.plan.nodes:
                tail = Path(n.log_path).read_text(errors="replace")[-6000:]
                print(f"--- {n.name} log tail ---\n{tail}", flush=True)
                print(_host(up.lab, n).ip("route"), flush=True)
        teardown(up.lab.state, remove_run_dir=True)
    result["failures"] = failures
    result["total_s"] = round(time.monotonic() - t0, 1)
    print("MESH-CHECK " + json.dumps(result, sort_keys=True), flush=True)
    return 1 if failures else 0


def _check(lab: Lab, result: dict[str, object]) -> list[str]:
    """The node-installed tunl0 routes, then a pod-to-pod ping that must
    pass through tunl0 on both nodes."""
    failures: list[str] = []
    a, b = lab.plan.nodes
    pod = {p.node: p for p in lab.state.pods}
    routes: dict[str, object] = {}
    for (me, peer), ok in zip(((a, b), (b, a)), _tunnelled(lab), strict=True):
        route = _route_towards(_host(lab, me), pod[peer.name].address)
        routes[me.name] = {**route, "peer": peer.ip}
        if not ok:
            failures.append(f"{me.name}: route to {pod[peer.name].address} is {route}")
    result["routes"] = routes
    hosts = {n.name: _host(lab, n) for n in (a, b)}
    before = {name: tunl0_counters(h) for name, h in hosts.items()}
    src, dst = pod[a.name], pod[b.name]
    ping_argv = ["ping", "-n", "-q", "-c", str(PINGS), "-i", "0.2", "-W", "2", dst.address]
    ping = subprocess.run(
        ["ip", "netns", "exec", src.netns, *ping_argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    after = {name: tunl0_counters(h) for name, h in hosts.items()}
    result.update(pings=PINGS, ping=ping.stdout.strip().splitlines()[-2:])
    result.update(tunl0_before=before, tunl0_after=after)
    if ping.returncode != 0:
        failures.append(f"pod ping {src.address} -> {dst.address}: {ping.stdout}{ping.stderr}")
    for name in hosts:
        for d in ("tx_packets", "rx_packets"):
            grew = after[name][d] - before[name][d]
            if grew < PINGS:
                failures.append(f"{name} tunl0 {d} grew by {grew} < {PINGS}")
    return failures


def _tunnelled(lab: Lab) -> list[bool]:
    """Per node (in plan order): does its route towards the other node's
    pod go ``via <peer> dev tunl0 onlink``?"""
    a, b = lab.plan.nodes
    pod = {p.node: p for p in lab.state.pods}
    out = []
    for me, peer in ((a, b), (b, a)):
        route = _route_towards(_host(lab, me), pod[peer.name].address)
        flags = route.get("flags", [])
        onlink = isinstance(flags, list) and "onlink" in flags
        out.append((route.get("dev"), route.get("gateway"), onlink) == ("tunl0", peer.ip, True))
    return out


def _host(lab: Lab, node: NodePlan) -> Netns:
    return Netns(lab.state.ns(node.ns))


def _route_towards(host: Netns, address: str) -> dict[str, object]:
    """The most specific route of the node's main table covering ``address``
    (the remote pod's block, once the node has installed it)."""
    routes = json.loads(host.ip("-N", "-j", "-d", "route", "show", "match", address))
    best = max(routes, key=lambda r: _prefixlen(str(r["dst"])))
    return route_of(host, str(best["dst"]))


def _prefixlen(dst: str) -> int:
    return -1 if dst == "default" else ipaddress.ip_network(dst).prefixlen


if __name__ == "__main__":
    sys.exit(main())
