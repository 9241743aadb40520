"""``meshroute ipam``: show use, check consistency, release addresses and
repair what check finds (``gc``); ``serve`` runs the host's IPAM service."""

from __future__ import annotations

import argparse
from collections import defaultdict
from typing import Any

from netaddr import AddrFormatError, IPAddress

from datastore.port import KvStore
from ipam.check import IN_PROGRESS, REPAIRABLE, plan_gc
from ipam.ipam import PENDING_GRACE_S, Ipam
from ipam.model import Snapshot
from ipam.quoting import counted, quote
from meshroute.cli_support import print_json, print_table, run_with_store
from meshroute.cmd_ipam_serve import add_serve_parser
from meshroute.errors import UserError
from meshroute.etcd_options import add_etcd_options
from meshroute.registry import Registry

EXIT_ISSUES = 3


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("ipam", help="IP address management")
    isub = p.add_subparsers(dest="ipam_command", required=True, metavar="IPAM_COMMAND")

    show = isub.add_parser("show", help="pools with their use and blocks per host")
    show.add_argument("--json", action="store_true")
    add_etcd_options(show)
    show.set_defaults(func=cmd_show)

    check = isub.add_parser(
        "check",
        help="find leaked handles, blocks of gone hosts, allocations without affinity, "
        "half-finished claims, pod endpoint records without allocations and the reverse "
        f"(exit {EXIT_ISSUES} when something is found); claims younger than the grace "
        "are listed as in progress",
    )
    check.add_argument("--json", action="store_true")
    _grace(check)
    add_etcd_options(check)
    check.set_defaults(func=cmd_check)

    gc = isub.add_parser("gc", help="repair what 'ipam check' finds")
    gc.add_argument("--dry-run", action="store_true", help="print the repairs, change nothing")
    _grace(gc)
    add_etcd_options(gc)
    gc.set_defaults(func=cmd_gc)

    rel = isub.add_parser("release", help="release addresses or a handle")
    what = rel.add_mutually_exclusive_group(required=True)
    what.add_argument("--ip", action="append", help="an address to release; repeatable")
    what.add_argument("--handle", help="release every address of this handle")
    add_etcd_options(rel)
    rel.set_defaults(func=cmd_release)

    eps = isub.add_parser("endpoints", help="pod interfaces: WorkloadEndpoint records")
    eps.add_argument("--node", help="only this node's")
    eps.add_argument("--json", action="store_true")
    add_etcd_options(eps)
    eps.set_defaults(func=cmd_endpoints)

    add_serve_parser(isub)


def _grace(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--grace",
        type=float,
        default=PENDING_GRACE_S,
        metavar="SECONDS",
        help="a claim of a live host pending for less than this is still running "
        f"(default {PENDING_GRACE_S:g})",
    )


def summarize(snap: Snapshot) -> dict[str, Any]:
    pools: dict[str, dict[str, Any]] = {}
    for p in snap.pools.values():
        pools[p.name] = {
            "cidr": str(p.cidr),
            "size": int(p.cidr.size),
            "blocks": 0,
            "allocated": 0,
            "disabled": p.disabled,
        }
    hosts: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for b, _ in sorted(snap.blocks.values(), key=lambda x: (x[0].cidr.version, x[0].cidr)):
        if b.pool in pools:
            pools[b.pool]["blocks"] += 1
            pools[b.pool]["allocated"] += b.workload_count
        hosts[b.affinity or "(none)"].append(
            {"cidr": str(b.cidr), "pool": b.pool, "used": b.workload_count, "size": b.size}
        )
    return {"pools": pools, "hosts": dict(sorted(hosts.items())), "revision": snap.revision}


def cmd_show(args: argparse.Namespace) -> int:
    async def body(store: KvStore, ipam: Ipam, reg: Registry) -> dict[str, Any]:
        return summarize(await ipam.snapshot())

    s = run_with_store(args, body)
    if args.json:
        print_json(s)
        return 0
    print_table(
        ["POOL", "CIDR", "BLOCKS", "ALLOCATED", "SIZE", "USE", "DISABLED"],
        [
            [
                name,
                p["cidr"],
                p["blocks"],
                p["allocated"],
                p["size"],
                f"{100.0 * p['allocated'] / p['size']:.2f}%",
                p["disabled"],
            ]
            for name, p in sorted(s["pools"].items())
        ],
    )
    print()
    print_table(
        ["HOST", "BLOCK", "POOL", "USED"],
        [
            [h, b["cidr"], b["pool"], f"{b['used']}/{b['size']}"]
            for h, blocks in s["hosts"].items()
            for b in blocks
        ],
    )
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    async def body(store: KvStore, ipam: Ipam, reg: Registry) -> list[dict[str, str]]:
        live = set(await reg.nodes())
        return [i.to_dict() for i in await ipam.check(live, args.grace)]

    found = run_with_store(args, body)
    running = [i for i in found if i["kind"] in {k.value for k in IN_PROGRESS}]
    issues = [i for i in found if i not in running]
    if args.json:
        print_json(found)
    elif found:
        print_table(
            ["FINDING", "SUBJECT", "DETAIL"],
            [[i["kind"], i["subject"], i["detail"]] for i in found],
        )
        repairable = sum(1 for i in issues if i["kind"] in {k.value for k in REPAIRABLE})
        summary = [
            counted(len(issues), "finding"),
            f"{repairable} repairable with 'meshroute ipam gc'",
        ]
        if running:
            summary.append(f"{counted(len(running), 'claim')} in progress")
        print("\n" + ", ".join(summary))
    else:
        print("IPAM is consistent")
    return EXIT_ISSUES if issues else 0


def cmd_gc(args: argparse.Namespace) -> int:
    async def body(store: KvStore, ipam: Ipam, reg: Registry) -> list[list[str]]:
        live = set(await reg.nodes())
        if args.dry_run:
            snap = await ipam.snapshot()
            issues = [i for i in await ipam.check(live, args.grace) if i.kind in REPAIRABLE]
            return [[r.action.value, r.subject, "(dry run)"] for r in plan_gc(snap, issues)]
        return [
            [r.action.value, r.subject, outcome] for r, outcome in await ipam.gc(live, args.grace)
        ]

    rows = run_with_store(args, body)
    if rows:
        print_table(["REPAIR", "SUBJECT", "OUTCOME"], rows)
    else:
        print("nothing to repair")
    return 0


def cmd_release(args: argparse.Namespace) -> int:
    if args.handle:

        async def by_handle(store: KvStore, ipam: Ipam, reg: Registry) -> list[IPAddress]:
            return await ipam.release_handle(args.handle)

        freed = run_with_store(args, by_handle)
        if not freed:
            raise UserError(f"handle {quote(args.handle)} is unknown: nothing released")
        print(f"released {', '.join(map(str, freed))}")
        return 0
    ips = []
    for x in args.ip:
        try:
            ips.append(IPAddress(x))
        except (AddrFormatError, ValueError) as e:
            raise UserError(f"--ip: {quote(x)} is not an IP address") from e

    async def by_ip(store: KvStore, ipam: Ipam, reg: Registry) -> tuple[list[Any], list[Any]]:
        return await ipam.release_ips([(ip, None) for ip in ips])

    freed_ips, unknown = run_with_store(args, by_ip)
    if freed_ips:
        print(f"released {', '.join(map(str, freed_ips))}")
    if unknown:
        raise UserError(f"not allocated, nothing released: {', '.join(map(str, unknown))}")
    return 0


def cmd_endpoints(args: argparse.Namespace) -> int:
    async def body(store: KvStore, ipam: Ipam, reg: Registry) -> list[dict[str, Any]]:
        return [ep.to_dict() for ep, _ in await ipam.endpoints(args.node)]

    eps = sorted(run_with_store(args, body), key=lambda e: (e["namespace"], e["pod"], e["ifname"]))
    if args.json:
        print_json(eps)
        return 0
    print_table(
        ["NAMESPACE", "POD", "NODE", "IFACE", "HOST IFACE", "ADDRESSES", "LABELS", "PORTS"],
        [
            [
                e["namespace"],
                e["pod"],
                e["node"],
                e["ifname"],
                e["hostIface"] or "-",
                ",".join(e["ips"]),
                ",".join(f"{k}={v}" for k, v in e["labels"].items()) or "-",
                ",".join(f"{p['name']}/{p['protocol']}/{p['port']}" for p in e["ports"]) or "-",
            ]
            for e in eps
        ],
    )
    return 0
