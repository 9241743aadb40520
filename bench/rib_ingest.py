"""RIB ingest benchmark: one peer announces N /26s (in updates of 500 NLRIs
sharing attributes, as BIRD packs them); time ``Rib.apply_update`` for all of
them with import policy, best path and the changed-prefix set, then a second
peer with the same prefixes (two candidates per prefix, ECMP on), then a
withdraw of everything from the first peer.

The anchor, in the same run: storing the same ``Path`` objects and a
``BestRoute`` each in two plain dicts keyed by prefix (Adj-RIB-In and
Loc-RIB), the least any RIB has to do. CPU times are given too: the shared
machine's wall times are noisy.

``.venv/bin/python -m bench.rib_ingest --prefixes 100000 --json`` prints one
JSON object on its last line.
"""

from __future__ import annotations

import argparse
import json
import time

from netaddr import IPAddress, IPNetwork

from bgpd.model import BestRoute, Path, PathAttrs, UpdateEvent
from bgpd.policy import ImportContext, PoolRule
from bgpd.rib import PeerInfo, Rib

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prefixes", type=int, default=100_000)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    result = run(args.prefixes)
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:16s} {v}")


if __name__ == "__main__":
    main()
