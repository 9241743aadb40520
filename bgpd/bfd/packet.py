"""The BFD Control packet (RFC 5880 §4.1): its values and a strict codec.

``decode`` applies every reception check of §6.8.6 that needs no session
state, so the state machine only ever sees packets that are well formed;
anything else raises ``Malformed`` with a reason the edge counts.
Authentication is not supported: a packet with the A bit is malformed for
us, as §6.8.6 says for a session with no authentication configured.
"""

from __future__ import annotations

import enum
import struct
from typing import NamedTuple

VERSION = 1
HEADER_LEN = 24
_HEADER = struct.Struct("!BBBBIIIII")
MAX_U32 = 0xFFFFFFFF


class State(enum.IntEnum):
    ADMIN_DOWN = 0
    DOWN = 1
    INIT = 2
    UP = 3


class Diag(enum.IntEnum):
    NONE = 0
    CONTROL_DETECTION_TIME_EXPIRED = 1
    ECHO_FAILED = 2
    NEIGHBOR_SIGNALED_DOWN = 3
    FORWARDING_PLANE_RESET = 4
    PATH_DOWN = 5
    CONCATENATED_PATH_DOWN = 6
    ADMINISTRATIVELY_DOWN = 7
    REVERSE_CONCATENATED_PATH_DOWN = 8


_STATES = tuple(State)  # by wire value


class Reason(enum.Enum):
    """Why a packet was dropped (the label of the drop counter)."""

    TOO_SHORT = "too_short"
    BAD_VERSION = "bad_version"
    BAD_LENGTH = "bad_length"
    POLL_AND_FINAL = "poll_and_final"
    ZERO_MULTIPLIER = "zero_multiplier"
    MULTIPOINT = "multipoint"
    ZERO_MY_DISCRIMINATOR = "zero_my_discriminator"
    ZERO_YOUR_DISCRIMINATOR = "zero_your_discriminator"
    AUTH_UNEXPECTED = "auth_unexpected"
    BAD_TTL = "bad_ttl"
    NO_SESSION = "no_session"
    QUEUE_FULL = "queue_full"  # the engine's queue to the state machine was full


class Malformed(ValueError):
    def __init__(self, reason: Reason, detail: str = "") -> None:
        super().__init__(f"{reason.value}{': ' + detail if detail else ''}")
        self.reason = reason


class ControlPacket(NamedTuple):
    state: State
    detect_mult: int
    my_disc: int
    your_disc: int
    desired_min_tx_us: int
    required_min_rx_us: int
    required_min_echo_rx_us: int = 0
    diag: int = Diag.NONE  # a Diag; codes this RFC does not name pass through
    poll: bool = False
    final: bool = False
    cpi: bool = False  # C: control plane independent
    demand: bool = False


def encode(p: ControlPacket) -> bytes:
    flags = (p.state << 6) | (p.poll << 5) | (p.final << 4) | (p.cpi << 3) | (p.demand << 1)
    return _HEADER.pack(
        (VERSION << 5) | (p.diag & 0x1F),
        flags,
        p.detect_mult,
        HEADER_LEN,
        p.my_disc,
        p.your_disc,
        p.desired_min_tx_us,
        p.required_min_rx_us,
        p.required_min_echo_rx_us,
    )


def decode(data: bytes) -> ControlPacket:
    """The packet in ``data`` (one UDP payload), or ``Malformed``."""
    if len(data) < HEADER_LEN:
        raise Malformed(Reason.TOO_SHORT, f"{len(data)} bytes")
    vd, flags, mult, length, my, your, tx, rx, echo = _HEADER.unpack_from(data)
    version, diag = vd >> 5, vd & 0x1F
    if version != VERSION:
        raise Malformed(Reason.BAD_VERSION, str(version))
    if flags & 0x04:  # A: this speaker never configures authentication
        raise Malformed(Reason.AUTH_UNEXPECTED)
    if length < HEADER_LEN or length > len(data):
        raise Malformed(Reason.BAD_LENGTH, f"length {length}, payload {len(data)}")
    if flags & 0x30 == 0x30:
        raise Malformed(Reason.POLL_AND_FINAL)
    if mult == 0:
        raise Malformed(Reason.ZERO_MULTIPLIER)
    if flags & 0x01:
        raise Malformed(Reason.MULTIPOINT)
    if my == 0:
        raise Malformed(Reason.ZERO_MY_DISCRIMINATOR)
    state = _STATES[flags >> 6]
    if your == 0 and state not in (State.DOWN, State.ADMIN_DOWN):
        raise Malformed(Reason.ZERO_YOUR_DISCRIMINATOR, state.name)
    # positional: this runs for every packet received
    return ControlPacket(
        state,
        mult,
        my,
        your,
        tx,
        rx,
        echo,
        diag,
        bool(flags & 0x20),
        bool(flags & 0x10),
        bool(flags & 0x08),
        bool(flags & 0x02),
    )
