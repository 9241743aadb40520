"""``meshroute lab up|down|status`` and ``meshroute demo``: the lab
(``lab/``, test equipment that drives meshroute from outside) has its own
command line, ``python -m lab``; these two subcommands hand it their
arguments. This is the one place the product names the lab, and it imports it
only when one of them runs."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    for name, text in (
        ("lab", "a cluster in network namespaces on this machine (root): up, down, status"),
        ("demo", "the lab in every topology: build, ping matrix, down (root)"),
    ):
        # NUL as the only prefix char: every argument, --help included, goes
        # to the lab's own parser untouched
        p = sub.add_parser(name, help=text, add_help=False, prefix_chars="\0")
        p.add_argument("args", nargs=argparse.REMAINDER)
        p.set_defaults(func=_forward, lab_command=name)


def _forward(args: argparse.Namespace) -> int:
    from lab.cli import main

    if args.lab_command == "demo":
        return main(["demo", *args.args], prog="meshroute")
    return main(args.args, prog="meshroute lab")
