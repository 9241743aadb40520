"""``meshroute demo`` (what ``make demo`` runs): the lab in each of its
topologies in turn, full mesh, ToR eBGP and route reflectors, each built,
checked with its pod-to-pod ping matrix and taken down again."""

from __future__ import annotations

import argparse

from meshroute.cmd_lab import DEFAULT_RUN_DIR, cmd_up

TOPOLOGIES = ("mesh", "tor", "rr")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("demo", help="the lab in every topology: build, ping matrix, down (root)")
    p.add_argument(
        "--topology",
        choices=TOPOLOGIES,
        action="append",
        help="only these topologies (repeatable; default: all three)",
    )
    p.add_argument(
        "--keep",
        action="store_true",
        help="leave the (last) lab running; remove it with 'meshroute lab down'",
    )
    p.add_argument("--run-dir", default=DEFAULT_RUN_DIR)
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    topologies = args.topology or list(TOPOLOGIES)
    results = {}
    for i, topology in enumerate(topologies):
        print(f"\n######## lab topology: {topology} ########", flush=True)
        up = argparse.Namespace(
            topology=topology,
            racks=2,
            nodes_per_rack=2,
            pods_per_node=2,
            password=None,
            placement="root",
            keep=args.keep and i == len(topologies) - 1,
            converge_seconds=30.0,
            node_starter=None,
            run_dir=args.run_dir,
            prefix="mrlab",
        )
        results[topology] = cmd_up(up)
    print("\n######## demo ########")
    for topology, rc in results.items():
        print(f"{topology:>5}: {'every pod reached every pod' if rc == 0 else 'FAILED'}")
    return 0 if all(rc == 0 for rc in results.values()) else 1
