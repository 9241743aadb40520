"""RIB ingest benchmark: one peer announces N /26s (in updates of 500 NLRIs
sharing attributes, as BIRD packs them); time ``Rib.apply_update`` for all of
them with import policy, best path and the changed-prefix set, then a second
peer with the same prefixes (two candidates per prefix, ECMP on), then a
withdraw of everything from the first peer.

The anchor, in the same run: storing the same ``Path`` objects and a
``BestRoute`` each in two plain dicts keyed by prefix (Adj-RIB-In and
Loc-RIB), the least any RIB has to do. CPU times are given too: the shared
machine's wall times are noisy.

Then the node's pipeline without the kernel: with the N prefixes held by
the RIB, felix_lite's incremental planner and a reconciler (over the
in-memory table), one more prefix announced until the reconciler wrote it:

- ``one_more_ms``: the incremental path the node takes (the RIB's change,
  the planner's change of one route, a reconciler pass over one key);
- ``one_more_rebuild_ms``: the anchor, a rebuild from scratch for the same
  prefix (every best route, ``plan_kernel``, ``set_desired``, a pass diffing
  the table), which is what every change cost before;

medians of ``--repeat`` samples, the two alternating which goes first.

``.venv/bin/python -m bench.rib_ingest --prefixes 100000 --json`` prints one
JSON object on its last line.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import statistics
import time
from collections.abc import Iterable

from netaddr import IPAddress, IPNetwork

from bgpd.model import BestRoute, Path, PathAttrs, UpdateEvent
from bgpd.policy import ImportContext, PoolRule
from bgpd.rib import PeerInfo, Rib
from felix_lite.fake_table import FakeRouteTable
from felix_lite.incremental import IncrementalPlanner
from felix_lite.inputs import BestRoute as FelixBest
from felix_lite.inputs import HostInterface, PlanInput, Pool
from felix_lite.planner import plan_kernel
from felix_lite.reconciler import Reconciler

BATCH = 500


def _prefixes(n: int) -> list[IPNetwork]:
    # /26s from 10.0.0.0/8: room for 262,144
    return [IPNetwork((10 << 24 | i << 6, 26)) for i in range(n)]


def _updates(prefixes: list[IPNetwork], peer: PeerInfo) -> list[UpdateEvent]:
    attrs = PathAttrs(next_hop=peer.address, as_path=(peer.asn,))
    return [
        UpdateEvent(
            peer=peer.address,
            peer_as=peer.asn,
            announced=tuple((p, attrs) for p in prefixes[i : i + BATCH]),
        )
        for i in range(0, len(prefixes), BATCH)
    ]


def run(n: int) -> dict[str, float | int]:
    prefixes = _prefixes(n)
    ctx = ImportContext(
        pools=(PoolRule(IPNetwork("10.0.0.0/8"), 26),),
        own_addresses=frozenset({IPAddress("192.0.2.1")}),
    )
    a = PeerInfo(IPAddress("192.0.2.2"), 64513, IPAddress("192.0.2.2"), ebgp=True)
    b = PeerInfo(IPAddress("192.0.2.3"), 64514, IPAddress("192.0.2.3"), ebgp=True)
    updates_a, updates_b = _updates(prefixes, a), _updates(prefixes, b)

    rib = Rib(ctx, max_paths=4)
    t, cpu = time.perf_counter(), time.process_time()
    changed = 0
    for u in updates_a:
        changed += len(rib.apply_update(u, a).changed)
    one_peer_s = time.perf_counter() - t
    one_peer_cpu_s = time.process_time() - cpu
    assert changed == n and len(rib.best_routes()) == n

    t = time.perf_counter()
    for u in updates_b:
        rib.apply_update(u, b)
    second_peer_s = time.perf_counter() - t

    withdraws = [
        UpdateEvent(peer=a.address, peer_as=a.asn, withdrawn=tuple(prefixes[i : i + BATCH]))
        for i in range(0, n, BATCH)
    ]
    t = time.perf_counter()
    for u in withdraws:
        rib.apply_update(u, a)
    withdraw_s = time.perf_counter() - t

    t = time.perf_counter()
    rib.peer_down(b.address)
    peer_down_s = time.perf_counter() - t

    # anchor: the same Path and BestRoute objects into two dicts
    t, cpu = time.perf_counter(), time.process_time()
    adj: dict[IPNetwork, Path] = {}
    loc: dict[IPNetwork, BestRoute] = {}
    for u in updates_a:
        for p, attrs in u.announced:
            path = Path(p, a.address, a.asn, a.router_id, True, attrs)
            adj[p] = path
            loc[p] = BestRoute(p, (attrs.next_hop,))
    anchor_s = time.perf_counter() - t
    anchor_cpu_s = time.process_time() - cpu

    return {
        "prefixes": n,
        "one_peer_s": round(one_peer_s, 3),
        "second_peer_s": round(second_peer_s, 3),
        "withdraw_s": round(withdraw_s, 3),
        "peer_down_s": round(peer_down_s, 3),
        "dict_anchor_s": round(anchor_s, 3),
        "one_peer_cpu_s": round(one_peer_cpu_s, 3),
        "dict_anchor_cpu_s": round(anchor_cpu_s, 3),
        "ratio": round(one_peer_s / anchor_s, 2),
        "cpu_ratio": round(one_peer_cpu_s / anchor_cpu_s, 2),
        "us_per_prefix": round(one_peer_s / n * 1e6, 2),
    }


def _felix(
    changes: Iterable[tuple[IPNetwork, BestRoute | None]],
) -> list[tuple[IPNetwork, FelixBest | None]]:
    return [(p, None if b is None else FelixBest(b.prefix, b.next_hops)) for p, b in changes]


async def _one_more(n: int, repeat: int) -> dict[str, object]:
    prefixes = _prefixes(n + 2 * repeat)
    ctx = ImportContext(pools=(PoolRule(IPNetwork("10.0.0.0/8"), 26),))
    peer = PeerInfo(IPAddress("192.0.2.2"), 64513, IPAddress("192.0.2.2"), ebgp=True)
    host = PlanInput(
        interfaces=(HostInterface("eth0", (IPNetwork("192.0.2.1/24"),), 1500),),
        pools=(Pool(IPNetwork("10.0.0.0/8")),),
    )
    rib = Rib(ctx)
    for u in _updates(prefixes[:n], peer):
        rib.apply_update(u, peer)
    planner = IncrementalPlanner(host)
    table = FakeRouteTable()
    rec = Reconciler(table)
    planner.update(_felix(rib.take_all()))
    rec.set_whole(planner.whole())
    await rec.sync_once(full=True)
    extra = iter(prefixes[n:])

    async def incremental() -> float:
        t = time.perf_counter()
        rib.apply_update(_updates([next(extra)], peer)[0], peer)
        rec.apply_change(planner.update(_felix(rib.take_changes())))
        report = await rec.sync_once(full=False)
        assert report.route_adds == 1
        return time.perf_counter() - t

    async def rebuild() -> float:
        prefix = next(extra)
        t = time.perf_counter()
        rib.apply_update(_updates([prefix], peer)[0], peer)
        rib.take_changes()
        best = [FelixBest(b.prefix, b.next_hops) for b in rib.best_routes().values()]
        state = plan_kernel(dataclasses.replace(host, routes=tuple(best))).state
        rec.set_desired(state)
        report = await rec.sync_once(full=False)
        assert report.route_adds == 1
        elapsed = time.perf_counter() - t
        planner.update([(prefix, FelixBest(prefix, (peer.address,)))])  # for the next samples
        return elapsed

    fast: list[float] = []
    slow: list[float] = []
    for i in range(repeat):
        order = ((incremental, fast), (rebuild, slow))
        for measure, into in order if i % 2 == 0 else order[::-1]:
            into.append(await measure())
    return {
        "one_more_ms": round(1000 * statistics.median(fast), 3),
        "one_more_rebuild_ms": round(1000 * statistics.median(slow), 1),
        "one_more_samples_ms": [round(1000 * x, 3) for x in fast],
        "one_more_rebuild_samples_ms": [round(1000 * x, 1) for x in slow],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prefixes", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    result: dict[str, object] = dict(run(args.prefixes))
    result.update(asyncio.run(_one_more(args.prefixes, args.repeat)))
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:16s} {v}")


if __name__ == "__main__":
    main()
