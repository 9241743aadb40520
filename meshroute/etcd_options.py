"""The command-line options every command that reaches etcd shares
(``--etcd``, ``--prefix``), and the store they name."""

from __future__ import annotations

import argparse
import os

from datastore.etcd import EtcdStore, split_endpoints
from meshroute.errors import UserError

DEFAULT_ENDPOINTS = "127.0.0.1:2379"
DEFAULT_PREFIX = "/meshroute"


def etcd_defaults() -> dict[str, str]:
    return {
        "etcd": os.environ.get("MESHROUTE_ETCD", DEFAULT_ENDPOINTS),
        "prefix": os.environ.get("MESHROUTE_PREFIX", DEFAULT_PREFIX),
    }


def add_etcd_options(p: argparse.ArgumentParser, *, with_defaults: bool = False) -> None:
    """``--etcd`` and ``--prefix``. On a subcommand they default to nothing,
    so the same options given before the subcommand (on the top parser,
    ``with_defaults``) are not overwritten: ``meshroute --etcd X ipam show``
    and ``meshroute ipam show --etcd X`` both work."""
    defaults = etcd_defaults()
    p.add_argument(
        "--etcd",
        default=defaults["etcd"] if with_defaults else argparse.SUPPRESS,
        help="comma-separated etcd endpoints host:port (env MESHROUTE_ETCD; "
        f"default {DEFAULT_ENDPOINTS}; node and reflector read theirs from their config)",
    )
    p.add_argument(
        "--prefix",
        default=defaults["prefix"] if with_defaults else argparse.SUPPRESS,
        help=f"key prefix of this cluster in etcd (env MESHROUTE_PREFIX; default {DEFAULT_PREFIX})",
    )


def store_from_args(args: argparse.Namespace, timeout: float = 5.0) -> EtcdStore:
    try:
        return EtcdStore(split_endpoints(args.etcd), timeout=timeout)
    except ValueError as e:
        raise UserError(f"--etcd: {e}") from e
