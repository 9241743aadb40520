"""The API process ExaBGP runs: a bridge between ExaBGP's stdin/stdout and the
node's unix socket, so the speaker logic lives in the node process and either
side can restart on its own.

    process meshroute { run <python> -S -I <bgpd dir>/relay.py --socket PATH; encoder json; }

It is one more process per node for its whole life, so it stays small: the
standard library's core only (no ``site``, no asyncio, no argparse; a
``selectors`` loop over non-blocking descriptors), ~10 MB resident where
an asyncio version took ~21 MB. ``python -m bgpd.relay`` runs the same code.

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
- Commands wait while ExaBGP does not read its stdin (more than
  ``EXABGP_QUEUE_BYTES`` unsent): the node's socket is not read meanwhile.
- Exits when ExaBGP closes our stdin.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import selectors
import socket
import sys
import time
from collections.abc import Sequence

DEFAULT_BUFFER_LINES = 100_000
DEFAULT_MAX_QUEUED_BYTES = 256 * 1024 * 1024
LINE_LIMIT = 64 * 1024 * 1024  # one UPDATE can carry thousands of NLRI in one line
CHUNK = 256 * 1024
EXABGP_QUEUE_BYTES = 1024 * 1024
RECONNECT_FIRST_S, RECONNECT_MAX_S = 0.05, 1.0
USAGE = "usage: relay.py --socket PATH [--buffer LINES] [--max-queued-bytes BYTES]"


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


class RelayState:
    """What the relay remembers between node connections. Pure bookkeeping."""

    def __init__(self, max_lines: int = DEFAULT_BUFFER_LINES) -> None:
        self.max_lines = max_lines
        self.buffer: collections.deque[bytes] = collections.deque()
        self.replay: dict[tuple[str, str], bytes] = {}
        self.outstanding = 0  # commands written to ExaBGP, not yet acked
        self.stale_acks = 0  # acks still due to a node that went away
        self.dropped = 0
        self.dropped_reported = 0  # dropped as of the last node connection

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
            self.dropped += 1
            if not self.buffer:  # --buffer 0: nothing is kept while the node is away
                return None
            self.buffer.popleft()
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


class LineSplitter:
    """Complete lines out of a byte stream. A line left unfinished at the end
    of a chunk that has grown over ``limit`` is skipped whole (up to its
    newline) and counted: what waits for a newline stays bounded."""

    def __init__(self, limit: int = LINE_LIMIT) -> None:
        self.limit = limit
        self.partial = bytearray()
        self.skipping = False
        self.skipped = 0

    def feed(self, data: bytes) -> list[bytes]:
        lines: list[bytes] = []
        start = 0
        while True:
            nl = data.find(b"\n", start)
            if nl < 0:
                break
            if self.skipping:
                self.skipping = False
            elif self.partial:
                self.partial += data[start : nl + 1]
                lines.append(bytes(self.partial))
                self.partial.clear()
            else:
                lines.append(data[start : nl + 1])
            start = nl + 1
        if not self.skipping:
            self.partial += data[start:]
            if len(self.partial) > self.limit:
                self.partial.clear()
                self.skipping = True
                self.skipped += 1
        return lines


def _log(msg: str) -> None:
    print(f"bgpd.relay[{os.getpid()}]: {msg}", file=sys.stderr, flush=True)


class Relay:
    """The loop: ExaBGP on ``stdin``/``stdout`` (descriptors), the node on a
    unix socket it reconnects to with a doubling delay."""

    def __init__(
        self,
        socket_path: str,
        state: RelayState,
        max_queued_bytes: int,
        stdin: int = 0,
        stdout: int = 1,
    ) -> None:
        self.socket_path = socket_path
        self.state = state
        self.max_queued_bytes = max_queued_bytes
        self.stdin, self.stdout = stdin, stdout
        self.sel = selectors.DefaultSelector()
        self.node: socket.socket | None = None
        self.node_events = 0  # what the selector watches the node's socket for
        self.to_node = bytearray()
        self.to_exabgp = bytearray()
        self.from_exabgp = LineSplitter()
        self.from_node = LineSplitter()
        self.reported_drops = 0
        self.reconnect_delay = RECONNECT_FIRST_S
        self.next_connect = 0.0

    def run(self) -> None:
        os.set_blocking(self.stdin, False)
        os.set_blocking(self.stdout, False)
        self.sel.register(self.stdin, selectors.EVENT_READ, "exabgp-in")
        try:
            while self._step():
                pass
            self._flush_node()
        finally:
            if self.node is not None:
                self.node.close()
            self.sel.close()

    def _flush_node(self) -> None:
        """ExaBGP's last words (its shutdown notice) still go to the node."""
        if self.node is None or not self.to_node:
            return
        self.node.settimeout(2.0)
        with contextlib.suppress(OSError):
            self.node.sendall(self.to_node)

    # ---- one turn of the loop ---------------------------------------------

    def _step(self) -> bool:
        """One wait and what it found; False once ExaBGP closed our stdin."""
        now = time.monotonic()
        if self.node is None and now >= self.next_connect:
            self._connect()
        self._update_interest()
        timeout = None if self.node is not None else max(0.0, self.next_connect - now)
        for key, events in self.sel.select(timeout):
            what = key.data
            if what == "exabgp-in" and not self._read_exabgp():
                return False
            if what == "exabgp-out":
                self._write_exabgp()
            if what == "node" and self.node is not None:
                if events & selectors.EVENT_READ:
                    self._read_node()
                if self.node is not None and events & selectors.EVENT_WRITE:
                    self._write_node()
        return True

    def _update_interest(self) -> None:
        want_out = bool(self.to_exabgp)
        registered = self.stdout in self.sel.get_map()
        if want_out and not registered:
            self.sel.register(self.stdout, selectors.EVENT_WRITE, "exabgp-out")
        elif not want_out and registered:
            self.sel.unregister(self.stdout)
        if self.node is not None:
            ev = selectors.EVENT_WRITE if self.to_node else 0
            if len(self.to_exabgp) < EXABGP_QUEUE_BYTES:
                ev |= selectors.EVENT_READ
            if ev != self.node_events:
                if not ev:
                    self.sel.unregister(self.node)
                elif not self.node_events:
                    self.sel.register(self.node, ev, "node")
                else:
                    self.sel.modify(self.node, ev, "node")
                self.node_events = ev

    # ---- ExaBGP -----------------------------------------------------------

    def _read_exabgp(self) -> bool:
        try:
            data = os.read(self.stdin, CHUNK)
        except BlockingIOError:
            return True
        if not data:
            _log("ExaBGP closed stdin; exiting")
            return False
        skipped = self.from_exabgp.skipped
        for line in self.from_exabgp.feed(data):
            fwd = self.state.on_exabgp_line(line, self.node is not None)
            if fwd is not None:
                self.to_node += fwd
        if self.from_exabgp.skipped != skipped:
            _log("dropped an over-long line from ExaBGP")
        if self.state.dropped != self.reported_drops:
            if self.state.dropped in (1, 10, 100) or self.state.dropped % 1000 == 0:
                _log(f"node away: {self.state.dropped} lines dropped so far")
            self.reported_drops = self.state.dropped
        if self.node is not None and len(self.to_node) > self.max_queued_bytes:
            _log("node is not reading; disconnecting it")
            self._node_gone()
        elif self.node is not None and self.to_node:
            self._write_node()
        return True

    def _write_exabgp(self) -> None:
        try:
            n = os.write(self.stdout, self.to_exabgp)
        except BlockingIOError:
            return
        del self.to_exabgp[:n]

    # ---- the node ---------------------------------------------------------

    def _connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.setblocking(False)  # a full backlog answers EAGAIN: retried like a refusal
        try:
            s.connect(self.socket_path)
        except OSError:
            s.close()
            self.next_connect = time.monotonic() + self.reconnect_delay
            self.reconnect_delay = min(self.reconnect_delay * 2, RECONNECT_MAX_S)
            return
        self.reconnect_delay = RECONNECT_FIRST_S
        _log(f"connected to {self.socket_path}")
        self.node = s
        self.from_node = LineSplitter()
        self.to_node = bytearray(b"".join(self.state.on_node_connected()))

    def _read_node(self) -> None:
        assert self.node is not None
        try:
            data = self.node.recv(CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # EOF; a command cut off by the node dying mid-line is dropped
            self._node_gone()
            return
        skipped = self.from_node.skipped
        for line in self.from_node.feed(data):
            self.to_exabgp += line
            self.state.on_command_sent()
        if self.from_node.skipped != skipped:
            _log("over-long command from the node; disconnecting it")
            self._node_gone()
            return
        self._write_exabgp()

    def _write_node(self) -> None:
        assert self.node is not None
        try:
            n = self.node.send(self.to_node)
        except BlockingIOError:
            return
        except OSError:
            self._node_gone()
            return
        del self.to_node[:n]

    def _node_gone(self) -> None:
        if self.node is None:
            return
        if self.node_events:
            self.sel.unregister(self.node)
        self.node_events = 0
        self.node.close()
        self.node = None
        self.to_node.clear()
        self.state.on_node_gone()
        self.next_connect = time.monotonic()  # a restarted node is back soon
        _log("node went away")


def parse_args(argv: Sequence[str]) -> tuple[str, int, int]:
    """(socket, buffer lines, max queued bytes) from ``argv``; SystemExit(2)
    with the usage on anything else."""
    opts = {"--socket": "", "--buffer": str(DEFAULT_BUFFER_LINES)}
    opts["--max-queued-bytes"] = str(DEFAULT_MAX_QUEUED_BYTES)
    args = list(argv)
    while args:
        flag = args.pop(0)
        name, eq, value = flag.partition("=")
        if name not in opts or (not eq and not args):
            raise SystemExit(f"{USAGE}\nbgpd.relay: unexpected argument {flag[:64]!r}")
        opts[name] = value if eq else args.pop(0)
    if not opts["--socket"]:
        raise SystemExit(f"{USAGE}\nbgpd.relay: --socket is required")
    try:
        buffer, queued = int(opts["--buffer"]), int(opts["--max-queued-bytes"])
    except ValueError:
        msg = "--buffer and --max-queued-bytes take integers"
        raise SystemExit(f"{USAGE}\nbgpd.relay: {msg}") from None
    if buffer < 0 or queued <= 0:
        raise SystemExit(f"{USAGE}\nbgpd.relay: --buffer >= 0, --max-queued-bytes > 0")
    return opts["--socket"], buffer, queued


def main(argv: Sequence[str] | None = None) -> int:
    path, buffer, queued = parse_args(sys.argv[1:] if argv is None else argv)
    relay = Relay(path, RelayState(max_lines=buffer), queued)
    try:
        relay.run()
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:
        _log("ExaBGP closed its end of the pipe; exiting")
    return 0


if __name__ == "__main__":
    sys.exit(main())
