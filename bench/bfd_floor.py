"""The floor under the BFD daemon's CPU figure in ``bench.failover``: the
same sockets and packet rates with no BFD at all, from Python.

Between two namespaces, 100 connected senders on each side send a 24-byte
payload at the daemon's mean rate (one per 50 ms x 0.875, the middle of
the jitter range), from one asyncio timer every 5 ms as the daemon's
batched wakeups do; two receivers, opened as the daemon's are (TTL and
kernel receive time in ancillary data), are read to empty with ``recvmsg``
on each wakeup. One process runs both ends, so each packet is counted
once sent and once received, as the daemon's ``sent + received`` counts
them. What this costs per packet is what any speaker in Python pays with
one system call per packet; the rest of the daemon's figure is BFD.
"""

from __future__ import annotations

import asyncio
import os
import socket
from dataclasses import dataclass

from netaddr import IPAddress

from bench.procstat import cpu_split_s
from bgpd.bfd.sockets import ANC_SPACE, close_quietly, in_netns, open_receiver, open_sender

PORT = 13784  # not BFD's: nothing else in these namespaces answers it
INTERVAL_S = 0.05 * 0.875
WAKEUP_S = 0.005
PAYLOAD = bytes(24)


@dataclass(frozen=True)
class Floor:
    us_per_packet: float
    sys_us_per_packet: float
    packets: int


def _side(netns: str, pairs: list[tuple[str, str]]) -> tuple[socket.socket, list[socket.socket]]:
    def opened() -> tuple[socket.socket, list[socket.socket]]:
        receiver = open_receiver(socket.AF_INET, PORT)
        senders = []
        for local, peer in pairs:
            s = open_sender(IPAddress(local), socket.AF_INET)
            s.connect((peer, PORT))
            senders.append(s)
        return receiver, senders

    return in_netns(netns, opened)


async def measure(ns_a: str, ns_b: str, pairs: list[tuple[str, str]], seconds: float) -> Floor:
    """``pairs`` are (address in ``ns_a``, address in ``ns_b``)."""
    rx_a, tx_a = _side(ns_a, pairs)
    rx_b, tx_b = _side(ns_b, [(b, a) for a, b in pairs])
    senders = tx_a + tx_b
    receivers = [rx_a, rx_b]
    loop = asyncio.get_running_loop()
    start = loop.time()
    # spread over one interval, as jittered sessions are
    due = [start + INTERVAL_S * i / len(senders) for i in range(len(senders))]
    counted = [0]
    timer: list[asyncio.TimerHandle] = []

    def wake() -> None:
        now = loop.time()
        for i, s in enumerate(senders):
            if due[i] <= now:
                try:
                    s.send(PAYLOAD)
                    counted[0] += 1
                except OSError:
                    pass
                due[i] += INTERVAL_S
        for r in receivers:
            while True:
                try:
                    r.recvmsg(512, ANC_SPACE)
                except OSError:
                    break
                counted[0] += 1
        timer[:] = [loop.call_at(now + WAKEUP_S, wake)]

    try:
        wake()
        await asyncio.sleep(1.0)  # settled
        (u0, s0), n0 = cpu_split_s([os.getpid()]), counted[0]
        await asyncio.sleep(seconds)
        (u1, s1), n1 = cpu_split_s([os.getpid()]), counted[0]
    finally:
        for h in timer:
            h.cancel()
        for s in (*senders, *receivers):
            close_quietly(s)
    n = max(n1 - n0, 1)
    return Floor(1e6 * ((u1 - u0) + (s1 - s0)) / n, 1e6 * (s1 - s0) / n, n)
