"""The CNI half of the IPAM benchmark: the wall time of one
``meshroute-cni-ipam`` ADD (process start to exit) against a running
``meshroute ipam serve`` on real etcd, and 100 pods on one host, 8 at a time.

The plugin is called the way the bridge plugin calls it (network config on
stdin, ``CNI_*`` in the environment) with no bridge around it, so the
figures are IPAM's. The anchor is the same executable answering VERSION:
process start and exit with no service call, the floor of any ADD.

Two forms of the same plugin are measured: the launcher that
``ipam.cni_install`` puts into a runtime's plugin directory (the headline
figures: that is what a runtime executes) and the venv's console script
(``*_console_script``), whose interpreter start also processes the venv's
``.pth`` files.

``bench.ipam`` imports ``run_cni_bench``; alone:
``.venv/bin/python -m bench.ipam_cni --json``.
"""

from __future__ import annotations

import argparse
import asyncio
import compileall
import json
import os
import selectors
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from netaddr import IPNetwork

from bench.report import print_result
from datastore.etcd import EtcdStore
from ipam.cni_install import install_plugin
from ipam.ipam import Ipam
from ipam.model import Pool

CONSOLE_SCRIPT = Path(sys.executable).parent / "meshroute-cni-ipam"
HOST = "bench-node"
POOL = Pool("bench-pods", IPNetwork("10.244.0.0/16"), 26)


def _env(plugin: Path, command: str, container_id: str) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": container_id,
        "CNI_IFNAME": "eth0",
        "CNI_NETNS": f"/var/run/netns/{container_id}",
        "CNI_PATH": str(plugin.parent),
        "CNI_ARGS": f"K8S_POD_NAMESPACE=bench;K8S_POD_NAME={container_id}",
    }


def _netconf(sock: str) -> bytes:
    return json.dumps(
        {
            "cniVersion": "1.0.0",
            "name": "bench",
            "ipam": {"type": "meshroute-cni-ipam", "socket": sock},
        }
    ).encode()


def call_plugin(
    plugin: Path, command: str, container_id: str, sock: str
) -> tuple[float, dict[str, Any] | None]:
    """One plugin process; (seconds from start to exit, its JSON output)."""
    t = time.perf_counter()
    p = subprocess.run(
        [str(plugin)],
        input=_netconf(sock),
        env=_env(plugin, command, container_id),
        capture_output=True,
        timeout=60,
    )
    dt = time.perf_counter() - t
    if p.returncode != 0:
        raise RuntimeError(f"plugin {command} {container_id} failed: {p.stdout!r} {p.stderr!r}")
    return dt, (json.loads(p.stdout) if p.stdout.strip() else None)


def _apply_pool(endpoint: str, prefix: str) -> None:
    async def go() -> None:
        store = EtcdStore([endpoint])
        try:
            await Ipam(store, prefix=prefix).apply_pool(POOL)
        finally:
            await store.close()

    asyncio.run(go())


def start_service(endpoint: str, prefix: str, sock: str) -> subprocess.Popen[str]:
    args = [
        "--host",
        HOST,
        "--socket",
        sock,
        "--etcd",
        endpoint,
        "--prefix",
        prefix,
    ]
    p = subprocess.Popen(
        [sys.executable, "-m", "meshroute.cli", "ipam", "serve", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert p.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(p.stdout, selectors.EVENT_READ)
        ready = sel.select(timeout=20) and "ready" in p.stdout.readline()
    if not ready:
        stop_service(p)
        raise RuntimeError(f"meshroute ipam serve did not start: {p.stderr}")
    return p


def stop_service(p: subprocess.Popen[str]) -> None:
    if p.poll() is None:
        p.terminate()
    try:
        p.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()


def _median_ms(xs: list[float]) -> float:
    return round(statistics.median(xs) * 1000, 2)


def _p90_ms(xs: list[float]) -> float:
    return round(statistics.quantiles(xs, n=10)[-1] * 1000, 2)


def measure(
    plugin: Path, sock: str, runs: int = 30, pods: int = 100, parallel: int = 8, suffix: str = ""
) -> dict[str, Any]:
    def call(command: str, cid: str) -> tuple[float, dict[str, Any] | None]:
        return call_plugin(plugin, command, cid, sock)

    version = [call("VERSION", "v")[0] for _ in range(runs)]
    adds = [call("ADD", f"seq-{i}")[0] for i in range(runs)]
    dels = [call("DEL", f"seq-{i}")[0] for i in range(runs)]

    def add(i: int) -> str:
        _, out = call("ADD", f"pod-{i}")
        assert out is not None
        return str(out["ips"][0]["address"])

    with ThreadPoolExecutor(parallel) as pool:
        t = time.perf_counter()
        list(pool.map(lambda i: call("VERSION", f"v-{i}"), range(pods)))
        starts_s = time.perf_counter() - t
        t = time.perf_counter()
        addresses = list(pool.map(add, range(pods)))
        pods_s = time.perf_counter() - t
        list(pool.map(lambda i: call("DEL", f"pod-{i}"), range(pods)))
    return {
        f"cni_add_p50_ms{suffix}": _median_ms(adds),
        f"cni_add_p90_ms{suffix}": _p90_ms(adds),
        f"cni_del_p50_ms{suffix}": _median_ms(dels),
        # the anchor: the same executable answering VERSION (no service call)
        f"cni_plugin_start_p50_ms{suffix}": _median_ms(version),
        f"pods_{pods}_s{suffix}": round(pods_s, 3),
        # its anchor: the same number of plugin processes, as many at a time,
        # answering VERSION: what starting processes alone costs on this machine now
        f"pods_{pods}_process_starts_s{suffix}": round(starts_s, 3),
        f"pods_duplicate_addresses{suffix}": pods - len(set(addresses)),
    }


def run_cni_bench(endpoint: str | None = None, runs: int = 30) -> dict[str, Any]:
    """Measure against ``endpoint`` (the caller's etcd) or an etcd of our own."""
    # pip byte-compiles an installed plugin; an editable checkout may not be.
    compileall.compile_file(str(Path(__file__).parent.parent / "ipam" / "cni_plugin.py"), quiet=1)
    with tempfile.TemporaryDirectory(prefix="meshroute-bench-cni-") as tmp:
        etcd = None
        if endpoint is None:
            from lab.etcd import start_etcd

            etcd = start_etcd(Path(tmp) / "etcd")
            endpoint = etcd.endpoint
        try:
            prefix = f"/bench-cni/{os.urandom(4).hex()}"
            _apply_pool(endpoint, prefix)
            sock = str(Path(tmp) / "ipam.sock")
            launcher = install_plugin(Path(tmp) / "cni-bin")
            service = start_service(endpoint, prefix, sock)
            try:
                result = measure(launcher, sock, runs)
                result |= measure(CONSOLE_SCRIPT, sock, runs, suffix="_console_script")
                return {**result, "pods_parallel": 8, "loadavg_1m": os.getloadavg()[0]}
            finally:
                stop_service(service)
        finally:
            if etcd is not None:
                etcd.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--json", action="store_true", help="print only the JSON line")
    ap.add_argument("--etcd", help="use this etcd (host:port) instead of starting one")
    ap.add_argument("--runs", type=int, default=30)
    args = ap.parse_args()
    result = run_cni_bench(args.etcd, args.runs)
    print_result(result, args.json, width=28)
    return 0


if __name__ == "__main__":
    sys.exit(main())
