"""``meshroute node``: run this host's node process (systemd Type=notify)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from typing import TYPE_CHECKING

from datastore.port import StoreError
from meshroute.errors import UserError
from meshroute.etcd_options import with_environment
from meshroute.node.config import DEFAULT_CONFIG, load_node_config
from meshroute.runtime.config import ConfigError
from meshroute.runtime.stop import install_stop_handlers

if TYPE_CHECKING:
    from meshroute.node.process import NodeProcess


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("node", help="run this host's node process (systemd Type=notify)")
    p.add_argument("--config", default=DEFAULT_CONFIG, help=f"default {DEFAULT_CONFIG}")
    p.add_argument(
        "--decommission",
        action="store_true",
        help="withdraw this node's routes from its peers, then exit (before removing it)",
    )
    p.set_defaults(func=cmd_node)


def cmd_node(args: argparse.Namespace) -> int:
    from meshroute.node.process import NodeProcess

    try:
        config = load_node_config(args.config)
        config = config.model_copy(update={"etcd": with_environment(config.etcd, os.environ)})
    except ConfigError as e:
        raise UserError(str(e)) from e
    if not logging.getLogger().isEnabledFor(logging.INFO):
        logging.getLogger().setLevel(logging.INFO)

    async def main() -> None:
        node = NodeProcess(config)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        install_stop_handlers(loop, stop)
        if args.decommission:
            stop_after = asyncio.create_task(_decommission_then_stop(node, stop))
            await node.run(stop)
            await stop_after
        else:
            await node.run(stop)

    try:
        asyncio.run(main())
    except StoreError as e:
        raise UserError(f"cannot start: {e}") from e
    return 0


async def _decommission_then_stop(node: NodeProcess, stop: asyncio.Event) -> None:
    await node.wait_ready()
    await node.decommission()
    stop.set()
