"""The batched system calls of the BFD edge (``bench.mmsg``) against the
stdlib's one-datagram calls, both families, between two test namespaces:

- ``RecvBatch`` reports for each datagram what ``recvmsg`` and
  ``received_meta`` report for the same datagram (read first with
  MSG_PEEK): payload (truncated alike), source, TTL, receive time;
- ``SendBatch`` delivers what ``sendmsg`` with the same ``IP_PKTINFO`` /
  ``IPV6_PKTINFO`` delivers: payloads, source addresses, TTL, in order,
  from its socket's port; a datagram that cannot go out is reported and
  the rest of the batch still goes.

    [ns a] A1, A2 ==== veth ==== B [ns b]
"""

from __future__ import annotations

import errno
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import pytest

from bench.mmsg import RecvBatch, SendBatch, pktinfo, sockaddr
from bgpd.bfd.sockets import ANC_SPACE, TTL, open_receiver, open_sender, received_meta
from lab.netns import Netns, NetnsFactory, veth
from rtnetlink.sockets import in_netns

pytestmark = pytest.mark.netns
PORT = 23784
T = TypeVar("T")
ADDRS = {  # A1, A2, B
    socket.AF_INET: ("198.51.100.1", "198.51.100.3", "198.51.100.2"),
    socket.AF_INET6: ("2001:db8::1", "2001:db8::3", "2001:db8::2"),
}


@dataclass
class Pair:
    a: Netns
    b: Netns
    family: socket.AddressFamily

    @property
    def a1(self) -> str:
        return ADDRS[self.family][0]

    @property
    def a2(self) -> str:
        return ADDRS[self.family][1]

    @property
    def b_addr(self) -> str:
        return ADDRS[self.family][2]

    def in_a(self, fn: Callable[[], T]) -> T:
        return in_netns(self.a.name, fn)

    def in_b(self, fn: Callable[[], T]) -> T:
        return in_netns(self.b.name, fn)


@pytest.fixture(params=[socket.AF_INET, socket.AF_INET6], ids=["ipv4", "ipv6"])
def pair(request: pytest.FixtureRequest, netns: NetnsFactory) -> Pair:
    family = request.param
    a, b = netns.new("mmsga"), netns.new("mmsgb")
    veth(a, "eth0", b, "eth0")
    plen = "24" if family == socket.AF_INET else "64"
    a1, a2, b_addr = ADDRS[family]
    for ns, addrs in ((a, (a1, a2)), (b, (b_addr,))):
        for addr in addrs:
            ns.ip("addr", "add", f"{addr}/{plen}", "dev", "eth0", "nodad")
    return Pair(a, b, family)


def send_plain(p: Pair, datagrams: list[tuple[str, int, bytes]]) -> None:
    """(source in a, TTL, payload) to B:PORT, one ``sendto`` each."""

    def send() -> None:
        for src, ttl, payload in datagrams:
            with socket.socket(p.family, socket.SOCK_DGRAM) as s:
                if p.family == socket.AF_INET:
                    s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
                else:
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, ttl)
                s.bind((src, 0))
                s.sendto(payload, (p.b_addr, PORT))

    p.in_a(send)


def wait_readable(s: socket.socket) -> None:
    deadline = time.monotonic() + 5
    while True:
        try:
            s.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise TimeoutError("nothing arrived in 5 s") from None
            time.sleep(0.001)


def test_each_datagram_reads_as_recvmsg_reads_it(pair: Pair) -> None:
    rx = pair.in_b(lambda: open_receiver(pair.family, PORT))
    one = RecvBatch(pair.family, capacity=1)
    sent = [
        (pair.a1, TTL, bytes(range(24))),
        (pair.a2, TTL, b"\x20"),
        (pair.a1, 64, b"x" * 48),
        (pair.a2, 1, b""),
        (pair.a1, TTL, b"\xff" * 1500),  # truncated to 512 both ways
    ]
    try:
        send_plain(pair, sent)
        for src, ttl, payload in sent:
            wait_readable(rx)
            data, anc, _flags, addr = rx.recvmsg(512, ANC_SPACE, socket.MSG_PEEK)
            want_ttl, want_stamp = received_meta(anc)
            got = one.read(rx.fileno())
            assert got == [(data, socket.inet_pton(pair.family, addr[0]), want_ttl, want_stamp)]
            assert (data, addr[0], want_ttl) == (payload[:512], src, ttl)
            assert want_stamp is not None and abs(want_stamp - time.time()) < 5
        assert one.read(rx.fileno()) == []
    finally:
        rx.close()


def test_a_burst_reads_in_order_across_batches(pair: Pair) -> None:
    rx = pair.in_b(lambda: open_receiver(pair.family, PORT))
    batch = RecvBatch(pair.family, capacity=16)
    sent = [(pair.a1 if i % 3 else pair.a2, TTL, i.to_bytes(24, "big")) for i in range(40)]
    try:
        t0 = time.time()
        send_plain(pair, sent)
        wait_readable(rx)
        got: list[tuple[bytes, bytes | None, int | None, float | None]] = []
        while len(got) < len(sent):
            more = batch.read(rx.fileno())
            assert len(more) <= batch.capacity
            got += more
            if not more:
                time.sleep(0.001)
        assert batch.read(rx.fileno()) == []
        assert [(g[0], g[1], g[2]) for g in got] == [
            (payload, socket.inet_pton(pair.family, src), ttl) for src, ttl, payload in sent
        ]
        stamps = [g[3] for g in got]
        assert all(s is not None and t0 - 1 <= s <= time.time() for s in stamps)
        assert stamps == sorted(stamps)  # type: ignore[type-var]
    finally:
        rx.close()


def pktinfo_cmsg(family: socket.AddressFamily, local: str) -> tuple[int, int, bytes]:
    packed = socket.inet_pton(family, local)
    if family == socket.AF_INET:
        return socket.IPPROTO_IP, 8, bytes(4) + packed + bytes(4)  # IP_PKTINFO
    return socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, packed + bytes(4)


def received_all(rx: socket.socket, n: int) -> list[tuple[bytes, str, int, int | None]]:
    out = []
    while len(out) < n:
        wait_readable(rx)
        data, anc, _flags, addr = rx.recvmsg(512, ANC_SPACE)
        out.append((data, addr[0], addr[1], received_meta(anc)[0]))
    return out


def test_a_batch_sends_what_sendmsg_sends(pair: Pair) -> None:
    fam = pair.family
    rx = pair.in_b(lambda: open_receiver(fam, PORT))
    batched, plain = pair.in_a(lambda: (open_sender(None, fam), open_sender(None, fam)))
    batch = SendBatch(fam, capacity=8)
    wanted = [(pair.a1 if i % 2 else pair.a2, i.to_bytes(24, "big")) for i in range(20)]
    wanted.append((pair.a1, b"short"))
    try:
        # more than one batch's worth: flushed whenever full
        for src, payload in wanted:
            head = batch.head(sockaddr(fam, pair.b_addr, PORT), pktinfo(fam, src))
            if not batch.add(head, payload):
                assert batch.flush(batched.fileno()) == []
                assert batch.add(head, payload)
        assert batch.flush(batched.fileno()) == []
        from_batch = received_all(rx, len(wanted))
        for src, payload in wanted:
            plain.sendmsg([payload], [pktinfo_cmsg(fam, src)], 0, (pair.b_addr, PORT))
        from_plain = received_all(rx, len(wanted))

        def without_port(got: list[tuple[bytes, str, int, int | None]]) -> list[object]:
            return [(d, a, ttl) for d, a, _port, ttl in got]

        assert without_port(from_batch) == without_port(from_plain)
        assert without_port(from_batch) == [(d, s, TTL) for s, d in wanted]
        assert {port for *_, port, _ in from_batch} == {batched.getsockname()[1]}
        assert 49152 <= batched.getsockname()[1] <= 65535
    finally:
        for s in (rx, batched, plain):
            s.close()


def test_a_datagram_that_cannot_go_is_reported_and_the_rest_go(pair: Pair) -> None:
    fam = pair.family
    rx = pair.in_b(lambda: open_receiver(fam, PORT))
    tx = pair.in_a(lambda: open_sender(None, fam))
    batch = SendBatch(fam)
    nowhere = "203.0.113.9" if fam == socket.AF_INET else "2001:db8:ffff::9"  # no route in a
    good = batch.head(sockaddr(fam, pair.b_addr, PORT), pktinfo(fam, pair.a1))
    for i in range(5):
        dest = nowhere if i in (1, 3) else pair.b_addr
        batch.add(batch.head(sockaddr(fam, dest, PORT), pktinfo(fam, pair.a1)), bytes([i]) * 24)
    batch.add(good, b"last")
    try:
        assert batch.flush(tx.fileno()) == [(1, errno.ENETUNREACH), (3, errno.ENETUNREACH)]
        got = [d for d, *_ in received_all(rx, 4)]
        assert got == [bytes([0]) * 24, bytes([2]) * 24, bytes([4]) * 24, b"last"]
        assert batch.flush(tx.fileno()) == []  # emptied by the flush
    finally:
        rx.close()
        tx.close()


def test_a_head_of_the_other_family_is_refused() -> None:
    batch = SendBatch(socket.AF_INET)
    with pytest.raises(ValueError):
        batch.head(sockaddr(socket.AF_INET6, "::1", 1), pktinfo(socket.AF_INET6, None))
