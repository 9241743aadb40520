"""``meshroute reflector``: run this host's route reflector (BIRD driven from
etcd; systemd Type=notify)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os

from datastore.port import StoreError
from meshroute.errors import UserError
from meshroute.etcd_options import with_environment
from meshroute.reflector.config import DEFAULT_REFLECTOR_CONFIG, load_reflector_config
from meshroute.runtime.config import ConfigError
from meshroute.runtime.stop import install_stop_handlers


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
        config = config.model_copy(update={"etcd": with_environment(config.etcd, os.environ)})
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
