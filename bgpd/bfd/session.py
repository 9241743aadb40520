"""One BFD session as a pure state machine (RFC 5880 §6.2, §6.8).

A ``Session`` is a frozen value; ``receive``, ``tick``, ``reconfigure``,
``admin_down`` and ``admin_up`` return a ``Step``: the next value, the
packets to send now, and the state change if there was one. Time is the
caller's (``now`` in seconds, any monotonic origin) and so is the random
jitter, so every transition is a plain function call in a unit test.

Timer rules kept (§6.8.2, §6.8.3, §6.8.4):
- while not Up the advertised Desired Min TX is at least one second;
- the interval in force trails a change: a faster transmit interval or a
  longer receive interval takes effect at once, a slower transmit or a
  shorter receive interval only when the Poll Sequence ends (Final received);
- transmit interval = max(local desired TX in force, remote Required Min RX),
  jittered to 75-100 % (75-90 % with a detection multiplier of 1, §6.8.7);
  none at all while the remote asks for a Required Min RX of 0. The next
  packet is planned from when the last one was due (a late wakeup does not
  slow the cadence), never sooner than 75 % after it left. A caller that
  batches its wakeups says how late it may run (``slack``): the next packet
  is planned that much earlier, by at most half the jitter range (short
  intervals get less of the slack), so it still leaves at a random point
  within the range;
- detection time = remote multiplier x max(local required RX in force,
  remote Desired Min TX), restarted by every valid packet.

Demand mode and echo are not implemented: we never set D, never ask for
echo (Required Min Echo RX 0) and keep transmitting if the peer sets D.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from bgpd.bfd.packet import ControlPacket, Diag, State

SLOW_TX_US = 1_000_000  # §6.8.3: the floor for Desired Min TX while not Up


@dataclass(frozen=True, slots=True)
class Timers:
    """What one session is asked to do (a BFD profile, in microseconds)."""

    desired_min_tx_us: int = 300_000
    required_min_rx_us: int = 300_000
    detect_mult: int = 3
    passive: bool = False  # wait for the peer's first packet before sending
    cpi: bool = False  # advertise control-plane independence (the C bit)

    def __post_init__(self) -> None:
        if not 1 <= self.detect_mult <= 255:
            raise ValueError(f"detect_mult {self.detect_mult} not in 1..255")
        for name in ("desired_min_tx_us", "required_min_rx_us"):
            v = getattr(self, name)
            if not 1 <= v <= 0xFFFFFFFF:
                raise ValueError(f"{name} {v} not in 1..2^32-1")


class Session(NamedTuple):
    """Immutable like every value here; a NamedTuple because the speaker
    makes one per packet sent or received and ``_replace`` costs a tenth
    of ``dataclasses.replace``."""

    local_disc: int
    timers: Timers
    state: State = State.DOWN
    diag: int = Diag.NONE
    remote_disc: int = 0
    remote_state: State = State.DOWN
    remote_diag: int = Diag.NONE
    remote_min_rx_us: int = 1  # §6.8.1: initialised to 1
    remote_desired_tx_us: int = 0
    remote_detect_mult: int = 0
    remote_cpi: bool = False
    # the intervals in force, which trail the advertised ones while polling
    tx_us: int = SLOW_TX_US
    rx_us: int = 0
    polling: bool = False
    next_tx: float = 0.0
    detect_at: float | None = None


@dataclass(frozen=True, slots=True)
class Change:
    old: State
    new: State
    diag: int


class Step(NamedTuple):
    session: Session
    send: tuple[ControlPacket, ...] = ()
    change: Change | None = None


def new_session(local_disc: int, timers: Timers, now: float) -> Session:
    if not 1 <= local_disc <= 0xFFFFFFFF:
        raise ValueError("a local discriminator is 1..2^32-1")
    s = Session(local_disc, timers, next_tx=now)
    return s._replace(tx_us=advertised_tx_us(s), rx_us=timers.required_min_rx_us)


# ---- derived values -----------------------------------------------------------


def advertised_tx_us(s: Session) -> int:
    t = s.timers.desired_min_tx_us
    return t if s.state is State.UP else max(SLOW_TX_US, t)


def may_send(s: Session) -> bool:
    if s.timers.passive and s.remote_disc == 0:
        return False  # §6.1: a passive system waits to hear from its peer
    return s.remote_min_rx_us != 0  # §6.8.7: the peer asked us to stop


def tx_interval_us(s: Session) -> int:
    return max(s.tx_us, s.remote_min_rx_us)


def detection_time_us(s: Session) -> int:
    return s.remote_detect_mult * max(s.rx_us, s.remote_desired_tx_us)


def next_wakeup(s: Session, slack: float = 0.0) -> float | None:
    """The latest time ``tick`` must run: a periodic packet may wait up to
    ``slack`` (``tick`` planned it that much early; ``Cadence.late``), the
    detection time never does."""
    tx = s.next_tx + cadence(s).late(slack) if may_send(s) else None
    if s.detect_at is None:
        return tx
    return s.detect_at if tx is None or s.detect_at < tx else tx


def jittered(s: Session, jitter: float, slack: float = 0.0) -> float:
    """Seconds to the next periodic packet; ``jitter`` is uniform in [0, 1).
    §6.8.7: 75-100 % of the interval, 75-90 % with a multiplier of 1;
    ``slack`` earlier, as long as that stays at or above 75 %."""
    return cadence(s).gap(jitter, slack)


class Cadence(NamedTuple):
    """The arithmetic ``receive`` and ``tick`` do per packet, done once per
    session value: the speaker keeps it while the session does not change
    and gets the same numbers without building a new ``Session`` per packet."""

    interval_s: float  # tx_interval_us
    top: float  # the top of the jitter range (§6.8.7)
    soonest_s: float  # 0.75 x interval: the least gap after a packet sent
    detect_s: float  # detection_time_us

    def late(self, slack: float) -> float:
        """How much of a caller's ``slack`` this session takes: at most half
        the jitter range."""
        return min(slack, (self.top - 0.75) * self.interval_s / 2)

    def gap(self, jitter: float, slack: float = 0.0) -> float:
        """``jittered``."""
        planned = self.interval_s * (self.top - (self.top - 0.75) * jitter) - self.late(slack)
        return max(planned, 0.75 * self.interval_s)

    def next_tx(self, due: float, now: float, jitter: float, slack: float = 0.0) -> float:
        """When the packet after one due at ``due`` and sent at ``now`` is due:
        planned from when this one was due, not from now (a late wakeup does
        not slow the cadence: the peer's detection time counts on it), yet
        never sooner than 75 % after the one sent now."""
        return max(due + self.gap(jitter, slack), now + self.soonest_s)


def cadence(s: Session) -> Cadence:
    interval = tx_interval_us(s)
    return Cadence(
        interval / 1e6,
        0.9 if s.timers.detect_mult == 1 else 1.0,
        0.75 * interval / 1e6,
        detection_time_us(s) / 1e6,
    )


def quiet(s: Session, p: ControlPacket) -> bool:
    """Whether receiving ``p`` (addressed to ``s``) tells ``s`` nothing new:
    Up on both ends, no Poll or Final, every field the session keeps about
    its peer unchanged. All such a packet moves is the detection time, to
    when it came plus ``detection_time_us`` (nearly every packet)."""
    return (
        s.state is State.UP
        and p.state is State.UP
        and s.remote_state is State.UP
        and not p.poll
        and not p.final
        and p.my_disc == s.remote_disc
        and p.required_min_rx_us == s.remote_min_rx_us
        and p.desired_min_tx_us == s.remote_desired_tx_us
        and p.detect_mult == s.remote_detect_mult
        and p.diag == s.remote_diag
        and p.cpi == s.remote_cpi
    )


def packet(s: Session, *, final: bool = False) -> ControlPacket:
    t = s.timers
    # positional: this runs for every packet sent
    return ControlPacket(
        s.state,
        t.detect_mult,
        s.local_disc,
        s.remote_disc,
        advertised_tx_us(s),
        t.required_min_rx_us,
        0,  # Required Min Echo RX: we do not ask for echo
        s.diag,
        s.polling and not final,
        final,
        t.cpi,
    )


def with_times(s: Session, next_tx: float, detect_at: float | None) -> Session:
    """``s._replace(next_tx=..., detect_at=...)`` (the last two fields) at a
    third of the cost, for the paths nearly every packet takes."""
    return tuple.__new__(Session, (*s[:-2], next_tx, detect_at))


# ---- transitions --------------------------------------------------------------


def _retime(s: Session, now: float) -> Session:
    """Put the advertised intervals in force, through a Poll Sequence when
    Up (§6.8.3), at once otherwise."""
    tx, rx = advertised_tx_us(s), s.timers.required_min_rx_us
    if (tx, rx) == (s.tx_us, s.rx_us):
        return s
    if s.state is not State.UP:
        return s._replace(tx_us=tx, rx_us=rx, polling=False)
    return s._replace(tx_us=min(s.tx_us, tx), rx_us=max(s.rx_us, rx), polling=True, next_tx=now)


def _set_state(s: Session, new: State, diag: int, now: float) -> tuple[Session, Change]:
    change = Change(s.state, new, diag)
    s = s._replace(state=new, diag=diag, next_tx=now)  # tell the peer at once
    return _retime(s, now), change


def receive(s: Session, p: ControlPacket, now: float) -> Step:
    """A valid packet (``packet.decode`` accepted it) addressed to ``s``."""
    if s.state is State.ADMIN_DOWN:
        return Step(s)  # §6.8.6: discarded
    if quiet(s, p):
        return Step(with_times(s, s.next_tx, now + detection_time_us(s) / 1e6))
    return _receive(s, p, now)


def _receive(s: Session, p: ControlPacket, now: float) -> Step:
    before = tx_interval_us(s)
    polling, tx_us, rx_us, next_tx = s.polling, s.tx_us, s.rx_us, s.next_tx
    if p.final and polling:
        polling, tx_us, rx_us = False, advertised_tx_us(s), s.timers.required_min_rx_us
    interval = max(tx_us, p.required_min_rx_us)
    if interval < before:  # §6.8.3: a faster rate is honoured at once
        next_tx = min(next_tx, now + interval / 1e6)
    # one _replace: this runs for every packet received
    s = s._replace(
        remote_disc=p.my_disc,
        remote_state=p.state,
        remote_diag=p.diag,
        remote_min_rx_us=p.required_min_rx_us,
        remote_desired_tx_us=p.desired_min_tx_us,
        remote_detect_mult=p.detect_mult,
        remote_cpi=p.cpi,
        polling=polling,
        tx_us=tx_us,
        rx_us=rx_us,
        next_tx=next_tx,
        detect_at=now + p.detect_mult * max(rx_us, p.desired_min_tx_us) / 1e6,
    )
    change = None
    if p.state is State.ADMIN_DOWN:
        if s.state is not State.DOWN:
            s, change = _set_state(s, State.DOWN, Diag.NEIGHBOR_SIGNALED_DOWN, now)
    elif s.state is State.DOWN:
        if p.state is State.DOWN:
            s, change = _set_state(s, State.INIT, Diag.NONE, now)
        elif p.state is State.INIT:
            s, change = _set_state(s, State.UP, Diag.NONE, now)
    elif s.state is State.INIT:
        if p.state in (State.INIT, State.UP):
            s, change = _set_state(s, State.UP, Diag.NONE, now)
    elif p.state is State.DOWN:  # we are Up
        s, change = _set_state(s, State.DOWN, Diag.NEIGHBOR_SIGNALED_DOWN, now)
    send = (packet(s, final=True),) if p.poll else ()
    return Step(s, send, change)


def tick(s: Session, now: float, jitter: float, slack: float = 0.0) -> Step:
    """Whatever is due at ``now``: the detection time, then a periodic packet
    (the next one planned for a caller that may run ``slack`` late)."""
    change = None
    if s.detect_at is not None and now >= s.detect_at:
        if s.state in (State.INIT, State.UP):
            s, change = _set_state(s, State.DOWN, Diag.CONTROL_DETECTION_TIME_EXPIRED, now)
        # §6.8.1: the remote discriminator is forgotten with the session
        s = s._replace(
            remote_disc=0,
            remote_state=State.DOWN,
            remote_min_rx_us=1,
            remote_desired_tx_us=0,
            remote_detect_mult=0,
            detect_at=None,
            polling=False,
            tx_us=advertised_tx_us(s),
            rx_us=s.timers.required_min_rx_us,
        )
    send: tuple[ControlPacket, ...] = ()
    if may_send(s) and now >= s.next_tx:
        send = (packet(s),)
        s = with_times(s, cadence(s).next_tx(s.next_tx, now, jitter, slack), s.detect_at)
    return Step(s, send, change)


def reconfigure(s: Session, timers: Timers, now: float) -> Step:
    """New timers or roles, live: a session that is Up stays Up while the
    Poll Sequence moves both ends to the new intervals."""
    if timers == s.timers:
        return Step(s)
    return Step(_retime(s._replace(timers=timers), now))


def admin_down(s: Session, now: float) -> Step:
    if s.state is State.ADMIN_DOWN:
        return Step(s)
    s, change = _set_state(s, State.ADMIN_DOWN, Diag.ADMINISTRATIVELY_DOWN, now)
    return Step(s._replace(detect_at=None), (), change)


def admin_up(s: Session, now: float) -> Step:
    if s.state is not State.ADMIN_DOWN:
        return Step(s)
    s, change = _set_state(s, State.DOWN, Diag.NONE, now)
    return Step(s, (), change)
