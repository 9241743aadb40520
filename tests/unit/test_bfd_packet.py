"""The BFD Control packet codec: round trips (Hypothesis), every reception
check of RFC 5880 §6.8.6 that needs no session, and arbitrary bytes."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bgpd.bfd.packet import ControlPacket, Diag, Malformed, Reason, State, decode, encode

u32 = st.integers(0, 0xFFFFFFFF)


@st.composite
def packets(draw: st.DrawFn) -> ControlPacket:
    state = draw(st.sampled_from(State))
    your = draw(u32) if state in (State.DOWN, State.ADMIN_DOWN) else draw(st.integers(1, 2**32 - 1))
    poll = draw(st.booleans())
    return ControlPacket(
        state=state,
        detect_mult=draw(st.integers(1, 255)),
        my_disc=draw(st.integers(1, 2**32 - 1)),
        your_disc=your,
        desired_min_tx_us=draw(u32),
        required_min_rx_us=draw(u32),
        required_min_echo_rx_us=draw(u32),
        diag=draw(st.integers(0, 31)),
        poll=poll,
        final=draw(st.booleans()) and not poll,
        cpi=draw(st.booleans()),
        demand=draw(st.booleans()),
    )


@given(packets())
def test_round_trip(p: ControlPacket) -> None:
    data = encode(p)
    assert len(data) == 24
    assert decode(data) == p


@given(st.binary(max_size=200))
def test_any_bytes_decode_or_are_malformed(data: bytes) -> None:
    try:
        p = decode(data)
    except Malformed as e:
        assert isinstance(e.reason, Reason)
    else:
        assert decode(encode(p)) == p


def good(**kw: object) -> ControlPacket:
    base: dict[str, object] = {
        "state": State.UP,
        "detect_mult": 3,
        "my_disc": 7,
        "your_disc": 9,
        "desired_min_tx_us": 300_000,
        "required_min_rx_us": 300_000,
    }
    base.update(kw)
    return ControlPacket(**base)  # type: ignore[arg-type]


def patched(offset: int, value: int) -> bytes:
    b = bytearray(encode(good()))
    b[offset] = value
    return bytes(b)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (encode(good())[:23], Reason.TOO_SHORT),
        (patched(0, (2 << 5)), Reason.BAD_VERSION),
        (patched(0, 0), Reason.BAD_VERSION),
        (patched(3, 23), Reason.BAD_LENGTH),
        (patched(3, 25), Reason.BAD_LENGTH),  # says 25, carries 24
        (patched(2, 0), Reason.ZERO_MULTIPLIER),
        (patched(1, (State.UP << 6) | 0x04), Reason.AUTH_UNEXPECTED),
        (patched(1, (State.UP << 6) | 0x01), Reason.MULTIPOINT),
        (patched(1, (State.UP << 6) | 0x30), Reason.POLL_AND_FINAL),
        (encode(good(my_disc=0)), Reason.ZERO_MY_DISCRIMINATOR),
        (encode(good(your_disc=0)), Reason.ZERO_YOUR_DISCRIMINATOR),
        (encode(good(state=State.INIT, your_disc=0)), Reason.ZERO_YOUR_DISCRIMINATOR),
    ],
)
def test_malformed_is_refused_with_its_reason(data: bytes, reason: Reason) -> None:
    with pytest.raises(Malformed) as e:
        decode(data)
    assert e.value.reason is reason


def test_auth_section_is_refused_even_when_well_formed() -> None:
    # A bit, length 24 + a 9-byte simple password section (type 1)
    head = bytearray(encode(good()))
    head[1] |= 0x04
    head[3] = 24 + 9
    data = bytes(head) + struct.pack("!BBB", 1, 9, 1) + b"secret"
    with pytest.raises(Malformed) as e:
        decode(data)
    assert e.value.reason is Reason.AUTH_UNEXPECTED


def test_longer_payload_than_length_is_read_to_length() -> None:
    # §6.8.6 only requires Length <= payload; trailing bytes are not ours
    assert decode(encode(good()) + b"\0" * 8) == good()


def test_down_with_zero_your_discriminator_is_fine() -> None:
    p = good(state=State.DOWN, your_disc=0, diag=Diag.CONTROL_DETECTION_TIME_EXPIRED)
    assert decode(encode(p)) == p


def test_wire_layout_matches_rfc_figure() -> None:
    p = good(poll=True, cpi=True, diag=Diag.NEIGHBOR_SIGNALED_DOWN)
    data = encode(p)
    assert data[0] == (1 << 5) | 3
    assert data[1] == (3 << 6) | 0x20 | 0x08
    assert data[2] == 3 and data[3] == 24
    assert struct.unpack("!IIIII", data[4:]) == (7, 9, 300_000, 300_000, 0)
