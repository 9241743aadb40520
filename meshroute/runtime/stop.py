"""How a meshroute process (node, reflector) learns it must stop: SIGTERM
(systemd) and SIGINT set an asyncio event."""

from __future__ import annotations

import asyncio
import logging
import os
import signal

log = logging.getLogger(__name__)


def install_stop_handlers(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    """SIGTERM/SIGINT stop the process. Not through loop.add_signal_handler: its
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
