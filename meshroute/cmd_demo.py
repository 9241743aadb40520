"""``meshroute demo``: the main job in one command (see meshroute.lab)."""

from __future__ import annotations

import argparse
import os

from meshroute.errors import UserError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("demo", help="run the lab demo on this machine (needs root)")
    p.add_argument("--pods", type=int, default=3, help="pods to create (default 3)")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        raise UserError("the demo creates network namespaces: run it as root")
    from meshroute.lab.ipam_demo import run_demo

    return run_demo(pods=args.pods)
