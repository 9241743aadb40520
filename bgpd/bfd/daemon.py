"""``python -m bgpd.bfd.daemon``: a small process that runs the node's BFD
sessions and outlives the node process, so a node restart (kill -9
included) never looks like a failure to a peer. Its packets carry the C bit
(control-plane independent, RFC 5880 §4.1): when its sessions go down, the
forwarding path really is gone and peers act at once instead of treating
it as a graceful restart (RFC 5882 §4.3).

It serves one node at a time on a unix socket (``bgpd.bfd.wire``): the node
sends the desired sessions, the daemon reports changes and snapshots. With
no node connected it keeps the last sessions running; after
``--orphan-exit`` seconds without one it exits, and peers see the sessions
go down (a node that never came back must not look alive forever).

A change is sent the moment it happens; the snapshot that follows it is
sent once for all the changes of the next ``SNAPSHOT_AFTER_CHANGE_S``: a
snapshot per change costs a pass over every session, and on a loaded host
a burst of flaps paid for that many passes, went late, and flapped more."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from bgpd.bfd.speaker import BfdChange, BfdSpeaker
from bgpd.bfd.wire import MAX_LINE, change_to_json, decode_sessions, status_to_json

log = logging.getLogger("bgpd.bfd.daemon")
SNAPSHOT_EVERY_S = 1.0
SNAPSHOT_AFTER_CHANGE_S = 0.05


class Daemon:
    def __init__(self, socket_path: Path, orphan_exit_s: float) -> None:
        self.socket_path = socket_path
        self.orphan_exit_s = orphan_exit_s
        self.speaker = BfdSpeaker(on_change=self._on_change)
        self._writer: asyncio.StreamWriter | None = None
        self._done = asyncio.Event()
        self._orphan: asyncio.TimerHandle | None = None
        self._snapshot_due: asyncio.TimerHandle | None = None

    async def run(self) -> None:
        await self.speaker.start()
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        server = await asyncio.start_unix_server(
            self._on_node, str(self.socket_path), limit=MAX_LINE
        )
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._done.set)
        self._arm_orphan()
        ticker = asyncio.create_task(self._snapshots())
        try:
            await self._done.wait()
        finally:
            ticker.cancel()
            server.close()
            await self.speaker.stop()
            with contextlib.suppress(FileNotFoundError):
                self.socket_path.unlink()

    def _arm_orphan(self) -> None:
        if self._orphan is None:
            loop = asyncio.get_running_loop()
            self._orphan = loop.call_later(self.orphan_exit_s, self._orphaned)

    def _orphaned(self) -> None:
        log.warning("no node for %.0f s: ending the BFD sessions", self.orphan_exit_s)
        self._done.set()

    def _send(self, msg: dict[str, object]) -> None:
        w = self._writer
        if w is None or w.is_closing():
            return
        if w.transport.get_write_buffer_size() > MAX_LINE:
            w.close()  # a node that stopped reading: it reconnects
            return
        w.write(json.dumps(msg).encode() + b"\n")

    def _on_change(self, c: BfdChange) -> None:
        self._send({"change": change_to_json(c)})
        if self._snapshot_due is None:
            loop = asyncio.get_running_loop()
            self._snapshot_due = loop.call_later(SNAPSHOT_AFTER_CHANGE_S, self._snapshot)

    def _snapshot(self) -> None:
        if self._snapshot_due is not None:
            self._snapshot_due.cancel()
            self._snapshot_due = None
        drops = {r.value: n for r, n in self.speaker.drops.items()}
        sessions = [status_to_json(s) for s in self.speaker.status()]
        self._send({"snapshot": {"sessions": sessions, "drops": drops}})

    async def _snapshots(self) -> None:
        while True:
            await asyncio.sleep(SNAPSHOT_EVERY_S)
            self._snapshot()

    async def _on_node(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._writer is not None:
            self._writer.close()  # the newest node wins: the old one is gone
        self._writer = writer
        if self._orphan is not None:
            self._orphan.cancel()
            self._orphan = None
        self._snapshot()
        try:
            while line := await reader.readline():
                try:
                    specs = decode_sessions(line)
                except (ValueError, KeyError) as e:
                    log.warning("bad line from the node (%s): %.120r", e, line)
                    continue
                self.speaker.set_sessions(specs)
                self._snapshot()
        except (ConnectionError, ValueError, asyncio.LimitOverrunError) as e:
            log.warning("node connection: %s", e)
        finally:
            if self._writer is writer:
                self._writer = None
                self._arm_orphan()
            writer.close()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bgpd.bfd.daemon")
    p.add_argument("--socket", required=True, type=Path)
    p.add_argument("--orphan-exit", type=float, default=300.0, metavar="SECONDS")
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s"
    )
    log.info("BFD daemon pid %d on %s", os.getpid(), args.socket)
    asyncio.run(Daemon(args.socket, args.orphan_exit).run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
