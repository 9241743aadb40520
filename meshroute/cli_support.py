"""Plumbing shared by the CLI's subcommands: run a coroutine against the
datastore, turning datastore and IPAM refusals into one-line user errors."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from datastore.port import KvStore, StoreError
from ipam.allocator import IpamError
from ipam.ipam import Ipam
from meshroute.errors import UserError
from meshroute.etcd_options import store_from_args
from meshroute.registry import Registry

T = TypeVar("T")


def run_with_store(
    args: argparse.Namespace, body: Callable[[KvStore, Ipam, Registry], Awaitable[T]]
) -> T:
    async def main() -> T:
        store = store_from_args(args)
        try:
            return await body(store, Ipam(store, prefix=args.prefix), Registry(store, args.prefix))
        finally:
            await store.close()

    try:
        return asyncio.run(main())
    except StoreError as e:
        raise UserError(str(e)) from e
    except IpamError as e:
        raise UserError(str(e)) from e


def print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")


def print_table(headers: list[str], rows: list[list[Any]]) -> None:
    cells = [headers] + [[("" if c is None else str(c)) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for r in cells:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
