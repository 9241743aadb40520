"""``meshroute reflector``: run this host's route reflector (BIRD driven from
etcd; systemd Type=notify). ``meshroute status`` shows its client table."""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from typing import Any

from datastore.port import StoreError
from meshroute.cli_support import print_table
from meshroute.cmd_node import install_stop_handlers
from meshroute.config import ConfigError
from meshroute.errors import UserError
from meshroute.reflector.config import DEFAULT_REFLECTOR_CONFIG, load_reflector_config


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("reflector", help="run a BGP route reflector (BIRD driven from etcd)")
    p.add_argument(
        "--config", default=DEFAULT_REFLECTOR_CONFIG, help=f"default {DEFAULT_REFLECTOR_CONFIG}"
    )
    p.set_defaults(func=cmd_reflector)


def cmd_reflector(args: argparse.Namespace) -> int:
    from meshroute.reflector.process import ReflectorProcess

    try:
        config = load_reflector_config(args.config)
    except ConfigError as e:
        raise UserError(str(e)) from e
    if not logging.getLogger().isEnabledFor(logging.INFO):
        logging.getLogger().setLevel(logging.INFO)

    async def main() -> None:
        reflector = ReflectorProcess(config)
        stop = asyncio.Event()
        install_stop_handlers(asyncio.get_running_loop(), stop)
        await reflector.run(stop)

    try:
        asyncio.run(main())
    except StoreError as e:
        raise UserError(f"cannot start: {e}") from e
    return 0


def print_reflector_status(status: dict[str, Any]) -> None:
    print(
        f"meshroute reflector {status['node']} (AS {status['asn']}, router id"
        f" {status['routerId']}, cluster id {status['clusterId']})"
        f" is {'ready' if status['ready'] else 'NOT ready'}"
    )
    print(f"BIRD pid {status['birdPid']}, restarted {status['birdRestarts']} times")
    if status.get("configError"):
        print(
            f"newest configuration REFUSED (BIRD keeps the last good one):\n"
            f"  {status['configError']}"
        )
    print()
    now = time.time()
    print_table(
        ["PEER ADDRESS", "NODE", "ROLE", "PEER AS", "STATE", "SINCE", "RECEIVED", "EXPORTED"],
        [
            [
                s["peer"],
                s["node"] or "-",
                s["role"],
                s["asn"],
                s["state"],
                _since(now - s["since"]) if s["since"] else "-",
                s["received"],
                s["exported"],
            ]
            for s in status["sessions"]
        ],
    )


def _since(seconds: float) -> str:
    s = int(max(0, seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"
