"""``RtnlClient``: a small synchronous rtnetlink client, one request at a time.

This module owns the socket and the exchange for the node's few non-route
kernel operations (links, addresses, neighbours and FDB entries, and the
odd single route), which ``ipam.pod_link``, ``felix_lite.tunnels`` and
``felix_lite.netlink_table`` need. The bytes are ``links``', ``attrs``',
``routes``' and ``wire``'s. Every request asks for an ACK
and waits for the answer to its own sequence number (replies to another
are dropped), so one call is one kernel operation whose outcome is known;
a refusal raises ``OSError`` with the kernel's errno and, where the kernel
gave one, its extended-ack reason. Route programming in bulk is
``felix_lite.netlink_bulk``'s.

The socket lives in the namespace the client was opened in (``netns``:
see ``sockets.netlink_socket``; None: the calling thread's). Not
thread-safe: one caller at a time.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from collections.abc import Callable
from typing import TypeVar

from rtnetlink import attrs as na
from rtnetlink import links as nl
from rtnetlink import routes as nr
from rtnetlink import wire as nw
from rtnetlink.sockets import (
    NETLINK_CAP_ACK,
    NETLINK_EXT_ACK,
    NETLINK_GET_STRICT_CHK,
    SOL_NETLINK,
    netlink_socket,
)

T = TypeVar("T")
RECV_SIZE = 256 * 1024
_SEQ_LIMIT = 2**31
# dump requests: the header with only the family set (AF_UNSPEC: both)

CREATE = nw.NLM_F_CREATE | nw.NLM_F_EXCL
REPLACE = nw.NLM_F_CREATE | nw.NLM_F_REPLACE


def _skip(_mtype: int, _buf: bytes, _start: int, _end: int) -> None:
    return None


class RtnlClient:
    def __init__(self, netns: str | None = None, *, timeout: float = 30.0) -> None:
        self._sock = netlink_socket(netns)
        self._sock.settimeout(timeout)
        for opt in (NETLINK_CAP_ACK, NETLINK_EXT_ACK, NETLINK_GET_STRICT_CHK):
            # older kernels: full echoes, errors without a reason, dumps
            # unfiltered (``routes`` filters again)
            with contextlib.suppress(OSError):
                self._sock.setsockopt(SOL_NETLINK, opt, 1)
        self._seq = 0

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> RtnlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------- the exchange

    def _exchange(
        self,
        mtype: int,
        flags: int,
        body: bytes,
        what: str,
        parse: Callable[[int, bytes, int, int], T | None],
    ) -> list[T]:
        """Send one request and read every reply to it (until its ACK, or
        NLMSG_DONE for a dump); ``parse`` turns each data message into a
        result (None: skip it)."""
        self._seq = self._seq % _SEQ_LIMIT + 1
        seq = self._seq
        self._sock.send(nw.frame(mtype, flags | nw.NLM_F_REQUEST | nw.NLM_F_ACK, seq, body))
        out: list[T] = []
        while True:
            data = self._sock.recv(RECV_SIZE)
            for rtype, rflags, rseq, start, end in nw.iter_messages(data):
                if rseq != seq:
                    continue  # an answer to a request abandoned by an exception
                if rtype == nw.NLMSG_ERROR:
                    reply = nw.parse_error(data, rseq, rflags, start, end)
                    if reply.error:
                        raise _refusal(reply.error, reply.message, what)
                    return out
                if rtype == nw.NLMSG_DONE:
                    (err,) = nw.ERRNO.unpack_from(data, start) if end - start >= 4 else (0,)
                    if err < 0:
                        raise _refusal(-err, "", what)
                    return out
                got = parse(rtype, data, start, end)
                if got is not None:
                    out.append(got)

    def _do(self, mtype: int, flags: int, body: bytes, what: str) -> None:
        self._exchange(mtype, flags, body, what, _skip)

    def _dump(
        self, mtype: int, body: bytes, what: str, parse: Callable[[bytes, int, int], T | None]
    ) -> list[T]:
        return self._exchange(
            mtype, nw.NLM_F_DUMP, body, what, lambda _t, buf, s, e: parse(buf, s, e)
        )

    # -------------------------------------------------------------- links

    def link(self, name: str) -> nl.LinkDetail | None:
        """The link called ``name``, or None."""
        try:
            found = self._exchange(
                nl.RTM_GETLINK,
                0,
                nl.get_by_name_body(name),
                f"link get {name}",
                lambda t, buf, s, e: (
                    nl.parse_link_detail(buf, s, e) if t == nl.RTM_NEWLINK else None
                ),
            )
        except OSError as e:
            if e.errno == errno.ENODEV:
                return None
            raise
        return found[0] if found else None

    def link_index(self, name: str) -> int | None:
        link = self.link(name)
        return link.index if link is not None else None

    def links(self) -> list[nl.LinkDetail]:
        return self._dump(nl.RTM_GETLINK, nl.dump_body(), "link dump", nl.parse_link_detail)

    def link_create(self, body: bytes, what: str) -> None:
        """A link made by one of ``links``' ``*_body`` functions;
        EEXIST when the name is taken."""
        self._do(nl.RTM_NEWLINK, CREATE, body, what)

    def link_set_up(self, index: int, up: bool) -> None:
        self._do(nl.RTM_NEWLINK, 0, nl.set_up_body(index, up), f"link set {index} up={up}")

    def link_set_mtu(self, index: int, mtu: int) -> None:
        self._do(nl.RTM_NEWLINK, 0, nl.set_mtu_body(index, mtu), f"link set {index} mtu {mtu}")

    def link_set_address(self, index: int, mac: str) -> None:
        self._do(nl.RTM_NEWLINK, 0, nl.set_address_body(index, mac), f"link set {index} {mac}")

    def link_set_alias(self, index: int, alias: str) -> None:
        self._do(nl.RTM_NEWLINK, 0, nl.set_alias_body(index, alias), f"link set {index} alias")

    def link_delete(self, index: int) -> None:
        self._do(nl.RTM_DELLINK, 0, nl.del_body(index), f"link del {index}")

    # ---------------------------------------------------------- addresses

    def addr_add(self, index: int, address: str, prefixlen: int, *, flags: int = 0) -> None:
        body = na.addr_body(index, address, prefixlen, flags=flags)
        self._do(na.RTM_NEWADDR, CREATE, body, f"addr add {address}/{prefixlen} dev {index}")

    def addr_delete(self, index: int, address: str, prefixlen: int) -> None:
        body = na.addr_body(index, address, prefixlen)
        self._do(na.RTM_DELADDR, 0, body, f"addr del {address}/{prefixlen} dev {index}")

    def addresses(self) -> list[nw.WireAddress]:
        """Every address of every link (of both families)."""
        body = nw.IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
        return self._dump(nw.RTM_GETADDR, body, "address dump", nw.parse_addr)

    # --------------------------------------------------------- neighbours

    def neigh_replace(self, body: bytes, what: str) -> None:
        """Create or replace a neighbour / FDB entry (``attrs.neigh_body``)."""
        self._do(na.RTM_NEWNEIGH, REPLACE, body, what)

    def neigh_delete(self, body: bytes, what: str) -> None:
        self._do(na.RTM_DELNEIGH, 0, body, what)

    def neighbours(self, family: int) -> list[na.WireNeighbour]:
        """Every neighbour of ``family`` (AF_BRIDGE: the FDB), of every link."""
        return self._dump(
            na.RTM_GETNEIGH, na.neigh_dump_body(family), "neighbour dump", na.parse_neigh
        )

    # ------------------------------------------------------------- routes

    def route_replace(self, route: nr.WireRoute) -> None:
        self._do(
            nr.RTM_NEWROUTE,
            REPLACE,
            nr.encode_route_body(route),
            f"route replace {route.dst}/{route.dst_len}",
        )

    def routes(self, family: int, oif: int) -> list[nr.WireRoute]:
        """The routes of ``family`` out of link ``oif``, of every table and
        protocol. The kernel filters by device (a node's table holds its
        peers' 100k routes too); where it cannot, this does."""
        body = nr.RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0) + na.attr_u32(nr.RTA_OIF, oif)
        found = self._dump(nr.RTM_GETROUTE, body, "route dump", nr.parse_route)
        return [r for r in found if r.oif == oif]


def _refusal(err: int, reason: str, what: str) -> OSError:
    text = f"{what}: {os.strerror(err)}" + (f" ({reason})" if reason else "")
    return OSError(err, text)
