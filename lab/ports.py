"""Free loopback TCP ports for the daemons the lab starts on loopback (etcd,
the HTTP endpoints of node and reflector processes)."""

from __future__ import annotations

import socket


def free_ports(n: int) -> list[int]:
    """Return n distinct ports that were free on 127.0.0.1 a moment ago."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()
