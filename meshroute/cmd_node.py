"""``meshroute node`` (the per-host process) and ``meshroute status`` (its
BGP peer table, like ``calicoctl node status``)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import time
import urllib.error
import urllib.request
from typing import TYPE_CHECKING

from datastore.port import StoreError
from meshroute.cli_support import print_table
from meshroute.config import DEFAULT_CONFIG, ConfigError, load_node_config
from meshroute.errors import UserError

if TYPE_CHECKING:
    from meshroute.node.process import NodeProcess

log = logging.getLogger("meshroute.node")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("node", help="run this host's node process (systemd Type=notify)")
    p.add_argument("--config", default=DEFAULT_CONFIG, help=f"default {DEFAULT_CONFIG}")
    p.add_argument(
        "--decommission",
        action="store_true",
        help="withdraw this node's routes from its peers, then exit (before removing it)",
    )
    p.set_defaults(func=cmd_node)

    s = sub.add_parser("status", help="this node's BGP peers and readiness")
    s.add_argument("--config", default=DEFAULT_CONFIG, help="to find the node's HTTP endpoint")
    s.add_argument("--endpoint", help="host:port of the node's HTTP endpoint (overrides --config)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_status)


def cmd_node(args: argparse.Namespace) -> int:
    from meshroute.node.process import NodeProcess

    try:
        config = load_node_config(args.config)
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


def install_stop_handlers(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    """SIGTERM/SIGINT stop the node. Not through loop.add_signal_handler: its
    wakeup fd is inherited by children that pyroute2 forks to reach a network
    namespace, and the SIGTERM pyroute2 ends them with would arrive here as
    ours. A forked child that gets the signal dies of it as it should."""
    me = os.getpid()

    def handler(sig: int, frame: object) -> None:
        if os.getpid() != me:
            signal.signal(sig, signal.SIG_DFL)
            os.kill(os.getpid(), sig)
            return
        log.info("received %s: stopping", signal.Signals(sig).name)
        loop.call_soon_threadsafe(stop.set)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handler)


async def _decommission_then_stop(node: NodeProcess, stop: asyncio.Event) -> None:
    await node.wait_ready()
    await node.decommission()
    stop.set()


def cmd_status(args: argparse.Namespace) -> int:
    endpoint = args.endpoint or _status_endpoint(args.config)
    try:
        with urllib.request.urlopen(f"http://{endpoint}/status", timeout=5) as r:
            status = json.loads(r.read())
    except (urllib.error.URLError, OSError) as e:
        raise UserError(f"meshroute is not answering on {endpoint}: {e}") from e
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    if status.get("role") == "reflector":
        from meshroute.cmd_reflector import print_reflector_status

        print_reflector_status(status)
        return 0
    print(
        f"meshroute node {status['node']} (AS {status['asn']}, router id {status['routerId']})"
        f" is {'ready' if status['ready'] else 'NOT ready'}\n"
    )
    now = time.time()
    print_table(
        ["PEER ADDRESS", "PEER AS", "PEER TYPE", "STATE", "SINCE", "ACCEPTED/RECEIVED"],
        [
            [
                p["peer"],
                p["asn"],
                p["type"],
                p["state"],
                _since(now - p["since"]),
                f"{p['accepted']}/{p['received']}",
            ]
            for p in status["peers"]
        ],
    )
    return 0


def _status_endpoint(path: str) -> str:
    """The HTTP endpoint named by a node config, or by a reflector config
    (a reflector host has no node.yaml: the default falls back to
    reflector.yaml)."""
    from meshroute.reflector.config import DEFAULT_REFLECTOR_CONFIG, load_reflector_config

    if path == DEFAULT_CONFIG and not os.path.exists(path):
        path = DEFAULT_REFLECTOR_CONFIG
    try:
        return load_node_config(path).http.listen
    except ConfigError as node_error:
        try:
            return load_reflector_config(path).http.listen
        except ConfigError:
            raise UserError(str(node_error)) from node_error


def _since(seconds: float) -> str:
    s = int(max(0, seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"
