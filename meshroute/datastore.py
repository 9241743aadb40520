"""How the CLI and processes reach etcd: the shared command-line options and
a store that fails fast with a clear message when etcd cannot be reached."""

from __future__ import annotations

import argparse
import os

from ipam.etcd_store import EtcdStore

DEFAULT_ENDPOINTS = "127.0.0.1:2379"
DEFAULT_PREFIX = "/meshroute"


def add_etcd_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--etcd",
        default=os.environ.get("MESHROUTE_ETCD", DEFAULT_ENDPOINTS),
        help="comma-separated etcd endpoints host:port (env MESHROUTE_ETCD; "
        f"default {DEFAULT_ENDPOINTS})",
    )
    p.add_argument(
        "--prefix",
        default=os.environ.get("MESHROUTE_PREFIX", DEFAULT_PREFIX),
        help=f"key prefix of this cluster in etcd (env MESHROUTE_PREFIX; default {DEFAULT_PREFIX})",
    )


def store_from_args(args: argparse.Namespace, timeout: float = 5.0) -> EtcdStore:
    endpoints = [e.strip() for e in args.etcd.split(",") if e.strip()]
    return EtcdStore(endpoints, timeout=timeout)
