"""The soak probe's packets (tests/soak/icmp.py): the Internet checksum,
echo requests, and which received packets count as a reply."""

from __future__ import annotations

import socket
import struct

import pytest

from tests.soak.icmp import (
    ECHO_REPLY,
    Target,
    checksum,
    echo_request,
    parse_echo_reply,
    probe_matrix,
)


def _ipv4(src: str, icmp: bytes, ihl_words: int = 5) -> bytes:
    head = struct.pack(
        "!BBHHHBBH4s4s",
        0x40 | ihl_words,
        0,
        20 + len(icmp),
        0,
        0,
        64,
        socket.IPPROTO_ICMP,
        0,
        socket.inet_aton(src),
        socket.inet_aton("192.0.2.1"),
    )
    return head + b"\0" * (4 * ihl_words - 20) + icmp


def _reply_of(request: bytes) -> bytes:
    body = bytes([ECHO_REPLY, 0, 0, 0]) + request[4:]
    return body[:2] + struct.pack("!H", checksum(body)) + body[4:]


def test_checksum_of_rfc1071_example_and_of_a_whole_packet():
    # RFC 1071 section 3: the one's-complement sum of these words is 0xddf2
    assert checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0xFFFF - 0xDDF2
    assert checksum(echo_request(0x1234, 7)) == 0  # a packet with its checksum sums to zero
    assert checksum(b"\x01") == checksum(b"\x01\x00")  # odd length is padded


def test_echo_request_fields():
    p = echo_request(0xBEEF, 513, b"xy")
    assert p[0] == 8 and p[1] == 0
    assert struct.unpack("!HH", p[4:8]) == (0xBEEF, 513)
    assert p[8:] == b"xy"


def test_a_reply_is_parsed_with_its_source_identifier_and_sequence():
    reply = _reply_of(echo_request(42, 3))
    assert parse_echo_reply(_ipv4("192.0.2.9", reply)) == ("192.0.2.9", 42, 3)
    # IP options (a longer header) are skipped
    assert parse_echo_reply(_ipv4("192.0.2.9", reply, ihl_words=6)) == ("192.0.2.9", 42, 3)


def test_what_is_not_a_valid_reply_is_ignored():
    request = echo_request(42, 3)
    assert parse_echo_reply(_ipv4("192.0.2.9", request)) is None  # a request, not a reply
    broken = bytearray(_reply_of(request))
    broken[-1] ^= 0xFF
    assert parse_echo_reply(_ipv4("192.0.2.9", bytes(broken))) is None  # bad checksum
    assert parse_echo_reply(b"\x60" + b"\0" * 60) is None  # IPv6
    assert parse_echo_reply(b"\x45\0") is None  # short
    assert parse_echo_reply(_ipv4("192.0.2.9", b"\0\0")) is None  # truncated ICMP


def test_the_probe_refuses_ipv6_targets():
    with pytest.raises(ValueError, match="IPv4"):
        probe_matrix([Target("a", "ns", "2001:db8::1")])
