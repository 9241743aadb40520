"""The API process ExaBGP runs: a bridge between ExaBGP's stdin/stdout and the
node's unix socket, so the speaker logic lives in the node process and either
side can restart on its own.

    process meshroute { run <python> -m bgpd.relay --socket PATH; encoder json; }

Rules it keeps:

- ExaBGP's output (our stdin) is read all the time, whether or not the node is
  there: ExaBGP writes with a blocking write and freezes if nobody reads.
- While the node is away, lines are buffered up to ``--buffer`` lines; beyond
  that the oldest are dropped and counted (logged to stderr). The node asks
  its peers for a route refresh when it connects, so dropped updates come back.
- The last ``state`` and received ``open`` line of every peer are remembered
  and replayed to each node that connects, before the buffered lines, so a
  restarted node learns which sessions are up.
- Acks (``done``/``error``) for commands sent by a node that went away are
  swallowed, so a new node's first ack answers its own first command.
- After replay and buffer, a ``{"relay": "synced", "dropped": N, ...}`` line
  tells the node it is now live (the speaker then refreshes if needed).
- A node that stops reading (more than ``--max-queued-bytes`` unsent) is
  disconnected rather than letting memory grow; it reconnects and refreshes.
- Exits when ExaBGP closes our stdin.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

DEFAULT_BUFFER_LINES = 100_000
DEFAULT_MAX_QUEUED_BYTES = 256 * 1024 * 1024
LINE_LIMIT = 64 * 1024 * 1024  # one UPDATE can carry thousands of NLRI in one line


def is_ack(line: bytes) -> bool:
    s = line.strip()
    return s in (b"done", b"error") or s.startswith(b"error ")


def replay_key(line: bytes) -> tuple[str, str] | None:
    """The (kind, peer) a line is remembered under for replay, or None."""
    if b'"state"' not in line and b'"open"' not in line:
        return None
    try:
        msg = json.loads(line)
        kind = msg["type"]
        peer = msg["neighbor"]["address"]["peer"]
    except (ValueError, KeyError, TypeError):
        return None
    if kind == "state":
        return ("state", str(peer))
    if kind == "open" and msg["neighbor"].get("direction") == "receive":
        return ("open", str(peer))
    return None


@dataclass
class RelayState:
    """What the relay remembers between node connections. Pure bookkeeping."""

    max_lines: int = DEFAULT_BUFFER_LINES
    buffer: collections.deque[bytes] = field(default_factory=collections.deque)
    replay: dict[tuple[str, str], bytes] = field(default_factory=dict)
    outstanding: int = 0  # commands written to ExaBGP, not yet acked
    stale_acks: int = 0  # acks still due to a node that went away
    dropped: int = 0
    dropped_reported: int = 0  # dropped as of the last node connection

    def on_command_sent(self) -> None:
        self.outstanding += 1

    def on_node_gone(self) -> None:
        self.stale_acks = self.outstanding

    def on_exabgp_line(self, line: bytes, node_connected: bool) -> bytes | None:
        """Returns the line to forward now, or None (buffered or swallowed)."""
        if is_ack(line):
            self.outstanding = max(0, self.outstanding - 1)
            if self.stale_acks > 0:
                self.stale_acks -= 1
                return None
        key = replay_key(line)
        if key is not None:
            self.replay[key] = line
        if node_connected:
            return line
        if is_ack(line):
            return None  # nobody is waiting for it
        if len(self.buffer) >= self.max_lines:
            self.buffer.popleft()
            self.dropped += 1
        self.buffer.append(line)
        return None

    def on_node_connected(self) -> list[bytes]:
        """Lines to send a node that just connected: the replay, the buffer,
        then one ``{"relay": "synced", ...}`` line saying how many lines were
        dropped since the last node went away."""
        # a peer whose latest state/open is still in the buffer gets it from
        # there, in order, rather than a replay that would run ahead of it
        buffered = {id(b) for b in self.buffer}
        replay = [r for r in self.replay.values() if id(r) not in buffered]
        out = replay + list(self.buffer)
        mark = {
            "relay": "synced",
            "replayed": len(replay),
            "buffered": len(self.buffer),
            "dropped": self.dropped - self.dropped_reported,
        }
        self.dropped_reported = self.dropped
        self.buffer.clear()
        return [*out, json.dumps(mark).encode() + b"\n"]


def _log(msg: str) -> None:
    print(f"bgpd.relay[{os.getpid()}]: {msg}", file=sys.stderr, flush=True)


class Relay:
    def __init__(self, socket_path: str, state: RelayState, max_queued_bytes: int) -> None:
        self.socket_path = socket_path
        self.state = state
        self.max_queued_bytes = max_queued_bytes
        self.node_writer: asyncio.StreamWriter | None = None
        self.stdout: asyncio.StreamWriter | None = None
        self.reported_drops = 0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        stdin = asyncio.StreamReader(limit=LINE_LIMIT)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
        tr, proto = await loop.connect_write_pipe(
            asyncio.streams.FlowControlMixin, os.fdopen(os.dup(sys.stdout.fileno()), "wb")
        )
        self.stdout = asyncio.StreamWriter(tr, proto, None, loop)
        node_task = asyncio.create_task(self._node_loop())
        try:
            await self._drain_exabgp(stdin)
        finally:
            node_task.cancel()
            if self.node_writer is not None:
                self.node_writer.close()

    async def _drain_exabgp(self, stdin: asyncio.StreamReader) -> None:
        while True:
            try:
                line = await stdin.readline()
            except ValueError:  # a line over LINE_LIMIT: skip it, keep draining
                _log("dropped an over-long line from ExaBGP")
                continue
            if not line:
                _log("ExaBGP closed stdin; exiting")
                return
            w = self.node_writer
            fwd = self.state.on_exabgp_line(line, w is not None)
            if self.state.dropped != self.reported_drops:
                if self.state.dropped in (1, 10, 100) or self.state.dropped % 1000 == 0:
                    _log(f"node away: {self.state.dropped} lines dropped so far")
                self.reported_drops = self.state.dropped
            if fwd is not None and w is not None:
                w.write(fwd)
                if w.transport.get_write_buffer_size() > self.max_queued_bytes:
                    _log("node is not reading; disconnecting it")
                    self._node_gone(w)

    def _node_gone(self, w: asyncio.StreamWriter) -> None:
        if self.node_writer is w:
            self.node_writer = None
            self.state.on_node_gone()
        w.close()

    async def _node_loop(self) -> None:
        delay = 0.05
        while True:
            try:
                reader, writer = await asyncio.open_unix_connection(
                    self.socket_path, limit=LINE_LIMIT
                )
            except OSError:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            delay = 0.05
            _log(f"connected to {self.socket_path}")
            for line in self.state.on_node_connected():
                writer.write(line)
            self.node_writer = writer
            try:
                await self._pump_commands(reader)
            finally:
                self._node_gone(writer)
                _log("node went away")

    async def _pump_commands(self, reader: asyncio.StreamReader) -> None:
        assert self.stdout is not None
        while True:
            try:
                line = await reader.readline()
            except (ValueError, ConnectionError):
                return
            if not line or not line.endswith(b"\n"):
                return  # EOF, or a command cut off by the node dying mid-line
            self.stdout.write(line)
            self.state.on_command_sent()
            await self.stdout.drain()


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bgpd.relay", description=__doc__.split("\n")[0])
    ap.add_argument("--socket", required=True, help="the node's unix socket")
    ap.add_argument("--buffer", type=int, default=DEFAULT_BUFFER_LINES)
    ap.add_argument("--max-queued-bytes", type=int, default=DEFAULT_MAX_QUEUED_BYTES)
    args = ap.parse_args(argv)
    relay = Relay(args.socket, RelayState(max_lines=args.buffer), args.max_queued_bytes)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(relay.run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
