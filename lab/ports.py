"""Free loopback TCP ports for the daemons the lab starts on loopback (etcd,
the HTTP endpoints of node and reflector processes).

They are picked below the kernel's ephemeral range: a port the kernel hands
out for ``bind(0)`` is also one it hands to any outgoing connection, and one
did take etcd's port between the pick and etcd's own bind."""

from __future__ import annotations

import contextlib
import random
import socket
from pathlib import Path

LOWEST = 10000


def _ephemeral_start() -> int:
    with contextlib.suppress(OSError, ValueError, IndexError):
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text()
        return int(text.split()[0])
    return 32768


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(n: int, *, span: int = 1) -> list[int]:
    """n ports, each the first of ``span`` consecutive ones, all distinct and
    free on 127.0.0.1 a moment ago, none in the ephemeral range."""
    top = _ephemeral_start() - span
    taken: set[int] = set()
    out: list[int] = []
    for _ in range(1000 * n):
        if len(out) == n:
            return out
        port = random.randrange(LOWEST, top)
        block = range(port, port + span)
        if taken.isdisjoint(block) and all(_bindable(p) for p in block):
            taken.update(block)
            out.append(port)
    raise RuntimeError(f"no {n} free loopback ports below {top + span}")
