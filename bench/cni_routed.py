"""CNI ADD and DEL of a pod, three ways, in the same run and clocked the
same way (process start to exit, each run under ``ip netns exec NODE``
as a runtime on the node would run it), each with its own node namespace:

- ``meshroute-cni``: meshroute's main plugin for routed pods; the IPAM
  service makes the veth, routes and endpoint record (the project's choice);
- anchors, both with Debian's plugins delegating IPAM to
  ``meshroute-cni-ipam`` against an L2-segment service (``ptp`` cannot
  use routed-mode results: a /32 without a gateway makes it fail deleting
  a subnet route that does not exist, and it needs a gateway address to put
  on the host end): ``ptp`` and ``bridge``.

Rounds alternate which side goes first; figures are medians. Every pod
gets a fresh network namespace (made outside the clock).

``.venv/bin/python -m bench.cni_routed --json``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import selectors
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from netaddr import IPNetwork

from bench.report import print_result
from datastore.etcd import EtcdStore
from ipam.cni_install import install_plugins
from ipam.ipam import Ipam
from ipam.model import Pool
from lab.netns import NetnsFactory

PTP = Path("/usr/lib/cni/ptp")
POOL = Pool("bench-routed", IPNetwork("10.244.0.0/16"), 26)
HOST = "bench-node"


def _conf(kind: str, sock: str) -> bytes:
    conf: dict[str, Any]
    if kind == "meshroute-cni":
        conf = {"type": "meshroute-cni", "socket": sock}
    elif kind == "ptp":
        conf = {"type": "ptp", "ipam": {"type": "meshroute-cni-ipam", "socket": sock}}
    else:
        conf = {
            "type": "bridge",
            "bridge": "cni0",
            "isGateway": True,
            "ipam": {"type": "meshroute-cni-ipam", "socket": sock},
        }
    return json.dumps({"cniVersion": "1.0.0", "name": "bench", **conf}).encode()


def call(kind: str, command: str, node: str, pod: str, sock: str, cni_bin: Path) -> float:
    plugin = cni_bin / "meshroute-cni" if kind == "meshroute-cni" else PTP.parent / kind
    env = {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": f"ctr-{pod}",
        "CNI_IFNAME": "eth0",
        "CNI_NETNS": f"/var/run/netns/{pod}",
        "CNI_PATH": f"{cni_bin}:{PTP.parent}",
        "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME=p",
    }
    t = time.perf_counter()
    p = subprocess.run(
        ["ip", "netns", "exec", node, str(plugin)],
        input=_conf(kind, sock),
        env=env,
        capture_output=True,
        timeout=60,
    )
    dt = time.perf_counter() - t
    if p.returncode != 0:
        raise RuntimeError(f"{kind} {command} failed: {p.stdout[:300]!r} {p.stderr[:300]!r}")
    return dt


def _apply_pool(endpoint: str, prefix: str) -> None:
    async def go() -> None:
        store = EtcdStore([endpoint])
        try:
            await Ipam(store, prefix=prefix).apply_pool(POOL)
        finally:
            await store.close()

    asyncio.run(go())


def _start_service(
    endpoint: str, prefix: str, sock: str, node: str, host: str, *mode: str
) -> subprocess.Popen[str]:
    p = subprocess.Popen(
        [
            *(sys.executable, "-m", "meshroute.cli", "ipam", "serve", "--host", host),
            *("--socket", sock, "--netns", node, "--etcd", endpoint, "--prefix", prefix, *mode),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert p.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(p.stdout, selectors.EVENT_READ)
        if not (sel.select(timeout=20) and "ready" in p.stdout.readline()):
            p.kill()
            raise RuntimeError(f"meshroute ipam serve did not start: {p.communicate()[1]}")
    return p


def _ms(xs: list[float], q: float = 0.5) -> float:
    if q == 0.5:
        return round(statistics.median(xs) * 1000, 2)
    return round(statistics.quantiles(xs, n=10)[int(q * 10) - 1] * 1000, 2)


def run_bench(endpoint: str | None, runs: int) -> dict[str, Any]:
    kinds = ("meshroute-cni", "ptp", "bridge")
    adds: dict[str, list[float]] = {k: [] for k in kinds}
    dels: dict[str, list[float]] = {k: [] for k in kinds}
    factory = NetnsFactory(prefix="mrbench")
    with tempfile.TemporaryDirectory(prefix="meshroute-bench-routed-") as tmp:
        etcd = None
        if endpoint is None:
            from lab.etcd import start_etcd

            etcd = start_etcd(Path(tmp) / "etcd")
            endpoint = etcd.endpoint
        services: list[subprocess.Popen[str]] = []
        try:
            prefix = f"/bench-routed/{os.urandom(4).hex()}"
            _apply_pool(endpoint, prefix)
            cni_bin = Path(tmp) / "cni-bin"
            install_plugins(cni_bin)
            nodes = {k: factory.new(k[:8]).name for k in kinds}
            socks = {k: str(Path(tmp) / f"{k}.sock") for k in ("routed", "l2")}
            services.append(
                _start_service(endpoint, prefix, socks["routed"], nodes["meshroute-cni"], HOST)
            )
            services.append(
                _start_service(
                    endpoint, prefix, socks["l2"], nodes["ptp"], f"{HOST}-l2", "--l2-segment"
                )
            )
            for i in range(runs):
                order = kinds[i % 3 :] + kinds[: i % 3]
                for kind in order:
                    pod = factory.new(f"p{i}").name
                    sock = socks["routed" if kind == "meshroute-cni" else "l2"]
                    adds[kind].append(call(kind, "ADD", nodes[kind], pod, sock, cni_bin))
                    dels[kind].append(call(kind, "DEL", nodes[kind], pod, sock, cni_bin))
        finally:
            for service in services:
                service.terminate()
                service.communicate(timeout=15)
            factory.cleanup()
            if etcd is not None:
                etcd.stop()
    out: dict[str, Any] = {"runs": runs}
    for kind in kinds:
        key = kind.replace("-", "_")
        out[f"{key}_add_p50_ms"] = _ms(adds[kind])
        out[f"{key}_add_p90_ms"] = _ms(adds[kind], 0.9)
        out[f"{key}_del_p50_ms"] = _ms(dels[kind])
    out["loadavg_1m"] = os.getloadavg()[0]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--json", action="store_true", help="print only the JSON line")
    ap.add_argument("--etcd", help="use this etcd (host:port) instead of starting one")
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()
    result = run_bench(args.etcd, args.runs)
    print_result(result, args.json, width=28)
    return 0


if __name__ == "__main__":
    sys.exit(main())
