"""The BFD speaker when its event loop lags (a loaded host, a long
callback): the engine goes on taking the peer's quiet packets, and a packet
that waited in the engine's queue meanwhile must not move the detection
time back to when it came. The peer is this test, on a socket in a second
namespace, so it can send exactly what a peer in a Poll Sequence sends.

    [ns n] 192.0.2.1 ==== veth ==== 192.0.2.2 [ns r]
    BfdSpeaker                      the test's socket
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from netaddr import IPAddress

from bgpd.bfd.packet import ControlPacket, State, decode, encode
from bgpd.bfd.session import Timers
from bgpd.bfd.sockets import SINGLE_HOP_PORT, TTL, close_quietly
from bgpd.bfd.speaker import BfdChange, BfdSpeaker, PeerSpec
from lab.netns import Netns, NetnsFactory, veth
from rtnetlink.sockets import in_netns

pytestmark = pytest.mark.netns
N_IP, R_IP = "192.0.2.1", "192.0.2.2"
THEIRS = 0x5EED
TX_US = 50_000  # both ends: detection time 150 ms


@dataclass
class Peer:
    ns: Netns
    sock: socket.socket
    ours: int = 0  # the speaker's discriminator, from its first packet

    def send(self, state: State, *, poll: bool = False) -> None:
        p = ControlPacket(state, 3, THEIRS, self.ours, TX_US, TX_US, poll=poll)
        self.sock.sendto(encode(p), (N_IP, SINGLE_HOP_PORT))

    def heard(self) -> ControlPacket:
        return decode(self.sock.recv(512))


@pytest.fixture
async def rig(netns: NetnsFactory) -> AsyncIterator[tuple[BfdSpeaker, Peer, list[BfdChange]]]:
    n, r = netns.new("bfdlagn"), netns.new("bfdlagr")
    veth(n, "eth0", r, "eth0")
    n.ip("addr", "add", f"{N_IP}/30", "dev", "eth0")
    r.ip("addr", "add", f"{R_IP}/30", "dev", "eth0")

    def peer_socket() -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, TTL)
        s.bind((R_IP, SINGLE_HOP_PORT))
        s.settimeout(5)
        return s

    changes: list[BfdChange] = []
    speaker = BfdSpeaker(netns=n.name, on_change=changes.append)
    await speaker.start()
    peer = Peer(r, in_netns(r.name, peer_socket))
    try:
        yield speaker, peer, changes
    finally:
        await speaker.stop()
        close_quietly(peer.sock)


async def test_a_packet_that_waited_does_not_move_the_detection_time_back(
    rig: tuple[BfdSpeaker, Peer, list[BfdChange]],
) -> None:
    speaker, peer, changes = rig
    speaker.set_sessions(
        [PeerSpec(IPAddress(R_IP), Timers(TX_US, TX_US, 3), local=IPAddress(N_IP))]
    )
    peer.ours = (await asyncio.to_thread(peer.heard)).my_disc
    # Down -> Up through Init, then the steady packets that tell it nothing new
    peer.send(State.INIT)
    deadline = time.monotonic() + 5
    while speaker.state_of(IPAddress(R_IP)) is not State.UP:
        assert time.monotonic() < deadline, "the session never came Up"
        peer.send(State.UP)
        await asyncio.sleep(0.03)
    stop = threading.Event()

    def steady() -> None:
        while not stop.is_set():
            peer.send(State.UP)
            time.sleep(0.03)

    for _ in range(10):  # the speaker answers any Poll; the engine takes the rest
        peer.send(State.UP)
        await asyncio.sleep(0.03)
    sender = threading.Thread(target=steady)
    sender.start()
    try:
        since = len(changes)
        # A Poll (never quiet) reaches the engine's queue, and the loop
        # stalls for 2.5 detection times while the steady packets go on.
        peer.send(State.UP, poll=True)
        time.sleep(0.4)  # noqa: ASYNC251 - the stall is the point
        await asyncio.sleep(0.5)
        assert changes[since:] == []
        assert speaker.state_of(IPAddress(R_IP)) is State.UP
    finally:
        stop.set()
        sender.join()
