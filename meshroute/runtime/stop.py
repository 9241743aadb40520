"""How a meshroute process (node, reflector) learns it must stop: SIGTERM
(systemd) and SIGINT set an asyncio event."""

from __future__ import annotations

import asyncio
import logging
import signal

log = logging.getLogger(__name__)


def install_stop_handlers(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    """SIGTERM/SIGINT stop the process, through the loop's own signal
    handling. (Its wakeup fd would be inherited by a child forked without
    exec, which would then take a signal meant for it as ours; meshroute forks
    none: its children, ExaBGP and the tools it runs, exec, and its netlink
    sockets reach other namespaces from a thread, not a forked helper.)"""

    def handler(sig: signal.Signals) -> None:
        log.info("received %s: stopping", sig.name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, handler, sig)
