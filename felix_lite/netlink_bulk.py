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

Network namespaces: a socket belongs to the namespace it was created in, for
life. ``netlink_socket(netns=...)`` creates it in a short-lived thread that
first ``setns()``-es into the namespace; the calling process and its other
threads stay where they are. (Running the whole process under
``ip netns exec`` also works: pass ``netns=None``.)
"""

from __future__ import annotations

import ctypes
import errno as errno_mod
import os
import socket
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from felix_lite import netlink_codec as nc

SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
NETLINK_EXT_ACK = 11
NETLINK_GET_STRICT_CHK = 12
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33
CLONE_NEWNET = 0x40000000

OP_ADD = 0  # create only: EEXIST if the key is taken (by anyone)
OP_REPLACE = 1  # create or replace
OP_DELETE = 2  # delete our route (the protocol number must match)

DEFAULT_BATCH_BYTES = 256 * 1024
# Bounded so that a batch in which every message fails still fits in the
# receive buffer: each error costs ~1 KB of buffer accounting (skb truesize).
DEFAULT_BATCH_MSGS = 4096
SNDBUF = 4 * 1024 * 1024
RCVBUF = 16 * 1024 * 1024
RECV_SIZE = 256 * 1024
_SEQ_LIMIT = 2**32 - 1_000_000


class NetlinkChannelError(OSError):
    """The channel itself broke (not one route): the caller should reopen."""


@dataclass(frozen=True, slots=True)
class BulkFailure:
    """Item ``index`` of the applied sequence was refused with ``errno``."""

    index: int
    errno: int
    message: str = ""


def _netns_path(netns: str) -> str:
    return netns if "/" in netns else f"/var/run/netns/{netns}"


def netlink_socket(netns: str | None = None, *, groups: int = 0) -> socket.socket:
    """A bound NETLINK_ROUTE socket in ``netns`` (a name under /var/run/netns
    or a path; None: the caller's namespace)."""
    if netns is None:
        return _new_socket(groups)
    fd = os.open(_netns_path(netns), os.O_RDONLY | os.O_CLOEXEC)
    result: list[socket.socket | BaseException] = []

    def enter_and_open() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.setns(fd, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns into {netns}: {os.strerror(err)}")
            result.append(_new_socket(groups))
        except BaseException as e:  # handed to the caller's thread
            result.append(e)

    try:
        # This thread ends inside the namespace; nothing else ever runs in it.
        t = threading.Thread(target=enter_and_open, name=f"netns-{netns}")
        t.start()
        t.join()
    finally:
        os.close(fd)
    got = result[0]
    if isinstance(got, BaseException):
        raise got
    return got


def _new_socket(groups: int) -> socket.socket:
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 0)
    try:
        s.bind((0, groups))
    except OSError:
        s.close()
        raise
    return s


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
        if self._seq + n >= _SEQ_LIMIT:
            self._seq = 0
        base = self._seq + 1
        self._seq += n
        return base

    def apply(self, ops: Sequence[tuple[int, nc.WireRoute]]) -> list[BulkFailure]:
        """Apply ``(OP_*, route)`` items in order; return one failure per item
        the kernel refused (index into ``ops``). Every other item is applied."""
        failures: list[BulkFailure] = []
        n = len(ops)
        i = 0
        while i < n:
            i = self._send_batch(ops, i, failures)
        return failures

    def _send_batch(
        self, ops: Sequence[tuple[int, nc.WireRoute]], first: int, failures: list[BulkFailure]
    ) -> int:
        """Encode, send and account for one batch starting at ``first``;
        returns the index after its last item."""
        n = len(ops)
        limit = min(n, first + self.batch_msgs)
        base = self._next_seq_block(limit - first)
        buf = bytearray()
        pack_hdr = nc._HDR.pack
        encode_new = nc.encode_route_body
        encode_del = nc.encode_delete_body
        add_flags, rep_flags, del_flags = (
            nc.ADD_ROUTE_FLAGS,
            nc.REPLACE_ROUTE_FLAGS,
            nc.DEL_ROUTE_FLAGS,
        )
        i = first
        last_off = 0
        while i < limit and len(buf) < self.batch_bytes:
            op, route = ops[i]
            if op == OP_DELETE:
                body = encode_del(route)
                mtype, flags = nc.RTM_DELROUTE, del_flags
            else:
                body = encode_new(route)
                mtype, flags = nc.RTM_NEWROUTE, rep_flags if op == OP_REPLACE else add_flags
            last_off = len(buf)
            buf += pack_hdr(nc.HDR_LEN + len(body), mtype, flags, base + i - first, 0)
            buf += body
            i += 1
        nc.set_ack(buf, last_off)
        last_seq = base + i - 1 - first
        try:
            self._sock.send(buf)
        except OSError as e:
            raise NetlinkChannelError(e.errno, f"netlink send: {e.strerror}") from e
        self.batches_sent += 1
        self._collect(base, last_seq, first, failures)
        return i

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
            for mtype, flags, seq, start, end in nc.iter_messages(view):
                if mtype != nc.NLMSG_ERROR or not base <= seq <= last_seq:
                    continue  # not ours (a stale reply from an abandoned batch)
                reply = nc.parse_error(view, seq, flags, start, end)
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
        families: Sequence[int] = (nc.AF_INET, nc.AF_INET6),
    ) -> Iterator[list[nc.WireRoute]]:
        """Stream the routes of ``proto`` (in ``table``; 0: every table), one
        list per kernel dump buffer (a few hundred routes). A dump has its own
        socket, so abandoning the iterator leaves the write socket clean."""
        for family in families:
            yield from self._dump_family(family, proto, table)

    def _dump_family(self, family: int, proto: int, table: int) -> Iterator[list[nc.WireRoute]]:
        s = netlink_socket(self.netns)
        try:
            s.settimeout(self.timeout)
            _try_opt(s, NETLINK_GET_STRICT_CHK)
            _try_opt(s, NETLINK_EXT_ACK)
            seq = self._next_seq_block(1)
            s.send(nc.encode_dump_request(family, seq, proto=proto, table=table))
            rbuf = bytearray(RECV_SIZE)
            parse = nc.parse_route
            newroute = nc.RTM_NEWROUTE
            while True:
                got = s.recv_into(rbuf)
                view = memoryview(rbuf)[:got]
                batch: list[nc.WireRoute] = []
                finished = False
                for mtype, flags, mseq, start, end in nc.iter_messages(view):
                    if mseq != seq:
                        continue
                    if mtype == newroute:
                        r = parse(view, start, end, proto=proto)
                        if r is not None and (not table or r.table == table):
                            batch.append(r)
                    elif mtype == nc.NLMSG_DONE:
                        finished = True
                    elif mtype == nc.NLMSG_ERROR:
                        reply = nc.parse_error(view, mseq, flags, start, end)
                        if reply.error:
                            raise NetlinkChannelError(
                                reply.error, f"route dump: {os.strerror(reply.error)}"
                            )
                        finished = True
                view.release()
                if batch:
                    yield batch
                if finished:
                    return
        finally:
            s.close()

    def dump_all(self, proto: int, table: int = 0) -> Iterator[nc.WireRoute]:
        """``dump`` flattened to one route at a time."""
        for batch in self.dump(proto, table):
            yield from batch
