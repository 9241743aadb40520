"""The floor under the BFD daemon's CPU figure in ``bench.failover``: the
same sockets and packet rates with no BFD at all, from Python.

Between two namespaces, 100 sessions send a 24-byte payload each way at
the daemon's mean rate (one per 50 ms x 0.875, the middle of the jitter
range), each side from one asyncio timer every 5 ms as the daemon's
batched wakeups do (``--wakeup-ms``), its receiver (opened as the daemon's is: TTL and
kernel receive time in ancillary data) read to empty on each wakeup. The
measured side runs on the calling thread, the other on a thread of its own
with its own event loop, and only the calling thread's CPU and its own
packets (sent + received, as the daemon's figure counts them) are counted:
per wakeup it has the daemon's share of packets, so its microseconds per
packet compare with the daemon's. Three ways:

- ``per_packet``: a connected sender per session, one ``send`` per packet
  and one ``recvmsg`` per packet received (what any speaker in Python pays
  with one system call per packet);
- ``mmsg``: one sender per side, the packets due on a wakeup sent in one
  ``sendmmsg`` (each with its session's source address), the receiver read
  with ``recvmmsg`` (``bench.mmsg``);
- ``idle``: the 5 ms timer alone, no packets: what the wakeups cost.

``python -m bench.bfd_floor --json`` builds its own two namespaces (100
address pairs on one veth, as ``bench.failover``'s CPU rig) and runs each
way ``--repeat`` times, rotating which goes first; it reports the medians
of CPU percent of one core and microseconds per packet (user + system,
and system alone), with the samples.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from netaddr import IPAddress

from bench.mmsg import RecvBatch, SendBatch, pktinfo, sockaddr
from bench.report import print_result, require_root
from bgpd.bfd.sockets import ANC_SPACE, close_quietly, open_receiver, open_sender
from lab.netns import Netns, NetnsFactory, veth
from rtnetlink.sockets import in_netns

PORT = 13784  # not BFD's: nothing else in these namespaces answers it
INTERVAL_S = 0.05 * 0.875
WAKEUP_S = 0.005
PAYLOAD = bytes(24)
WAYS = ("per_packet", "mmsg", "idle")


@dataclass(frozen=True)
class Floor:
    cpu_s: float
    sys_s: float
    packets: int
    wall_s: float

    @property
    def cpu_pct(self) -> float:
        return 100 * self.cpu_s / self.wall_s

    @property
    def us_per_packet(self) -> float:
        return 1e6 * self.cpu_s / max(self.packets, 1)

    @property
    def sys_us_per_packet(self) -> float:
        return 1e6 * self.sys_s / max(self.packets, 1)


@dataclass
class _Side:
    send: Callable[[list[int]], int]  # the sessions due: how many went out
    drain: Callable[[], int]  # read the receiver empty: how many came
    socks: list[socket.socket] = field(default_factory=list)
    counted: int = 0

    def close(self) -> None:
        for s in self.socks:
            close_quietly(s)


def address_pairs(netns: NetnsFactory, n: int = 100) -> tuple[Netns, Netns, list[tuple[str, str]]]:
    """Two namespaces on one veth with ``n`` address pairs (one in each)."""
    a, b = netns.new("bfda"), netns.new("bfdb")
    veth(a, "eth0", b, "eth0")
    pairs = [(f"198.18.0.{i}", f"198.18.1.{i}") for i in range(1, n + 1)]
    for ours, theirs in pairs:
        a.ip("addr", "add", f"{ours}/16", "dev", "eth0")
        b.ip("addr", "add", f"{theirs}/16", "dev", "eth0")
    return a, b, pairs


def _per_packet(netns: str, pairs: list[tuple[str, str]]) -> _Side:
    """``pairs`` are (local, peer)."""

    def opened() -> tuple[socket.socket, list[socket.socket]]:
        receiver = open_receiver(socket.AF_INET, PORT)
        senders = []
        for local, peer in pairs:
            s = open_sender(IPAddress(local), socket.AF_INET)
            s.connect((peer, PORT))
            senders.append(s)
        return receiver, senders

    rx, tx = in_netns(netns, opened)

    def drain() -> int:
        n = 0
        while True:
            try:
                rx.recvmsg(512, ANC_SPACE)
            except OSError:
                return n
            n += 1

    def send(due: list[int]) -> int:
        n = 0
        for i in due:
            try:
                tx[i].send(PAYLOAD)
                n += 1
            except OSError:
                pass
        return n

    return _Side(send, drain, [rx, *tx])


def _mmsg(netns: str, pairs: list[tuple[str, str]]) -> _Side:
    rx, tx = in_netns(
        netns, lambda: (open_receiver(socket.AF_INET, PORT), open_sender(None, socket.AF_INET))
    )
    reader, batch = RecvBatch(socket.AF_INET), SendBatch(socket.AF_INET)
    heads = [
        batch.head(sockaddr(socket.AF_INET, peer, PORT), pktinfo(socket.AF_INET, local))
        for local, peer in pairs
    ]
    rx_fd, tx_fd = rx.fileno(), tx.fileno()

    def drain() -> int:
        n = 0
        while True:
            got = len(reader.read(rx_fd))
            n += got
            if got < reader.capacity:
                return n

    def send(due: list[int]) -> int:
        for i in due:
            batch.add(heads[i], PAYLOAD)
        return len(due) - len(batch.flush(tx_fd))

    return _Side(send, drain, [rx, tx])


def _idle(netns: str, pairs: list[tuple[str, str]]) -> _Side:
    return _Side(lambda due: 0, lambda: 0)


SIDES = {"per_packet": _per_packet, "mmsg": _mmsg, "idle": _idle}


def _drive(
    side: _Side, sessions: int, loop: asyncio.AbstractEventLoop, wakeup_s: float
) -> Callable[[], None]:
    """Wake ``side`` every ``wakeup_s`` on ``loop``: send what is due, read
    what came; the function returned stops it."""
    start = loop.time()
    # spread over one interval, as jittered sessions are
    due = [start + INTERVAL_S * i / sessions for i in range(sessions)]
    timer: list[asyncio.TimerHandle] = []

    def wake() -> None:
        now = loop.time()
        ready = [i for i in range(sessions) if due[i] <= now]
        for i in ready:
            due[i] += INTERVAL_S
        side.counted += side.send(ready) + side.drain()
        timer[:] = [loop.call_at(now + wakeup_s, wake)]

    def stop() -> None:
        for h in timer:
            h.cancel()

    wake()
    return stop


def _thread_cpu_s() -> tuple[float, float]:
    """The calling thread's CPU seconds, all and system: the total from the
    scheduler (nanoseconds), the system part from the tick counts."""
    total = int(Path("/proc/thread-self/schedstat").read_text().split()[0]) / 1e9
    fields = Path("/proc/thread-self/stat").read_text().rpartition(")")[2].split()
    return total, int(fields[12]) / os.sysconf("SC_CLK_TCK")


async def measure(
    ns_a: str,
    ns_b: str,
    pairs: list[tuple[str, str]],
    seconds: float,
    way: str = "per_packet",
    wakeup_s: float = WAKEUP_S,
) -> Floor:
    """``pairs`` are (address in ``ns_a``, address in ``ns_b``); the side in
    ``ns_a`` is measured."""
    ours = SIDES[way](ns_a, pairs)
    theirs = SIDES[way](ns_b, [(b, a) for a, b in pairs])
    done = threading.Event()

    async def peer() -> None:
        stop = _drive(theirs, len(pairs), asyncio.get_running_loop(), wakeup_s)
        await asyncio.to_thread(done.wait)
        stop()

    peer_thread = threading.Thread(target=asyncio.run, args=(peer(),), name="bfd-floor-peer")
    peer_thread.start()
    loop = asyncio.get_running_loop()
    stop = _drive(ours, len(pairs), loop, wakeup_s)
    try:
        await asyncio.sleep(1.0)  # settled
        (c0, s0), n0, t0 = _thread_cpu_s(), ours.counted, loop.time()
        await asyncio.sleep(seconds)
        (c1, s1), n1, t1 = _thread_cpu_s(), ours.counted, loop.time()
    finally:
        stop()
        done.set()
        await asyncio.to_thread(peer_thread.join)
        ours.close()
        theirs.close()
    return Floor(c1 - c0, s1 - s0, n1 - n0, t1 - t0)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--repeat", type=int, default=3, help="runs of each way")
    ap.add_argument("--seconds", type=float, default=5.0, help="measured per run")
    ap.add_argument("--wakeup-ms", type=float, default=WAKEUP_S * 1000, help="the timer's period")
    ap.add_argument("--json", action="store_true", help="print only the JSON result")
    args = ap.parse_args(argv)
    require_root("bench.bfd_floor")
    netns = NetnsFactory()
    samples: dict[str, list[Floor]] = {w: [] for w in WAYS}
    load = [round(os.getloadavg()[0], 2)]
    try:
        a, b, pairs = address_pairs(netns)
        for i in range(args.repeat):
            for way in WAYS[i % len(WAYS) :] + WAYS[: i % len(WAYS)]:
                floor = measure(a.name, b.name, pairs, args.seconds, way, args.wakeup_ms / 1000)
                samples[way].append(asyncio.run(floor))
    finally:
        netns.cleanup()
    load.append(round(os.getloadavg()[0], 2))
    result: dict[str, Any] = {"wakeup_ms": args.wakeup_ms, "loadavg_1m": load}
    for way, floors in samples.items():
        result[f"{way}_cpu_pct"] = round(statistics.median(f.cpu_pct for f in floors), 2)
        if way != "idle":
            result[f"{way}_us_per_packet"] = round(
                statistics.median(f.us_per_packet for f in floors), 2
            )
            result[f"{way}_sys_us_per_packet"] = round(
                statistics.median(f.sys_us_per_packet for f in floors), 2
            )
            result[f"{way}_packets_per_s"] = round(
                statistics.median(f.packets / f.wall_s for f in floors)
            )
    result["samples"] = {w: [round(f.cpu_pct, 2) for f in floors] for w, floors in samples.items()}
    print_result(result, args.json)


if __name__ == "__main__":
    main()
