"""``meshroute lab up|down|status``: the lab of ``meshroute.lab`` from the
command line. ``up`` builds it, prints the summary and, unless ``--keep``,
takes it down again; its exit status says whether every pod reached every
pod. ``down`` removes a lab, also after a crash."""

from __future__ import annotations

import argparse
import importlib
import os
from typing import cast

from meshroute.errors import UserError

DEFAULT_RUN_DIR = "/run/meshroute-lab"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    lab = sub.add_parser("lab", help="a cluster in network namespaces on this machine (root)")
    lsub = lab.add_subparsers(dest="lab_command", required=True, metavar="ACTION")

    up = lsub.add_parser("up", help="build the lab, show the summary and the ping matrix")
    up.add_argument("--topology", choices=("mesh", "tor", "rr"), default="mesh")
    up.add_argument("--racks", type=int, default=2)
    up.add_argument("--nodes-per-rack", type=int, default=2)
    up.add_argument("--pods-per-node", type=int, default=2)
    up.add_argument("--password", help="TCP-MD5 password on the sessions with the nodes")
    up.add_argument(
        "--placement",
        choices=("root", "netns"),
        default="root",
        help="node processes in the root namespace (default) or inside their namespace",
    )
    up.add_argument("--keep", action="store_true", help="leave the lab running")
    up.add_argument("--converge-seconds", type=float, default=30.0)
    # tests and development: MODULE:FUNCTION of a node starter (NodeLaunch -> Spawned)
    up.add_argument("--node-starter", help=argparse.SUPPRESS)
    up.set_defaults(func=cmd_up)

    down = lsub.add_parser("down", help="remove the lab (also after a crash)")
    down.set_defaults(func=cmd_down)

    status = lsub.add_parser("status", help="sessions, node routes, IPAM use, ping matrix")
    status.add_argument("--no-ping", action="store_true")
    status.set_defaults(func=cmd_status)

    for p in (up, down, status):
        p.add_argument("--run-dir", default=DEFAULT_RUN_DIR, help=f"default {DEFAULT_RUN_DIR}")
        p.add_argument("--prefix", default="mrlab", help=argparse.SUPPRESS)


def _need_root() -> None:
    if os.geteuid() != 0:
        raise UserError("the lab creates network namespaces: run it as root")


def _starter(spec: str | None) -> object:
    from meshroute.lab.build import start_meshroute_node

    if not spec:
        return start_meshroute_node
    module, _, name = spec.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise UserError(f"--node-starter {spec}: {e}") from e


def cmd_up(args: argparse.Namespace) -> int:
    _need_root()
    from meshroute.lab.build import StartNode
    from meshroute.lab.status import summary
    from meshroute.lab.topology import LabParams
    from meshroute.lab.up import lab_down, lab_up

    params = LabParams(
        topology=args.topology,
        racks=args.racks,
        nodes_per_rack=args.nodes_per_rack,
        pods_per_node=args.pods_per_node,
        run_dir=args.run_dir,
        bgp_password=args.password,
        node_placement=args.placement,
    )
    bad = params.problems()
    if bad:
        raise UserError("; ".join(bad))
    try:
        res = lab_up(
            params,
            cast(StartNode, _starter(args.node_starter)),
            prefix=args.prefix,
            converge_timeout=args.converge_seconds,
        )
    except RuntimeError as e:
        raise UserError(f"lab up failed: {e}") from e
    ok = res.matrix is None or res.matrix.all_ok
    try:
        print(summary(res.lab, res.matrix), flush=True)
    finally:
        if not args.keep:
            lab_down(args.run_dir, args.prefix)
    print(f"==> {'every pod reached every pod' if ok else 'some pods did not answer'}")
    if args.keep:
        print(f"==> the lab keeps running; remove it: meshroute lab down --run-dir {args.run_dir}")
    return 0 if ok else 1


def cmd_down(args: argparse.Namespace) -> int:
    _need_root()
    from meshroute.lab.up import lab_down

    lab_down(args.run_dir, args.prefix)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    _need_root()
    from meshroute.lab.build import load_lab
    from meshroute.lab.pods import ping_matrix, pod_endpoints
    from meshroute.lab.status import summary

    lab = load_lab(args.run_dir)
    if lab is None:
        raise UserError(f"no lab in {args.run_dir}")
    matrix = None if args.no_ping or not lab.state.pods else ping_matrix(pod_endpoints(lab))
    print(summary(lab, matrix))
    return 0 if matrix is None or matrix.all_ok else 1
