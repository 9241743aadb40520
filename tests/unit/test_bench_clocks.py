"""The clocks of bench.churn and bench.bgp_ingest that parse bytes: the
route watcher's BGP UPDATE and rtnetlink recognisers, and the ExaBGP floor's
configuration (the node's, with only the API process swapped)."""

from __future__ import annotations

import socket
import struct
from pathlib import Path

import pytest

from bench.exabgp_floor import READER, floor_config
from bench.route_watch import RTM_DELROUTE, RTM_NEWROUTE, bgp_update_in, route_events

PEER = socket.inet_aton("192.0.2.1")


def bgp(mtype: int, body: bytes = b"") -> bytes:
    return b"\xff" * 16 + struct.pack("!HB", 19 + len(body), mtype) + body


def ipv4_tcp(src: bytes, payload: bytes) -> bytes:
    tcp = struct.pack("!HHIIBBHHH", 179, 40000, 1, 1, 5 << 4, 0x18, 1000, 0, 0)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp) + len(payload), 0, 0, 64,
                     socket.IPPROTO_TCP, 0, src, socket.inet_aton("192.0.2.11"))  # fmt: skip
    return ip + tcp + payload


def test_an_update_from_the_peer_is_seen_after_a_keepalive_in_the_same_segment() -> None:
    assert bgp_update_in(ipv4_tcp(PEER, bgp(4) + bgp(2, b"\0\0\0\0")), PEER)
    assert not bgp_update_in(ipv4_tcp(PEER, bgp(4)), PEER)  # a keepalive alone
    assert not bgp_update_in(ipv4_tcp(PEER, b""), PEER)  # an ACK
    other = socket.inet_aton("192.0.2.11")
    assert not bgp_update_in(ipv4_tcp(other, bgp(2, b"\0\0\0\0")), PEER)  # our own


def rtm(mtype: int, dst: str, plen: int, proto: int) -> bytes:
    attr = struct.pack("=HH", 8, 1) + socket.inet_aton(dst)
    body = struct.pack("=BBBBBBBBI", socket.AF_INET, plen, 0, 0, 254, proto, 0, 1, 0) + attr
    return struct.pack("=IHHII", 16 + len(body), mtype, 0, 0, 0) + body


def test_route_notifications_name_the_prefix_and_count_deletes_of_a_protocol() -> None:
    dst = socket.inet_aton("10.255.255.192")
    data = (
        rtm(RTM_NEWROUTE, "10.255.255.192", 26, 213)
        + rtm(RTM_DELROUTE, "10.0.0.0", 26, 213)
        + rtm(RTM_DELROUTE, "10.0.0.64", 26, 12)
        + rtm(RTM_DELROUTE, "10.255.255.192", 26, 213)
        + rtm(RTM_NEWROUTE, "10.255.255.192", 24, 213)  # another length: not ours
    )
    assert route_events(data, dst, 26, 213) == (["new", "del"], 2)
    assert route_events(data, dst, 26, 12) == (["new", "del"], 1)


NODE_CONF = """process meshroute {
    run /venv/bin/python -m bgpd.relay --socket /w/exabgp.sock;
    encoder json;
}

neighbor 192.0.2.1 {
    router-id 192.0.2.11;
}
"""


def test_the_floor_runs_the_nodes_configuration_with_the_no_op_reader() -> None:
    got = floor_config(NODE_CONF, Path("/w/floor/eor"))
    assert f"{READER} /w/floor/eor;" in got
    assert "bgpd.relay" not in got
    assert got.replace(got.splitlines()[1], "") == NODE_CONF.replace(NODE_CONF.splitlines()[1], "")
    with pytest.raises(ValueError, match="found 0"):
        floor_config("neighbor 192.0.2.1 { }\n", Path("/w/eor"))
