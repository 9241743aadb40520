"""The fast netlink path: many route messages per send(), errors attributed.

This module owns one NETLINK_ROUTE socket per ``BulkRoutes`` and the rules
that make bulk route programming fast and still exact:

- Messages are packed back to back into batches of a few hundred KB and sent
  with one ``send()``. The kernel handles a netlink send synchronously in the
  sender's context, so when ``send()`` returns every message has been acted on.
- NLM_F_ACK is set only on the last message of a batch. The kernel answers a
  failed message with an NLMSG_ERROR whether or not it asked for an ACK, so
  the only reply to expect for a clean batch is that one ACK; when it
  arrives, every error of the batch is already queued ahead of it.
- Every message has its own sequence number; an NLMSG_ERROR carries the
  sequence number of the message it answers, which maps back to the item.
- NETLINK_CAP_ACK keeps errors small (no echo of the request), and
  NETLINK_EXT_ACK adds the kernel's reason text. The receive buffer is
  forced large (SO_RCVBUFFORCE) so a batch where every item fails still fits;
  should it overflow anyway (ENOBUFS), the items of that batch that were not
  answered are reported as failed with ENOBUFS, never silently as applied.

Reading routes back (``dump``) streams: each ``recv()`` buffer is parsed and
its routes yielded before the next is read, filtered by protocol in the
kernel (NETLINK_GET_STRICT_CHK) and again here, so memory stays flat however
many routes there are.

The socket is ``rtnetlink.sockets.netlink_socket``'s, in the namespace
``netns`` names (None: the caller's); the messages ``rtnetlink.routes``'
(``netlink_routes.RouteEncoder``'s on the hot path).
"""

from __future__ import annotations

import errno as errno_mod
import os
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from itertools import repeat
from typing import TypeVar

from rtnetlink import routes as nr
from rtnetlink import wire as nw
from rtnetlink.sockets import (
    NETLINK_CAP_ACK,
    NETLINK_EXT_ACK,
    NETLINK_GET_STRICT_CHK,
    SO_RCVBUFFORCE,
    SO_SNDBUFFORCE,
    SOL_NETLINK,
    netlink_socket,
)

T = TypeVar("T")

OP_ADD = 0  # create only: EEXIST if the key is taken (by anyone)
OP_REPLACE = 1  # create or replace
OP_DELETE = 2  # delete our route (the protocol number must match)
_KINDS = {  # message type and flags of each
    OP_ADD: (nr.RTM_NEWROUTE, nr.ADD_ROUTE_FLAGS),
    OP_REPLACE: (nr.RTM_NEWROUTE, nr.REPLACE_ROUTE_FLAGS),
    OP_DELETE: (nr.RTM_DELROUTE, nr.DEL_ROUTE_FLAGS),
}

DEFAULT_BATCH_BYTES = 256 * 1024
# Bounded so that a batch in which every message fails still fits in the
# receive buffer: each error costs ~1 KB of buffer accounting (skb truesize).
DEFAULT_BATCH_MSGS = 4096
SNDBUF = 4 * 1024 * 1024
RCVBUF = 16 * 1024 * 1024
RECV_SIZE = 256 * 1024
_SEQ_LIMIT = 2**32 - 1_000_000


@dataclass(frozen=True, slots=True)
class Frames:
    """Route messages framed back to back for one ``send()``: sequence
    numbers ``base`` .. ``base + count - 1`` for items ``first`` ..
    ``first + count - 1`` of what was framed; only the last asks for an ACK."""

    data: bytes
    base: int
    first: int
    count: int


class NetlinkChannelError(OSError):
    """The channel itself broke (not one route): the caller should reopen."""


@dataclass(frozen=True, slots=True)
class BulkFailure:
    """Item ``index`` of the applied sequence was refused with ``errno``."""

    index: int
    errno: int
    message: str = ""


def _force_buffer(s: socket.socket, force_opt: int, opt: int, size: int) -> None:
    try:
        s.setsockopt(socket.SOL_SOCKET, force_opt, size)
    except OSError:  # no CAP_NET_ADMIN: take what rmem_max/wmem_max allow
        s.setsockopt(socket.SOL_SOCKET, opt, size)


def _try_opt(s: socket.socket, opt: int) -> bool:
    try:
        s.setsockopt(SOL_NETLINK, opt, 1)
    except OSError:
        return False
    return True


def tune_bulk_socket(s: socket.socket) -> None:
    _force_buffer(s, SO_SNDBUFFORCE, socket.SO_SNDBUF, SNDBUF)
    _force_buffer(s, SO_RCVBUFFORCE, socket.SO_RCVBUF, RCVBUF)
    _try_opt(s, NETLINK_CAP_ACK)
    _try_opt(s, NETLINK_EXT_ACK)


class BulkRoutes:
    """Route writes and dumps over raw rtnetlink. Not thread-safe: one caller
    at a time (``netlink_table`` serialises through its worker thread)."""

    def __init__(
        self,
        netns: str | None = None,
        *,
        batch_bytes: int = DEFAULT_BATCH_BYTES,
        batch_msgs: int = DEFAULT_BATCH_MSGS,
        timeout: float = 30.0,
    ) -> None:
        self.netns = netns
        self.batch_bytes = batch_bytes
        self.batch_msgs = batch_msgs
        self.timeout = timeout
        self._sock = netlink_socket(netns)
        self._sock.settimeout(timeout)
        tune_bulk_socket(self._sock)
        self._seq = 0
        self._seq_lock = threading.Lock()  # frame() runs on any thread
        self._rbuf = bytearray(RECV_SIZE)
        self.batches_sent = 0

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> BulkRoutes:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------- writes

    def _next_seq_block(self, n: int) -> int:
        with self._seq_lock:
            if self._seq + n >= _SEQ_LIMIT:
                self._seq = 0
            base = self._seq + 1
            self._seq += n
            return base

    def apply(self, ops: Sequence[tuple[int, nr.WireRoute]]) -> list[BulkFailure]:
        """Apply ``(OP_*, route)`` items in order; return one failure per item
        the kernel refused (index into ``ops``). Every other item is applied."""
        encode_new = nr.encode_route_body
        encode_del = nr.encode_delete_body
        return self.apply_encoded(
            [(op, encode_del(r) if op == OP_DELETE else encode_new(r)) for op, r in ops]
        )

    def apply_encoded(self, items: Sequence[tuple[int, bytes]]) -> list[BulkFailure]:
        """``apply`` for message bodies already encoded (rtmsg + attributes,
        see ``netlink_routes.RouteEncoder``)."""
        return self.send_frames(self.frame([op for op, _ in items], [b for _, b in items]))

    def frame(self, ops: Sequence[int], bodies: Sequence[bytes]) -> list[Frames]:
        """Frame items (``ops[i]``, one of OP_*, with message body
        ``bodies[i]``) into sends (for ``send_frames``).
        Needs no socket, so any thread may call it: a caller that frames
        the next batch while the socket's thread sends the last one keeps
        the kernel busy, and that thread needs the GIL only between sends."""
        lengths = set(map(len, bodies))
        if len(lengths) == 1 and len(set(ops)) == 1 and not lengths.pop() & 3:
            return self._frame_alike(ops[0], bodies)
        frames: list[Frames] = []
        n = len(bodies)
        i = 0
        kinds = _KINDS
        pack_hdr = nw.HDR.pack
        hdr_len = nw.HDR_LEN
        batch_bytes = self.batch_bytes
        while i < n:
            first = i
            limit = min(n, first + self.batch_msgs)
            # a block as big as the batch may be: seqs a batch leaves unused
            # are only a gap
            base = seq = self._next_seq_block(limit - first)
            parts: list[bytes] = []
            size = 0
            mtype = flags = 0
            while i < limit and size < batch_bytes:
                body = bodies[i]
                mtype, flags = kinds[ops[i]]
                blen = len(body)
                if blen & 3:  # route bodies never need it; keep the next header aligned
                    body += bytes(4 - (blen & 3))
                    blen = len(body)
                parts += (pack_hdr(hdr_len + blen, mtype, flags, seq, 0), body)
                size += hdr_len + blen
                i += 1
                seq += 1
            # only the last message asks for an ACK (see the module docstring)
            last_len = hdr_len + len(parts[-1])
            parts[-2] = pack_hdr(last_len, mtype, flags | nw.NLM_F_ACK, seq - 1, 0)
            frames.append(Frames(b"".join(parts), base, first, i - first))
        return frames

    def _frame_alike(self, op: int, bodies: Sequence[bytes]) -> list[Frames]:
        """``frame`` for items of one kind whose bodies have one aligned
        length (one shape of route: nearly every batch), cut where ``frame``
        cuts, the headers packed and interleaved with the bodies by C loops."""
        mtype, flags = _KINDS[op]
        mlen = nw.HDR_LEN + len(bodies[0])
        per = min(self.batch_msgs, -(-self.batch_bytes // mlen))
        header = partial(nw.HDR.pack, mlen, mtype, flags)
        frames: list[Frames] = []
        for first in range(0, len(bodies), per):
            count = min(per, len(bodies) - first)
            base = self._next_seq_block(count)
            parts = [b""] * (2 * count)
            parts[0::2] = map(header, range(base, base + count), repeat(0, count))
            parts[-2] = nw.HDR.pack(mlen, mtype, flags | nw.NLM_F_ACK, base + count - 1, 0)
            parts[1::2] = bodies[first : first + count]
            frames.append(Frames(b"".join(parts), base, first, count))
        return frames

    def send_frames(self, frames: Sequence[Frames]) -> list[BulkFailure]:
        """Send what ``frame`` made, one ``send()`` a frame, in order; return
        one failure per item the kernel refused (its index in the items
        framed)."""
        failures: list[BulkFailure] = []
        for f in frames:
            try:
                self._sock.send(f.data)
            except OSError as e:
                raise NetlinkChannelError(e.errno, f"netlink send: {e.strerror}") from e
            self.batches_sent += 1
            self._collect(f.base, f.base + f.count - 1, f.first, failures)
        return failures

    def _collect(self, base: int, last_seq: int, first: int, failures: list[BulkFailure]) -> None:
        """Read replies until the ACK of ``last_seq``; record every error."""
        answered: set[int] = set()
        rbuf = self._rbuf
        while True:
            try:
                got = self._sock.recv_into(rbuf)
            except OSError as e:
                if e.errno != errno_mod.ENOBUFS:
                    raise NetlinkChannelError(e.errno, f"netlink recv: {e.strerror}") from e
                # Replies were dropped: we cannot tell which items succeeded.
                for seq in range(base, last_seq + 1):
                    if seq not in answered:
                        failures.append(
                            BulkFailure(first + seq - base, errno_mod.ENOBUFS, "reply lost")
                        )
                self._drain()
                return
            view = memoryview(rbuf)[:got]
            done = False
            for mtype, flags, seq, start, end in nw.iter_messages(view):
                if mtype != nw.NLMSG_ERROR or not base <= seq <= last_seq:
                    continue  # not ours (a stale reply from an abandoned batch)
                reply = nw.parse_error(view, seq, flags, start, end)
                answered.add(seq)
                if reply.error:
                    failures.append(BulkFailure(first + seq - base, reply.error, reply.message))
                if seq == last_seq:
                    done = True
            view.release()
            if done:
                return

    def _drain(self) -> None:
        self._sock.setblocking(False)
        try:
            while True:
                self._sock.recv_into(self._rbuf)
        except (BlockingIOError, OSError):
            pass
        finally:
            self._sock.settimeout(self.timeout)

    # -------------------------------------------------------------- reads

    def dump(
        self,
        proto: int,
        table: int = 0,
        families: Sequence[int] = (nw.AF_INET, nw.AF_INET6),
    ) -> Iterator[list[nr.WireRoute]]:
        """Stream the routes of ``proto`` (in ``table``; 0: every table), one
        list per kernel dump buffer (a few hundred routes)."""

        def parse(buf: bytes, start: int, end: int) -> nr.WireRoute | None:
            r = nr.parse_route(buf, start, end, proto=proto)
            return r if r is not None and (not table or r.table == table) else None

        return self.dump_parsed(parse, proto, table, families)

    def dump_parsed(
        self,
        parse: Callable[[bytes, int, int], T | None],
        proto: int,
        table: int = 0,
        families: Sequence[int] = (nw.AF_INET, nw.AF_INET6),
    ) -> Iterator[list[T]]:
        """``dump`` with the caller's parser (``parse(buf, start, end)``, None
        to skip); it must check the protocol and table itself, as ``dump``
        does, for kernels without strict dump filtering. A dump has its own socket,
        so abandoning the iterator leaves the write socket clean."""
        for family in families:
            yield from self._dump_family(parse, family, proto, table)

    def _dump_family(
        self, parse: Callable[[bytes, int, int], T | None], family: int, proto: int, table: int
    ) -> Iterator[list[T]]:
        s = netlink_socket(self.netns)
        try:
            s.settimeout(self.timeout)
            _try_opt(s, NETLINK_GET_STRICT_CHK)
            _try_opt(s, NETLINK_EXT_ACK)
            seq = self._next_seq_block(1)
            s.send(nr.encode_dump_request(family, seq, proto=proto, table=table))
            newroute = nr.RTM_NEWROUTE
            while True:
                data = s.recv(RECV_SIZE)
                batch: list[T] = []
                finished = False
                for mtype, flags, mseq, start, end in nw.iter_messages(data):
                    if mseq != seq:
                        continue
                    if mtype == newroute:
                        r = parse(data, start, end)
                        if r is not None:
                            batch.append(r)
                    elif mtype == nw.NLMSG_DONE:
                        finished = True
                    elif mtype == nw.NLMSG_ERROR:
                        reply = nw.parse_error(data, mseq, flags, start, end)
                        if reply.error:
                            raise NetlinkChannelError(
                                reply.error, f"route dump: {os.strerror(reply.error)}"
                            )
                        finished = True
                if batch:
                    yield batch
                if finished:
                    return
        finally:
            s.close()

    def dump_all(self, proto: int, table: int = 0) -> Iterator[nr.WireRoute]:
        """``dump`` flattened to one route at a time (table 0: all tables)."""
        for batch in self.dump(proto, table):
            yield from batch
