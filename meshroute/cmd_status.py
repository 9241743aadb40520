"""``meshroute status``: the BGP peer table and readiness of the node on
this host (like ``calicoctl node status``), or the client table of the
reflector, read from its HTTP endpoint."""

from __future__ import annotations

import argparse
import json
import os
import time
import urllib.error
import urllib.request
from typing import Any

from meshroute.cli_support import print_table
from meshroute.errors import UserError
from meshroute.node.config import DEFAULT_CONFIG, load_node_config
from meshroute.reflector.config import DEFAULT_REFLECTOR_CONFIG, load_reflector_config
from meshroute.runtime.config import ConfigError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    s = sub.add_parser("status", help="this node's BGP peers and readiness")
    s.add_argument("--config", default=DEFAULT_CONFIG, help="to find the node's HTTP endpoint")
    s.add_argument("--endpoint", help="host:port of the node's HTTP endpoint (overrides --config)")
    s.add_argument("--json", action="store_true")
    s.add_argument(
        "--policy",
        action="store_true",
        help="packets and bytes allowed and denied per policy rule (nft counters)",
    )
    s.set_defaults(func=cmd_status)


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
        print_reflector_status(status)
    elif args.policy:
        print_policy_status(status.get("policy") or {})
    else:
        print_node_status(status)
    return 0


def print_policy_status(p: dict[str, Any]) -> None:
    print(
        f"{p.get('endpoints', 0)} endpoints, {p.get('policies', 0)} policies;"
        f" {p.get('transactions', 0)} nft transactions, {p.get('refused', 0)} refused"
    )
    if p.get("lastError"):
        print(f"last refusal: {str(p['lastError'])[:300]}")
    print()
    print_table(
        ["POLICY", "DIRECTION", "RULE", "ACTION", "PACKETS", "BYTES"],
        [
            [r["policy"], r["direction"], r["rule"], r["action"], r["packets"], r["bytes"]]
            for r in p.get("rules", [])
        ],
    )


def print_node_status(status: dict[str, Any]) -> None:
    print(
        f"meshroute node {status['node']} (AS {status['asn']}, router id {status['routerId']})"
        f" is {'ready' if status['ready'] else 'NOT ready'}\n"
    )
    now = time.time()
    print_table(
        [
            "PEER ADDRESS",
            "PEER AS",
            "PEER TYPE",
            "STATE",
            "SINCE",
            "ACCEPTED/RECEIVED",
            "BFD",
            "MD5",
        ],
        [
            [
                p["peer"],
                p["asn"],
                p["type"],
                p["state"],
                _since(now - p["since"]),
                f"{p['accepted']}/{p['received']}",
                (p.get("bfd") or {}).get("state", "-"),
                p.get("password") or "",
            ]
            for p in status["peers"]
        ],
    )
    downs = [(p["peer"], p["downReason"]) for p in status["peers"] if p.get("downReason")]
    if downs:
        print("\nLast session down:")
        for peer, why in downs:
            print(f"  {peer}: {why}")
    for problem in status.get("peerProblems", []):
        print(f"\nleft out: {problem}")


def _status_endpoint(path: str) -> str:
    """The HTTP endpoint named by a node config, or by a reflector config
    (a reflector host has no node.yaml: the default falls back to
    reflector.yaml)."""
    if path == DEFAULT_CONFIG and not os.path.exists(path):
        path = DEFAULT_REFLECTOR_CONFIG
    try:
        return load_node_config(path).http.listen
    except ConfigError as node_error:
        try:
            return load_reflector_config(path).http.listen
        except ConfigError:
            raise UserError(str(node_error)) from node_error


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
