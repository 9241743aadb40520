"""Service addresses to a ToR: how long ``N`` ServiceAddresses take to reach
a BIRD ToR from every node that serves them, and how long one node's
withdrawal takes, with BIRD in the nodes' places announcing the same set
(the anchor), measured in one run the same way.

``.venv/bin/python -m bench.services --services 1000 --json`` builds
namespaces (removed in ``finally``) on one bridge::

    [node-0..3]   meshroute nodes 192.0.2.11.. (AS 64512), a pod each --+
    [anchor-0..3] BIRD as nodes 192.0.2.31.. (AS 64513)               --+-- br0 -- [tor] BIRD
                                                                             192.0.2.21 (AS 65020)

Every ServiceAddress lists the four pods as endpoints, so every node serves
every address: the ToR ends with ``N`` networks of four paths from each
side, in two tables (``mesh`` for the nodes, on top of their pod blocks,
``anchor`` for the BIRDs), each counted with ``birdc show route count table
T``, polled every 10 ms.

- ``advertise_s``: from the start of ``apply`` (in-process, ``apply_txn``
  in transactions of 100 resources: etcd's 128-operation bound) to the
  ToR holding all ``4 N`` paths. Anchor ``bird_advertise_s``: from writing
  the four BIRDs' configs with the ``N`` static /32s (``birdc configure``)
  to the same count.
- ``withdraw_to_tor_ms_p99``: one service at a time re-applied without
  node-0's pod; from the start of the apply to the ToR's count one path
  lower. Anchor ``bird_withdraw_to_tor_ms_p99``: one static removed from
  anchor-0 (``birdc configure``), clocked the same way.

Rounds alternate which side goes first; figures are medians over rounds
(a round's p99 of fewer than 100 samples is its maximum). The nodes run
their default node-to-node mesh (each rejects the others' service routes
on import, as in a real cluster). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from bench.bgp_ingest import Bird
from bench.report import alternating, print_result, require_root
from datastore.etcd import EtcdStore
from datastore.port import Delete
from ipam.cni_install import install_plugin
from lab.etcd import start_etcd
from lab.netns import NetnsFactory, plug, switch
from lab.node_rig import NodeUnderTest, add_pod, nodes_on_switch, wait_for
from meshroute.apply_txn import apply_all
from meshroute.resources import parse_documents
from meshroute.service_store import ServiceStore

TOR, TOR_AS, NODE_AS, ANCHOR_AS = "192.0.2.21", 65020, 64512, 64513
PREFIX = "/bench"
BATCH = 100  # resources per apply transaction
POLL_S = 0.01
POOL = {
    "apiVersion": "meshroute.io/v1",
    "kind": "IPPool",
    "metadata": {"name": "pods"},
    "spec": {"cidr": "10.244.0.0/16", "blockSize": 26},
}
_COUNT = re.compile(r"(\d+) of \d+ routes for \d+ networks in table (\w+)")


def address(i: int) -> str:
    return f"198.18.{i // 250}.{i % 250 + 1}"


def node_address(i: int) -> str:
    return f"192.0.2.{11 + i}"


def anchor_address(i: int) -> str:
    return f"192.0.2.{31 + i}"


def tor_conf(nodes: int) -> str:
    lines = [f"router id {TOR};", "protocol device {}", "ipv4 table mesh;", "ipv4 table anchor;"]
    peers = [(f"node{i}", node_address(i), NODE_AS, "mesh") for i in range(nodes)]
    peers += [(f"anchor{i}", anchor_address(i), ANCHOR_AS, "anchor") for i in range(nodes)]
    for name, ip, asn, table in peers:
        lines.append(
            f"protocol bgp {name} {{\n  local {TOR} as {TOR_AS};\n  neighbor {ip} as {asn};\n"
            "  connect delay time 0;\n  connect retry time 1;\n  error wait time 1,2;\n"
            f"  ipv4 {{ table {table}; import all; export none; }};\n}}"
        )
    return "\n".join(lines) + "\n"


def anchor_conf(i: int, prefixes: Sequence[str]) -> str:
    me = anchor_address(i)
    statics = "".join(f"  route {p} blackhole;\n" for p in prefixes)
    return (
        f"router id {me};\nprotocol device {{}}\n"
        f"protocol static s4 {{\n  ipv4;\n{statics}}}\n"
        f"protocol bgp tor {{\n  local {me} as {ANCHOR_AS};\n  neighbor {TOR} as {TOR_AS};\n"
        "  connect delay time 0;\n  connect retry time 1;\n  error wait time 1,2;\n"
        "  ipv4 { import none; export all; };\n}\n"
    )


def service_doc(i: int, endpoints: Sequence[str]) -> dict[str, Any]:
    return {
        "apiVersion": "meshroute.io/v1",
        "kind": "ServiceAddress",
        "metadata": {"name": f"svc-{i}"},
        "spec": {"address": address(i), "ports": [{"port": 80}], "endpoints": list(endpoints)},
    }


def tor_paths(tor: Bird, table: str) -> int:
    m = _COUNT.search(tor.birdc(f"show route count table {table}"))
    return int(m.group(1)) if m else 0


def wait_paths(tor: Bird, table: str, want: int, t0: float, limit_s: float = 600) -> float:
    """Seconds from ``t0`` to the first poll finding ``want`` paths."""
    while tor_paths(tor, table) != want:
        if time.perf_counter() - t0 > limit_s:
            raise TimeoutError(f"table {table}: {tor_paths(tor, table)} paths, not {want}")
        time.sleep(POLL_S)
    return time.perf_counter() - t0


class Meshroute:
    """The nodes' side: services written as an operator's apply does."""

    def __init__(self, store: EtcdStore, pods: list[str], tor: Bird, n: int) -> None:
        self.store, self.pods, self.tor, self.n = store, pods, tor, n
        self.blocks = len(pods)  # one pod, so one block, per node, also in table mesh
        self.want = self.blocks + n * len(pods)

    async def _apply(self, docs: list[dict[str, Any]]) -> None:
        for i in range(0, len(docs), BATCH):
            text = yaml.safe_dump_all(docs[i : i + BATCH])
            await apply_all(self.store, PREFIX, parse_documents(text, "bench"))

    async def advertise(self) -> float:
        t0 = time.perf_counter()
        await self._apply([service_doc(i, self.pods) for i in range(self.n)])
        return await asyncio.to_thread(wait_paths, self.tor, "mesh", self.want, t0)

    async def withdraw(self, k: int) -> float:
        t0 = time.perf_counter()
        await self._apply([service_doc(k, self.pods[1:])])
        return await asyncio.to_thread(wait_paths, self.tor, "mesh", self.want - k - 1, t0) * 1000

    async def clear(self) -> None:
        root = ServiceStore(self.store, PREFIX).root
        keys = list((await self.store.list(root)).items)
        for i in range(0, len(keys), BATCH):
            await self.store.txn([], [Delete(k) for k in keys[i : i + BATCH]])
        await asyncio.to_thread(wait_paths, self.tor, "mesh", self.blocks, time.perf_counter())


class Anchor:
    """BIRD in the nodes' places, given the same set as static routes."""

    def __init__(self, birds: list[Bird], tor: Bird, n: int) -> None:
        self.birds, self.tor, self.n = birds, tor, n
        self.want = n * len(birds)

    def _configure(self, i: int, prefixes: Sequence[str]) -> None:
        b = self.birds[i]
        (b.sock.parent / "bird.conf").write_text(anchor_conf(i, prefixes))
        out = b.birdc("configure")
        if "Reconfigured" not in out and "Reconfiguration in progress" not in out:
            raise RuntimeError(f"anchor{i}: birdc configure: {out.strip()[-300:]}")

    def _all(self) -> list[str]:
        return [f"{address(i)}/32" for i in range(self.n)]

    async def advertise(self) -> float:
        t0 = time.perf_counter()
        for i in range(len(self.birds)):
            self._configure(i, self._all())
        return await asyncio.to_thread(wait_paths, self.tor, "anchor", self.want, t0)

    async def withdraw(self, k: int) -> float:
        t0 = time.perf_counter()
        self._configure(0, self._all()[k + 1 :])
        return await asyncio.to_thread(wait_paths, self.tor, "anchor", self.want - k - 1, t0) * 1000

    async def clear(self) -> None:
        for i in range(len(self.birds)):
            self._configure(i, [])
        await asyncio.to_thread(wait_paths, self.tor, "anchor", 0, time.perf_counter())


def established(tor: Bird, protocol: str) -> None:
    wait_for(
        f"the ToR's session {protocol}",
        lambda: "Established" in tor.birdc(f"show protocols {protocol}"),
        60,
    )


def p99(xs: list[float]) -> float:
    return max(xs) if len(xs) < 100 else statistics.quantiles(xs, n=100)[98]


async def measure(
    sides: dict[str, Meshroute | Anchor], rounds: int, withdrawals: int
) -> dict[str, Any]:
    adv: dict[str, list[float]] = {k: [] for k in sides}
    wd: dict[str, list[list[float]]] = {k: [] for k in sides}
    for r in range(rounds):
        for name in alternating(r, list(sides)):
            side = sides[name]
            adv[name].append(await side.advertise())
            wd[name].append([await side.withdraw(k) for k in range(withdrawals)])
            await side.clear()
    out: dict[str, Any] = {}
    for name, key in (("meshroute", ""), ("bird", "bird_")):
        out[f"{key}advertise_s"] = round(statistics.median(adv[name]), 3)
        out[f"{key}withdraw_to_tor_ms_p99"] = round(statistics.median(p99(x) for x in wd[name]), 1)
        out[f"{key}withdraw_to_tor_ms_p50"] = round(
            statistics.median(statistics.median(x) for x in wd[name]), 1
        )
    out["samples"] = {"advertise_s": adv, "withdraw_ms": wd}
    return out


def run(
    n: int, nodes: int, rounds: int, withdrawals: int, tmp: Path, netns: NetnsFactory
) -> dict[str, Any]:
    etcd = start_etcd(tmp / "etcd")
    sw = switch(netns)
    tor_ns = netns.new("tor")
    plug(sw, tor_ns, "p-tor", f"{TOR}/24")
    members = nodes_on_switch(
        sw, netns, {f"node-{i}": node_address(i) for i in range(nodes)}, etcd, PREFIX, tmp
    )
    birds: list[Bird] = []
    started: list[NodeUnderTest] = []
    cni_bin = tmp / "cni-bin"
    install_plugin(cni_bin)
    tor = Bird(tor_ns, tmp / "tor", tor_conf(nodes))
    try:
        for i in range(nodes):
            ns = netns.new(f"anchor-{i}")
            plug(sw, ns, f"p-anchor{i}", f"{anchor_address(i)}/24")
            birds.append(Bird(ns, tmp / f"anchor{i}", anchor_conf(i, [])))

        async def body() -> dict[str, Any]:
            store = EtcdStore([etcd.endpoint])
            try:
                peer = {
                    "apiVersion": "meshroute.io/v1",
                    "kind": "BGPPeer",
                    "metadata": {"name": "tor"},
                    "spec": {"peerIP": TOR, "asNumber": TOR_AS},
                }
                await apply_all(
                    store, PREFIX, parse_documents(yaml.safe_dump_all([POOL, peer]), "bench")
                )
                for m in members:
                    m.start()
                    started.append(m)
                for m in members:
                    await asyncio.to_thread(m.wait_ready, 120)
                pods = [add_pod(m, netns, cni_bin, f"pod{i}")[1] for i, m in enumerate(members)]
                for proto in [f"{kind}{i}" for i in range(nodes) for kind in ("node", "anchor")]:
                    await asyncio.to_thread(established, tor, proto)
                # every node's pod block: the paths in table mesh before any service
                await asyncio.to_thread(wait_paths, tor, "mesh", nodes, time.perf_counter(), 60)
                sides: dict[str, Meshroute | Anchor] = {
                    "meshroute": Meshroute(store, pods, tor, n),
                    "bird": Anchor(birds, tor, n),
                }
                return await measure(sides, rounds, withdrawals)
            finally:
                await store.close()

        result = asyncio.run(body())
        result.update({"services": n, "nodes": nodes, "rounds": rounds, "withdrawals": withdrawals})
        return result
    finally:
        for m in started:
            m.stop()
            if os.environ.get("BENCH_LOGS"):
                sys.stderr.write(m.logs()[-1500:] + "\n")
        for b in [*birds, tor]:
            b.stop()
        etcd.stop()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--services", type=int, default=1000)
    ap.add_argument("--nodes", type=int, default=4)
    ap.add_argument(
        "--rounds", type=int, default=3, help="rounds, alternating which side goes first"
    )
    ap.add_argument(
        "--withdrawals", type=int, default=20, help="withdrawals timed per round and side"
    )
    ap.add_argument("--json", action="store_true", help="print only the JSON result")
    args = ap.parse_args(argv)
    if not 1 <= args.services <= 60000 or not 1 <= args.nodes <= 9:
        raise SystemExit("--services 1..60000, --nodes 1..9")
    if args.withdrawals >= args.services:
        raise SystemExit("--withdrawals must be below --services")
    require_root("bench.services")
    netns = NetnsFactory()
    with tempfile.TemporaryDirectory(prefix="bench-services-") as d:
        try:
            result = run(args.services, args.nodes, args.rounds, args.withdrawals, Path(d), netns)
        finally:
            netns.cleanup()
    print_result(result, args.json)


if __name__ == "__main__":
    main()
