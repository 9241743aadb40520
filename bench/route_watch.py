"""A receiver's-eye clock for ``bench.churn``, run inside the receiver's
network namespace (``ip netns exec NS python -S -I route_watch.py ...``):
standard library only, so it starts at once and both receivers are watched
by the same code.

It prints one line per event, stamped with ``time.monotonic()`` (one clock
for every process on the machine):

- ``update T``: a BGP UPDATE from ``PEER`` reached ``IFNAME`` (a packet
  socket sees it before the receiver's TCP stack does);
- ``new T`` / ``del T``: the kernel added (or replaced) / deleted the route
  to ``PREFIX`` (an rtnetlink notification);
- ``gone T``: the kernel has deleted ``COUNT`` routes of protocol ``PROTO``
  since ``count`` was written to our stdin (``count`` answers ``counting``);
- ``lost T``: notifications were lost (the socket overflowed): the counts
  from then on are wrong, and the bench falls back to reading the table.

Arguments: ``IFNAME PEER PREFIX PROTO COUNT``.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
import sys
import time

ETH_P_IP = 0x0800
RTNLGRP_IPV4_ROUTE = 7
RTM_NEWROUTE, RTM_DELROUTE = 24, 25
RTA_DST = 1
SO_RCVBUFFORCE = 33
BGP_UPDATE = 2
MARKER = b"\xff" * 16
NLMSG = struct.Struct("=IHHII")
RTMSG = struct.Struct("=BBBBBBBBI")
RTATTR = struct.Struct("=HH")


def bgp_update_in(packet: bytes, peer: bytes) -> bool:
    """True when this IPv4 packet from ``peer`` carries a BGP UPDATE."""
    if len(packet) < 20 or packet[9] != socket.IPPROTO_TCP or packet[12:16] != peer:
        return False
    ihl = (packet[0] & 0x0F) * 4
    if len(packet) < ihl + 20:
        return False
    payload = packet[ihl + (packet[ihl + 12] >> 4) * 4 :]
    while len(payload) >= 19 and payload[:16] == MARKER:
        if payload[18] == BGP_UPDATE:
            return True
        (length,) = struct.unpack_from("!H", payload, 16)
        if length < 19:
            return False
        payload = payload[length:]
    return False


def route_events(data: bytes, dst: bytes, dst_len: int, proto: int) -> tuple[list[str], int]:
    """(``new``/``del`` for ``dst``/``dst_len``, deletes of protocol ``proto``)."""
    events: list[str] = []
    deletes = 0
    off = 0
    while off + NLMSG.size <= len(data):
        length, mtype, _flags, _seq, _pid = NLMSG.unpack_from(data, off)
        if length < NLMSG.size:
            break
        if mtype in (RTM_NEWROUTE, RTM_DELROUTE):
            body = off + NLMSG.size
            _fam, rlen, _s, _t, _tb, rproto, _sc, _ty, _fl = RTMSG.unpack_from(data, body)
            if mtype == RTM_DELROUTE and rproto == proto:
                deletes += 1
            if rlen == dst_len:
                a = body + RTMSG.size
                end = off + length
                while a + RTATTR.size <= end:
                    alen, atype = RTATTR.unpack_from(data, a)
                    if alen < RTATTR.size:
                        break
                    if atype == RTA_DST and data[a + 4 : a + alen] == dst:
                        events.append("new" if mtype == RTM_NEWROUTE else "del")
                        break
                    a += (alen + 3) & ~3
        off += (length + 3) & ~3
    return events, deletes


def main() -> None:
    ifname, peer, prefix, proto, count = sys.argv[1:6]
    net, plen = prefix.split("/")
    dst, dst_len = socket.inet_aton(net), int(plen)
    peer_b, want_gone = socket.inet_aton(peer), int(count)
    pkt = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_IP))
    pkt.bind((ifname, ETH_P_IP))
    nl = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    nl.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 64 << 20)
    nl.bind((0, 1 << (RTNLGRP_IPV4_ROUTE - 1)))
    stdin = sys.stdin.fileno()
    out = sys.stdout
    out.write("ready\n")
    out.flush()
    counting, deleted = False, 0
    while True:
        readable, _, _ = select.select([pkt, nl, stdin], [], [])
        now = time.monotonic()
        lines = []
        if pkt in readable:
            while True:
                try:
                    packet = pkt.recv(65535, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    break
                if bgp_update_in(packet, peer_b):
                    lines.append(f"update {now}")
        if nl in readable:
            while True:
                try:
                    data = nl.recv(1 << 20, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    break
                except OSError as e:
                    if e.errno != errno.ENOBUFS:
                        raise
                    lines.append(f"lost {now}")
                    continue
                events, deletes = route_events(data, dst, dst_len, int(proto))
                lines += [f"{e} {now}" for e in events]
                if counting:
                    deleted += deletes
                    if deleted >= want_gone:
                        lines.append(f"gone {now}")
                        counting = False
        if stdin in readable:
            command = os.read(stdin, 4096)
            if not command:
                return
            if b"count" in command:
                counting, deleted = True, 0
                lines.append("counting")
        if lines:
            out.write("\n".join(lines) + "\n")
            out.flush()


if __name__ == "__main__":
    main()
