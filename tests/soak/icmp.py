"""Ping every (source namespace, address) pair of a check at once, from
this process: one raw ICMP socket per source namespace (opened inside it),
an echo request to every destination, replies matched by identifier,
sequence and source address, unanswered ones sent again. A matrix of 24
pods (576 pairs) costs no subprocess and about a second of waiting, where
one ``ip netns exec ping`` per pair cost tens of seconds on a loaded
machine. IPv4 only (the soak's pool is)."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import selectors
import socket
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass

from lab.netns import call_in_netns

ECHO_REQUEST = 8
ECHO_REPLY = 0
PAYLOAD = b"meshroute-soak-probe"


@dataclass(frozen=True)
class Target:
    label: str
    netns: str  # where this pod's probes are sent from
    address: str


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of ``data``."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def echo_request(ident: int, seq: int, payload: bytes = PAYLOAD) -> bytes:
    head = struct.pack("!BBHHH", ECHO_REQUEST, 0, 0, ident, seq)
    return struct.pack("!BBHHH", ECHO_REQUEST, 0, checksum(head + payload), ident, seq) + payload


def parse_echo_reply(packet: bytes) -> tuple[str, int, int] | None:
    """(source address, identifier, sequence) of an IPv4 packet carrying an
    ICMP echo reply with a valid checksum, as a raw socket hands it over
    (IP header first); None for anything else."""
    if len(packet) < 20 or packet[0] >> 4 != 4:
        return None
    ihl = (packet[0] & 0x0F) * 4
    icmp = packet[ihl:]
    if len(icmp) < 8 or icmp[0] != ECHO_REPLY or checksum(icmp) != 0:
        return None
    ident, seq = struct.unpack("!HH", icmp[4:8])
    return socket.inet_ntoa(packet[12:16]), ident, seq


def _open(netns: str) -> socket.socket:
    def make() -> socket.socket:
        return socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)

    s = call_in_netns(netns, make)
    s.setblocking(False)
    return s


def probe_matrix(
    targets: Sequence[Target], *, timeout_s: float = 1.5, resend_s: float = 0.4
) -> frozenset[tuple[str, str]]:
    """Every target pings every target (itself too) from its own
    namespace; the (source, destination) label pairs that answered within
    ``timeout_s``, unanswered requests sent again every ``resend_s``. A
    source whose namespace is gone answers nothing."""
    for t in targets:
        if ipaddress.ip_address(t.address).version != 4:
            raise ValueError(f"{t.label}: {t.address} is not IPv4; the probe speaks ICMPv4 only")
    if len(targets) > 0xFFFF:
        raise ValueError(f"{len(targets)} targets: at most 65535 (the ICMP sequence space)")
    base = int.from_bytes(os.urandom(2), "big")
    sel = selectors.DefaultSelector()
    sockets: dict[int, socket.socket] = {}
    try:
        for i, src in enumerate(targets):
            try:
                s = _open(src.netns)
            except OSError:
                continue  # deleted meanwhile: none of its pairs answers
            sockets[i] = s
            sel.register(s, selectors.EVENT_READ, i)
        want = {(i, j) for i in sockets for j in range(len(targets))}
        ok: set[tuple[int, int]] = set()
        deadline = time.monotonic() + timeout_s
        next_send = 0.0
        while want - ok:
            now = time.monotonic()
            if now >= deadline:
                break
            if now >= next_send:
                for i, j in sorted(want - ok):
                    _send(sockets[i], (base + i) & 0xFFFF, j, targets[j].address)
                next_send = now + resend_s
            for key, _ in sel.select(max(0.0, min(deadline, next_send) - time.monotonic())):
                i = key.data
                ok |= _replies(sockets[i], (base + i) & 0xFFFF, i, targets)
        return frozenset((targets[i].label, targets[j].label) for i, j in ok)
    finally:
        sel.close()
        for s in sockets.values():
            s.close()


def _send(s: socket.socket, ident: int, seq: int, address: str) -> None:
    with contextlib.suppress(OSError):  # no route yet, a full buffer: sent again next round
        s.sendto(echo_request(ident, seq), (address, 0))


def _replies(
    s: socket.socket, ident: int, i: int, targets: Sequence[Target]
) -> set[tuple[int, int]]:
    got = set()
    while True:
        try:
            packet = s.recv(4096)
        except (BlockingIOError, InterruptedError):
            return got
        reply = parse_echo_reply(packet)
        if reply is None:
            continue
        src, rid, seq = reply
        if rid == ident and seq < len(targets) and targets[seq].address == src:
            got.add((i, seq))
