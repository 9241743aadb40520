"""Kernel route programming: felix_lite against ``ip -batch`` and pyroute2.

``python -m bench.routes --routes 100000 --json`` creates one network
namespace (removed in ``finally``) with a veth (192.0.2.1/24) and, in one
run, measures N /26 routes ``via 192.0.2.2 dev v0 proto 80``:

- ``install_routes_per_s``: felix_lite's product path, the node's start: N
  best routes planned (``IncrementalPlanner``), handed to the ``Reconciler``
  over ``NetlinkRouteTable`` and one full reconcile pass from an empty table
  (dump, diff, bulk netlink writes in the reconciler's batches), all timed;
- ``table_routes_per_s``: the table alone (``NetlinkRouteTable.apply_routes``
  with ready ``RouteOp``s, 1000 per call);
- ``install_bulk_routes_per_s``: the bulk path alone (``BulkRoutes.apply``
  with routes already in wire form), for reference;
- ``ip_batch_routes_per_s``: ``ip -batch`` with the same routes (the anchor);
- ``pyroute2_per_call_routes_per_s``: one ``IPRoute.route('add')`` per route,
  on 10k routes (the rate is what is reported; it does not grow with N);
- ``resync_noop_s``: a full reconcile pass with every route present and
  nothing to change (stream-dump, diff, no writes), after the heap is
  settled as the node settles it once its table is in;
- ``delete_all_s``: a reconcile pass after the desired state became empty;
- ``rss_mb``: peak RSS (VmHWM) of the felix_lite child process, which holds
  the desired state of N routes, the reconciler's view of the kernel, and
  does all of the above.

The felix_lite parts run in a child process started with ``ip netns exec``
(so its sockets open in the namespace and its RSS is its own). Each timed
part runs ``--repeat`` times (fresh child each time); the medians are
reported with their samples. The last line of output is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.report import print_result, require_root
from felix_lite.model import DEFAULT_PROTO

PROTO = DEFAULT_PROTO
# What the reconciler hands the table per call (its default batch_size).
TABLE_BATCH = 1000
GATEWAY = "192.0.2.2"
DEV = "v0"


def _prefixes(n: int) -> list[str]:
    """n distinct /26s in 10.0.0.0/8 (4 per /24)."""
    if n > 2**18:
        raise SystemExit("at most 262144 routes")
    return [f"10.{i >> 10}.{(i >> 2) & 255}.{(i & 3) * 64}/26" for i in range(n)]


def _sh(*args: str, check: bool = True) -> str:
    p = subprocess.run(list(args), capture_output=True, text=True, timeout=600)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {p.stderr.strip()}")
    return p.stdout


def _route_count(ns: str) -> int:
    out = subprocess.run(
        ["ip", "-n", ns, "route", "show", "proto", str(PROTO)],
        capture_output=True,
        timeout=600,
    ).stdout
    return out.count(b"\n")


def _flush(ns: str) -> None:
    _sh("ip", "-n", ns, "route", "flush", "proto", str(PROTO))


# ----------------------------------------------------------- the child


def _vm_hwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def _child_reconciler(n: int) -> dict[str, Any]:
    from netaddr import IPAddress, IPNetwork

    from felix_lite.incremental import IncrementalPlanner, best_changes
    from felix_lite.inputs import BestRoute, HostInterface, PlanInput, Pool
    from felix_lite.model import KernelState
    from felix_lite.netlink_table import NetlinkRouteTable
    from felix_lite.reconciler import Reconciler
    from meshroute.runtime.heap import settle_long_lived

    gw = (IPAddress(GATEWAY),)
    best = [BestRoute(IPNetwork(p), gw) for p in _prefixes(n)]
    host = PlanInput(
        interfaces=(HostInterface(DEV, (IPNetwork("192.0.2.1/24"),), 1500),),
        pools=(Pool(IPNetwork("10.0.0.0/8")),),
    )
    table = NetlinkRouteTable(None)
    try:
        rec = Reconciler(table, proto=PROTO)
        t0, c0 = time.perf_counter(), time.process_time()
        planner = IncrementalPlanner(host)
        planner.update(best_changes(best))
        rec.set_whole(planner.whole())
        first = await rec.sync_once(full=True)
        install_s = time.perf_counter() - t0
        install_cpu_s = time.process_time() - c0
        # The node freezes what it holds once its table is in
        # (meshroute.runtime.heap), before any resync: so does this child.
        settle_long_lived()
        t0, c0 = time.perf_counter(), time.process_time()
        noop = await rec.sync_once(full=True)
        noop_s = time.perf_counter() - t0
        noop_cpu_s = time.process_time() - c0
        rec.set_desired(KernelState())  # delete all
        t0 = time.perf_counter()
        gone = await rec.sync_once(full=False)
        delete_s = time.perf_counter() - t0
    finally:
        table.close()
    return {
        "install_s": install_s,
        "install_cpu_s": install_cpu_s,
        "installed": first.route_adds,
        "install_failures": first.failures,
        "resync_noop_s": noop_s,
        "resync_noop_cpu_s": noop_cpu_s,
        "noop_changes": noop.changes,
        "delete_all_s": delete_s,
        "deleted": gone.route_deletes,
        "rss_mb": _vm_hwm_mb(),
    }


async def _child_table(n: int, batch: int) -> dict[str, Any]:
    from netaddr import IPAddress, IPNetwork

    from felix_lite.model import KernelRoute, NextHop, RouteKind
    from felix_lite.netlink_table import NetlinkRouteTable
    from felix_lite.ports import Op, RouteOp

    nh = (NextHop(IPAddress(GATEWAY), DEV),)
    routes = [KernelRoute(IPNetwork(p), RouteKind.DIRECT, nh) for p in _prefixes(n)]
    table = NetlinkRouteTable(None)
    try:
        failures = 0
        t0, c0 = time.perf_counter(), time.process_time()
        for i in range(0, n, batch):
            ops = [RouteOp(Op.ADD, r) for r in routes[i : i + batch]]
            failures += len(await table.apply_routes(ops, PROTO))
        install_s = time.perf_counter() - t0
        install_cpu_s = time.process_time() - c0
        hwm_before_dump = _vm_hwm_mb()
        t0 = time.perf_counter()
        dumped = 0
        async for _ in table.dump_owned(PROTO, 254):
            dumped += 1
        dump_s = time.perf_counter() - t0
        dump_growth = _vm_hwm_mb() - hwm_before_dump
        t0 = time.perf_counter()
        for i in range(0, n, batch):
            ops = [RouteOp(Op.DELETE, r) for r in routes[i : i + batch]]
            failures += len(await table.apply_routes(ops, PROTO))
        delete_s = time.perf_counter() - t0
    finally:
        table.close()
    return {
        "install_s": install_s,
        "install_cpu_s": install_cpu_s,
        "dump_s": dump_s,
        "delete_s": delete_s,
        "failures": failures,
        "dumped": dumped,
        "rss_mb": _vm_hwm_mb(),
        "dump_peak_growth_mb": dump_growth,
    }


def _child_bulk(n: int) -> dict[str, Any]:
    from felix_lite.netlink_bulk import OP_DELETE, OP_REPLACE, BulkRoutes
    from rtnetlink import routes as nr
    from rtnetlink import wire as nw

    oif = socket_ifindex(DEV)
    routes = []
    for p in _prefixes(n):
        dst, plen = p.split("/")
        routes.append(
            nr.WireRoute(nw.AF_INET, dst, int(plen), gateway=GATEWAY, oif=oif, proto=PROTO)
        )
    with BulkRoutes() as bulk:
        t0 = time.perf_counter()
        failures = bulk.apply([(OP_REPLACE, r) for r in routes])
        install_s = time.perf_counter() - t0
        dumped = sum(len(c) for c in bulk.dump(PROTO))
        bulk.apply([(OP_DELETE, r) for r in routes])
    return {"install_s": install_s, "failures": len(failures), "dumped": dumped}


def socket_ifindex(name: str) -> int:
    import socket

    return socket.if_nametoindex(name)


def child_main(mode: str, n: int) -> None:
    if mode == "reconciler":
        result = asyncio.run(_child_reconciler(n))
    elif mode == "table":
        result = asyncio.run(_child_table(n, TABLE_BATCH))
    else:
        result = _child_bulk(n)
    print(json.dumps(result))


# ----------------------------------------------------------- the parent


def _run_child(ns: str, mode: str, n: int) -> dict[str, Any]:
    cmd = [
        "ip",
        "netns",
        "exec",
        ns,
        sys.executable,
        "-m",
        "bench.routes",
        "--child",
        mode,
        "--routes",
        str(n),
    ]
    out = _sh(*cmd)
    return dict(json.loads(out.strip().splitlines()[-1]))


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _ip_batch(ns: str, prefixes: list[str], workdir: str) -> tuple[float, float]:
    """(wall, CPU) seconds of ``ip -batch``; the kernel's share of the work
    runs in ip's own system calls, so its CPU time includes it."""
    path = os.path.join(workdir, "routes.batch")
    with open(path, "w") as f:
        for p in prefixes:
            f.write(f"route add {p} via {GATEWAY} dev {DEV} proto {PROTO}\n")
    t0, c0 = time.perf_counter(), _children_cpu()
    _sh("ip", "-n", ns, "-batch", path)
    return time.perf_counter() - t0, _children_cpu() - c0


def _pyroute2_per_call(ns: str, prefixes: list[str]) -> float:
    from pyroute2 import IPRoute

    with IPRoute(netns=ns, flags=0) as ipr:
        oif = ipr.link_lookup(ifname=DEV)[0]
        t0 = time.perf_counter()
        for p in prefixes:
            ipr.route("add", dst=p, gateway=GATEWAY, oif=oif, proto=PROTO)
        return time.perf_counter() - t0


def _median(xs: list[float]) -> float:
    return round(statistics.median(xs), 4)


def bench(n: int, repeat: int, pyroute2_n: int) -> dict[str, Any]:
    ns = f"mrb{os.getpid()}-routes"
    prefixes = _prefixes(n)
    samples: dict[str, list[float]] = {
        k: []
        for k in (
            "install_routes_per_s",
            "ip_batch_routes_per_s",
            "pyroute2_per_call_routes_per_s",
            "resync_noop_s",
            "delete_all_s",
            "rss_mb",
            "table_routes_per_s",
            "install_bulk_routes_per_s",
            "dump_owned_s",
            "delete_table_s",
            "rss_table_mb",
            "dump_owned_peak_growth_mb",
            "install_cpu_routes_per_s",
            "table_cpu_routes_per_s",
            "ip_batch_cpu_routes_per_s",
            "resync_noop_cpu_s",
        )
    }
    checks: list[str] = []
    _sh("ip", "netns", "add", ns)
    try:
        _sh("ip", "-n", ns, "link", "set", "lo", "up")
        _sh("ip", "-n", ns, "link", "add", DEV, "type", "veth", "peer", "name", "v1")
        _sh("ip", "-n", ns, "addr", "add", "192.0.2.1/24", "dev", DEV)
        _sh("ip", "-n", ns, "link", "set", DEV, "up")
        _sh("ip", "-n", ns, "link", "set", "v1", "up")
        with tempfile.TemporaryDirectory() as workdir:

            def anchor() -> None:
                dt, cpu = _ip_batch(ns, prefixes, workdir)
                got = _route_count(ns)
                if got != n:
                    checks.append(f"ip -batch installed {got} of {n}")
                samples["ip_batch_routes_per_s"].append(n / dt)
                samples["ip_batch_cpu_routes_per_s"].append(n / cpu)
                _flush(ns)

            for i in range(repeat):
                if i % 2 == 0:  # the anchor first, then last: alternating
                    anchor()
                t = _run_child(ns, "table", n)
                if t["failures"] or t["dumped"] != n:
                    checks.append(f"netlink_table counts off: {t}")
                samples["table_routes_per_s"].append(n / t["install_s"])
                samples["table_cpu_routes_per_s"].append(n / t["install_cpu_s"])
                samples["dump_owned_s"].append(t["dump_s"])
                samples["delete_table_s"].append(t["delete_s"])
                samples["rss_table_mb"].append(t["rss_mb"])
                samples["dump_owned_peak_growth_mb"].append(t["dump_peak_growth_mb"])
                left = _route_count(ns)
                if left:
                    checks.append(f"{left} routes left after netlink_table's delete")
                    _flush(ns)

                c = _run_child(ns, "reconciler", n)
                if c["installed"] != n or c["install_failures"] or c["noop_changes"]:
                    checks.append(f"felix_lite pass counts off: {c}")
                if c["deleted"] != n:
                    checks.append(f"felix_lite deleted {c['deleted']} of {n}")
                samples["install_routes_per_s"].append(n / c["install_s"])
                samples["install_cpu_routes_per_s"].append(n / c["install_cpu_s"])
                samples["resync_noop_s"].append(c["resync_noop_s"])
                samples["resync_noop_cpu_s"].append(c["resync_noop_cpu_s"])
                samples["delete_all_s"].append(c["delete_all_s"])
                samples["rss_mb"].append(c["rss_mb"])
                left = _route_count(ns)
                if left:
                    checks.append(f"{left} routes left after felix_lite's delete")
                    _flush(ns)

                b = _run_child(ns, "bulk", n)
                if b["failures"] or b["dumped"] != n:
                    checks.append(f"bulk path counts off: {b}")
                samples["install_bulk_routes_per_s"].append(n / b["install_s"])

                k = min(pyroute2_n, n)
                dt = _pyroute2_per_call(ns, prefixes[:k])
                samples["pyroute2_per_call_routes_per_s"].append(k / dt)
                _flush(ns)
                if i % 2 == 1:
                    anchor()
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=60)
    med = {k: _median(v) for k, v in samples.items()}
    result: dict[str, Any] = {"routes": n, **med}
    result["install_vs_ip_batch"] = round(
        med["install_routes_per_s"] / med["ip_batch_routes_per_s"], 2
    )
    result["table_vs_ip_batch"] = round(med["table_routes_per_s"] / med["ip_batch_routes_per_s"], 2)
    result["install_vs_ip_batch_cpu"] = round(
        med["install_cpu_routes_per_s"] / med["ip_batch_cpu_routes_per_s"], 2
    )
    result["goals"] = {
        "install_ge_1.5x_ip_batch": result["install_vs_ip_batch"] >= 1.5,
        "resync_noop_le_1s": med["resync_noop_s"] <= 1.0,
        "rss_le_120mb": med["rss_mb"] <= 120,
    }
    result["pyroute2_per_call_measured_on"] = min(pyroute2_n, n)
    result["repeat"] = repeat
    result["samples"] = {k: [round(x, 4) for x in v] for k, v in samples.items()}
    result["paths"] = {
        "install_routes_per_s": "IncrementalPlanner.update + Reconciler.set_whole + "
        "Reconciler.sync_once(full=True) from an empty table",
        "table_routes_per_s": f"NetlinkRouteTable.apply_routes, {TABLE_BATCH} routes per call",
        "install_bulk_routes_per_s": "BulkRoutes.apply, routes already in wire form",
        "resync_noop_s": "Reconciler.sync_once(full=True), all present, heap settled "
        "(meshroute.runtime.heap.settle_long_lived, as the node does once installed)",
        "delete_all_s": "Reconciler.sync_once(full=False) after set_desired(empty)",
        "rss_mb": "VmHWM of the reconciler child (desired state + reconciler + adapter)",
        "rss_table_mb": "VmHWM of the netlink_table child",
        "dump_owned_s": "NetlinkRouteTable.dump_owned streamed and counted",
        "dump_owned_peak_growth_mb": "VmHWM growth while streaming the whole dump",
        "*_cpu_*": "the same, counted in CPU seconds (user+sys, all threads) of the process "
        "doing it: steadier than wall time on a shared, loaded machine",
    }
    result["checks"] = checks or "ok"
    result["kernel"] = os.uname().release
    return result


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--routes", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--pyroute2-routes", type=int, default=10_000)
    ap.add_argument("--json", action="store_true", help="print only the JSON result")
    ap.add_argument("--child", choices=["reconciler", "table", "bulk"], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child_main(args.child, args.routes)
        return
    require_root("bench.routes")
    result = bench(args.routes, args.repeat, args.pyroute2_routes)
    print_result(result, args.json)


if __name__ == "__main__":
    main()
