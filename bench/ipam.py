"""IPAM benchmark: allocation rate and latency on a real etcd, next to the
raw compare-and-swap rate of the same etcd in the same run (the anchor), and
the CNI plugin's figures from ``bench.ipam_cni``. The anchor's transactions
go through etcd's JSON gateway as the store's do, on one kept-alive
connection, without the store's retries or IPAM's reads.

``.venv/bin/python -m bench.ipam --json`` prints one JSON object on its last
line. Goals (issue 2): one host at least half the raw CAS rate;
``cni_add_p50_ms`` at most 50; 100 pods in at most 2 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from netaddr import IPNetwork

from bench.ipam_cni import run_cni_bench
from datastore.etcd import EtcdStore
from datastore.etcd_codec import answer, encode, txn_request, txn_revision
from datastore.etcd_http import Connection
from datastore.port import Compare, Condition, Put
from ipam.ipam import AssignRequest, Ipam
from ipam.model import Pool
from lab.etcd import EtcdCluster, start_etcd


async def raw_cas_rate(endpoint: str, n: int) -> float:
    """Sequential compare-and-swap transactions on one key, each comparing
    the mod_revision the previous one produced: etcd's floor for IPAM."""
    host, port = endpoint.split(":")
    conn = await Connection.open(host, int(port), None)

    async def txn(compares: list[Condition], put: Put) -> int:
        head = await conn.send("/v3/kv/txn", encode(txn_request(compares, [put])), {})
        return txn_revision(answer(head.status, await conn.read_body(head)))

    try:
        key = b"/bench/cas"
        rev = await txn([], Put(key, b"0"))
        t = time.perf_counter()
        for i in range(n):
            rev = await txn([Compare(key, rev)], Put(key, str(i).encode()))
            assert rev
        return n / (time.perf_counter() - t)
    finally:
        conn.close()


async def one_host(endpoint: str, prefix: str, n: int) -> tuple[float, list[float], list[str]]:
    store = EtcdStore([endpoint])
    ipam = Ipam(store, prefix=prefix)
    await ipam.apply_pool(Pool("bench", IPNetwork("10.0.0.0/12"), 26))
    lat: list[float] = []
    ips: list[str] = []
    t0 = time.perf_counter()
    for i in range(n):
        t = time.perf_counter()
        (a,) = await ipam.assign(AssignRequest(host="h0", handle=f"one-{i}.eth0"))
        lat.append(time.perf_counter() - t)
        ips.append(str(a.ip))
    rate = n / (time.perf_counter() - t0)
    await store.close()
    return rate, lat, ips


async def many_hosts(
    endpoint: str, prefix: str, hosts: int, per_host: int
) -> tuple[float, list[str]]:
    store = EtcdStore([endpoint])
    ipam = Ipam(store, prefix=prefix)
    await ipam.apply_pool(Pool("bench", IPNetwork("10.0.0.0/12"), 26))
    ips: list[str] = []

    async def host(h: int) -> None:
        for i in range(per_host):
            (a,) = await ipam.assign(AssignRequest(host=f"m{h}", handle=f"m{h}-{i}.eth0"))
            ips.append(str(a.ip))

    t0 = time.perf_counter()
    await asyncio.gather(*(host(h) for h in range(hosts)))
    rate = hosts * per_host / (time.perf_counter() - t0)
    await store.close()
    return rate, ips


def bench(allocs: int, cas: int, repeat: int, with_cni: bool) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="meshroute-bench-ipam-"))
    etcd: EtcdCluster = start_etcd(work / "etcd")
    try:
        ep = etcd.endpoint
        cas_rates, one_rates, p99s, many_rates = [], [], [], []
        every: list[str] = []
        for r in range(repeat):
            cas_rates.append(asyncio.run(raw_cas_rate(ep, cas)))
            rate, lat, ips = asyncio.run(one_host(ep, f"/b1/{r}", allocs))
            one_rates.append(rate)
            p99s.append(sorted(lat)[int(0.99 * (len(lat) - 1))] * 1000)
            mrate, mips = asyncio.run(many_hosts(ep, f"/b8/{r}", 8, allocs // 8))
            many_rates.append(mrate)
            every += [f"{r}/1/{ip}" for ip in ips] + [f"{r}/8/{ip}" for ip in mips]
        out: dict[str, Any] = {
            "allocs": allocs,
            "allocs_per_s_one_host": round(statistics.median(one_rates), 1),
            "p99_ms_one_host": round(statistics.median(p99s), 2),
            "allocs_per_s_8_hosts": round(statistics.median(many_rates), 1),
            "duplicates": len(every) - len(set(every)),
            "etcd_cas_txn_per_s": round(statistics.median(cas_rates), 1),
            "samples": {
                "allocs_per_s_one_host": [round(x, 1) for x in one_rates],
                "allocs_per_s_8_hosts": [round(x, 1) for x in many_rates],
                "etcd_cas_txn_per_s": [round(x, 1) for x in cas_rates],
            },
        }
        out["one_host_vs_cas"] = round(out["allocs_per_s_one_host"] / out["etcd_cas_txn_per_s"], 3)
        if with_cni:
            out.update(run_cni_bench(ep))
        return out
    finally:
        etcd.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--allocs", type=int, default=800)
    p.add_argument("--cas", type=int, default=1000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--no-cni", action="store_true")
    p.add_argument("--json", action="store_true", help="print the result as one JSON line")
    a = p.parse_args()
    result = bench(a.allocs, a.cas, a.repeat, not a.no_cni)
    print(json.dumps(result) if a.json else json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
