"""The ``meshroute`` command line: one entry point, one module per group of
subcommands (``meshroute.cmd_*``), each exposing ``register(subparsers)``.
Errors the operator can fix end the process with exit 1 and one clear line."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import re
import sys
from collections.abc import Sequence
from typing import NoReturn

from ipam.quoting import quote
from meshroute.errors import UserError
from meshroute.etcd_options import add_etcd_options

COMMAND_MODULES = (
    "meshroute.cmd_resources",
    "meshroute.cmd_ipam",
    "meshroute.cmd_label",
    "meshroute.cmd_node",
    "meshroute.cmd_reflector",
    "meshroute.cmd_status",
    "meshroute.cmd_lab",
    "meshroute.cmd_secret",
)


class _Parser(argparse.ArgumentParser):
    """argparse quotes a bad argument whole ("invalid choice: '...'"):
    quote long ones by a short prefix, as every error does."""

    def error(self, message: str) -> NoReturn:
        super().error(re.sub(r"'([^']{65,})'", lambda m: quote(m.group(1)), message))


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="meshroute", description="A Calico-style pod network for bare-metal clusters."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at debug level")
    add_etcd_options(parser, with_defaults=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        rc = args.func(args)
        sys.stdout.flush()
    except UserError as e:
        print(f"meshroute: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (``meshroute ipam show | head``): stop quietly,
        # as a tool killed by SIGPIPE does, without a second error at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + 13
    return int(rc or 0)


if __name__ == "__main__":
    # Run through the package module so that every subcommand raises the
    # same UserError class this main catches.
    from meshroute.cli import main as package_main

    sys.exit(package_main())
