"""Block-claim convergence in the lab: from a node claiming a new block to
the block's route in the kernel of every other node.

``.venv/bin/python -m bench.convergence --json`` builds the lab
(``lab``: mesh topology, 2 racks x 2 nodes, no pods; namespaces
``mrbench*``, a temporary run dir; removed in ``finally``), then ``--claims``
times (default 20), round-robin over the nodes:

- starts the clock and assigns, through ``Ipam.assign_ip`` with the node as
  host, the first address of a block nobody holds yet: IPAM claims the block
  for that node (affinity + block in etcd) and assigns the address;
- stops one clock per other node when ``ip monitor route`` in its namespace
  (started before the claims, read by one thread each) reports the block's
  route; the claim's figure is the slowest of them (every other node has it).

Reported: ``p50_ms``, ``p99_ms`` (and max) over the claims; ``assign_ms``,
the IPAM call alone (the claim is committed inside it).

Anchor, in the same lab and run: ``etcd_watch_p50_ms`` / ``_p99_ms``, the
time from a put in the lab's etcd to a watcher on that key receiving it,
through the same client (``datastore.etcd``) the nodes use. That is the floor of
this path: a node learns of its new block only through its etcd watch; the
rest is its view reload, ExaBGP's announcement, the peers' RIB, felix_lite
and the kernel write. The last line of output is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

from netaddr import IPNetwork

from datastore.etcd import EtcdStore
from datastore.port import Put
from ipam.ipam import Ipam
from lab.build import Lab, start_meshroute_node
from lab.topology import POOL_BLOCK, POOL_CIDR, LabParams
from lab.up import converged, lab_down, lab_up

NODE_PROTO = "213"
# Claimed blocks come from the top of the pool, away from the blocks the
# lab's own nodes would claim first.
FIRST_BENCH_BLOCK = 512


class RouteMonitor:
    """``ip monitor route`` in one namespace; each line time-stamped when read."""

    def __init__(self, ns: str) -> None:
        self.proc = subprocess.Popen(
            ["ip", "-n", ns, "monitor", "route"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            bufsize=1,
        )
        self.lines: queue.Queue[tuple[float, str]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put((time.perf_counter(), line))

    def wait_added(self, prefix: str, deadline: float) -> float | None:
        """The read time of the first added route for ``prefix``."""
        while True:
            left = deadline - time.perf_counter()
            if left <= 0:
                return None
            try:
                t, line = self.lines.get(timeout=left)
            except queue.Empty:
                return None
            if line.startswith(prefix + " ") and f"proto {NODE_PROTO}" in line:
                return t

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(5)


def pct(xs: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q / 100 * len(s) + 0.5) - 1))]


def ms(x: float) -> float:
    return round(x * 1000, 1)


async def etcd_watch_latency(endpoint: str, n: int) -> list[float]:
    store = EtcdStore([endpoint])
    key = b"/mrbench-anchor/watch"
    try:
        rev = (await store.list(b"/mrbench-anchor/")).revision
        got: asyncio.Queue[float] = asyncio.Queue()

        async def watch() -> None:
            async for _ in store.changes(b"/mrbench-anchor/", rev):
                got.put_nowait(time.perf_counter())

        watcher = asyncio.create_task(watch())
        await asyncio.sleep(0.5)  # the watch is established
        out = []
        for i in range(n):
            t0 = time.perf_counter()
            await store.txn([], [Put(key, str(i).encode())])
            async with asyncio.timeout(10):
                out.append(await got.get() - t0)
            await asyncio.sleep(0.05)
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        return out
    finally:
        await store.close()


async def claim(ipam: Ipam, host: str, block: IPNetwork, i: int) -> float:
    t0 = time.perf_counter()
    await ipam.assign_ip(host, block[1], f"mrbench-conv-{i}")
    return time.perf_counter() - t0


def measure(lab: Lab, claims: int, timeout: float) -> dict[str, Any]:
    nodes = list(lab.plan.nodes)
    monitors = {n.name: RouteMonitor(lab.state.ns(n.ns)) for n in nodes}
    blocks = list(POOL_CIDR.subnet(POOL_BLOCK))
    store = EtcdStore([lab.etcd_endpoint])
    ipam = Ipam(store, prefix=lab.plan.params.etcd_prefix)
    loop = asyncio.new_event_loop()
    samples: list[float] = []
    assign: list[float] = []
    slowest_node: list[str] = []
    try:
        time.sleep(0.5)  # the monitors are subscribed
        for i in range(claims):
            host = nodes[i % len(nodes)]
            block = blocks[FIRST_BENCH_BLOCK + i]
            for m in monitors.values():  # only this claim's routes count
                while not m.lines.empty():
                    m.lines.get_nowait()
            t0 = time.perf_counter()
            assign.append(loop.run_until_complete(claim(ipam, host.name, block, i)))
            deadline = t0 + timeout
            arrived = {}
            for other in nodes:
                if other is host:
                    continue
                t = monitors[other.name].wait_added(str(block), deadline)
                if t is None:
                    raise TimeoutError(f"{block} (claimed by {host.name}) never on {other.name}")
                arrived[other.name] = t - t0
            samples.append(max(arrived.values()))
            slowest_node.append(max(arrived, key=lambda k: arrived[k]))
            time.sleep(0.2)  # one claim at a time: the next starts on a quiet cluster
        watch = loop.run_until_complete(etcd_watch_latency(lab.etcd_endpoint, claims))
    finally:
        for m in monitors.values():
            m.stop()
        loop.run_until_complete(store.close())
        loop.close()
    return {
        "claims": claims,
        "p50_ms": ms(statistics.median(samples)),
        "p99_ms": ms(pct(samples, 99)),
        "max_ms": ms(max(samples)),
        "assign_ms": ms(statistics.median(assign)),
        "etcd_watch_p50_ms": ms(statistics.median(watch)),
        "etcd_watch_p99_ms": ms(pct(watch, 99)),
        "goals": {"p99_lt_500ms": pct(samples, 99) < 0.5},
        "samples_ms": [ms(x) for x in samples],
        "slowest_node": slowest_node,
        "etcd_watch_samples_ms": [ms(x) for x in watch],
        "anchor": "etcd put -> watch event on the lab's etcd (datastore.etcd, as the nodes use it)",
        "topology": "mesh, 2 racks x 2 nodes, VXLAN CrossSubnet",
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--claims", type=int, default=20)
    ap.add_argument("--timeout", type=float, default=10.0, help="per claim, seconds")
    ap.add_argument("--json", action="store_true", help="print only the JSON result")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("bench.convergence needs root (network namespaces)")
    run_dir = tempfile.mkdtemp(prefix="mrbench-conv-")
    params = LabParams(topology="mesh", racks=2, nodes_per_rack=2, pods_per_node=0, run_dir=run_dir)

    def say(msg: str) -> None:
        if not args.json:
            print(f"==> {msg}", file=sys.stderr, flush=True)

    try:
        res = lab_up(params, start_meshroute_node, prefix="mrbench", say=say, converge_timeout=60)
        deadline = time.monotonic() + 60
        while not converged(res.lab):
            if time.monotonic() > deadline:
                raise RuntimeError("the lab did not converge in 60 s")
            time.sleep(0.5)
        result = measure(res.lab, args.claims, args.timeout)
    finally:
        lab_down(run_dir, prefix="mrbench", say=say)
        subprocess.run(["rm", "-rf", run_dir], check=False)
    if not args.json:
        for k, v in result.items():
            print(f"{k}: {v}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
