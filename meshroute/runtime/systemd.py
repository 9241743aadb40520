"""systemd's notify protocol (sd_notify) without libsystemd: one datagram
per state change to ``$NOTIFY_SOCKET``, and the watchdog interval from
``$WATCHDOG_USEC`` (pinged at half of it, as sd_watchdog_enabled advises).

Sending never waits: it runs on the event loop, and a datagram to a
receiver whose queue is full (10 datagrams by default, net.unix.
max_dgram_qlen) would block until the receiver reads. systemd always reads;
a receiver that does not would otherwise freeze the whole process (HTTP,
BGP, routes) on a watchdog ping. Such a notification is dropped instead."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping


class Notifier:
    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        addr = env.get("NOTIFY_SOCKET") or None
        # "@name" is an abstract socket: a leading NUL byte on the wire.
        self._addr = "\0" + addr[1:] if addr and addr.startswith("@") else addr
        usec = env.get("WATCHDOG_USEC")
        pid = env.get("WATCHDOG_PID")
        mine = pid is None or pid == str(os.getpid())
        self.watchdog_interval_s: float | None = (
            int(usec) / 2e6 if usec and usec.isdigit() and int(usec) > 0 and mine else None
        )

    @property
    def enabled(self) -> bool:
        return self._addr is not None

    def notify(self, *lines: str) -> bool:
        """Send ``READY=1``, ``WATCHDOG=1``, ``STATUS=...``, ``STOPPING=1``...;
        False when there is no notify socket or it cannot be reached."""
        if self._addr is None:
            return False
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            try:
                s.sendto("\n".join(lines).encode(), socket.MSG_DONTWAIT, self._addr)
            except OSError:  # BlockingIOError included: the receiver's queue is full
                return False
        return True
