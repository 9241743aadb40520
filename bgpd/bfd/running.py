"""One running session as the speaker holds it: the state machine's value
plus what its per-packet work needs, worked out once per value, so that
the two packets nearly every cycle is made of cost no new ``Session``:

- a received payload equal to the last one, when that one told the session
  nothing new (``session.quiet``), only moves the detection time, to when
  it came plus ``Cadence.detect_s``: what ``session.receive`` would do;
- a periodic packet goes out as the bytes encoded once, and the next one is
  planned with ``Cadence.next_tx``: what ``session.tick`` would do.

The speaker hands both paths to its compiled engine, which runs them on
these fields and gives the session back for anything else; ``heard_quiet``
and ``tick`` are their Python twins (``tests/integration/test_bfd_engine.py``
holds the engine to them; ``tick`` also runs each expiry).

The two times those paths move (``next_tx``, ``detect_at``) live here;
``value()`` is the session with them, and every other event goes through
the state machine on that value (``step``), after which the shortcuts are
worked out again. ``tests/unit/test_bfd_running.py`` holds both paths to
the state machine's answers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Concatenate, ParamSpec

from bgpd.bfd import session as sm
from bgpd.bfd.packet import ControlPacket, encode

P = ParamSpec("P")


class Running:
    __slots__ = (
        "_heard",
        "_session",
        "cadence",
        "detect_at",
        "detect_s",
        "late",
        "next_tx",
        "quiet_rx",
        "slack",
        "tx_bytes",
    )

    _session: sm.Session
    next_tx: float
    detect_at: float | None
    cadence: sm.Cadence | None  # None while the session may not send (§6.8.7, passive)
    tx_bytes: bytes  # the periodic packet, encoded
    quiet_rx: bytes | None  # the last payload received, while it tells nothing new
    detect_s: float
    slack: float  # how late the caller may run (session.tick's slack)
    late: float  # how much of it this session takes (Cadence.late)
    _heard: tuple[bytes, ControlPacket] | None

    def __init__(self, s: sm.Session, slack: float = 0.0) -> None:
        self._heard: tuple[bytes, ControlPacket] | None = None
        self.slack = slack
        self._settle(s)

    def value(self) -> sm.Session:
        """The session, with its current times."""
        s = self._session
        if s.next_tx != self.next_tx or s.detect_at != self.detect_at:
            s = self._session = sm.with_times(s, self.next_tx, self.detect_at)
        return s

    def step(
        self, fn: Callable[Concatenate[sm.Session, P], sm.Step], *args: P.args, **kw: P.kwargs
    ) -> sm.Step:
        """``fn(session, *args)`` (a transition); the session becomes its result."""
        step = fn(self.value(), *args, **kw)
        self._settle(step.session)
        return step

    def receive(self, data: bytes, p: ControlPacket, at: float) -> sm.Step:
        """``p``, decoded from ``data``, through the state machine."""
        self._heard = (data, p)
        return self.step(sm.receive, p, at)

    def heard_quiet(self, at: float) -> None:
        """``quiet_rx`` came again, at ``at``."""
        self.detect_at = at + self.detect_s

    def tick(self, now: float, jitter: float) -> tuple[bytes | None, sm.Step | None]:
        """``session.tick``: once the detection time has expired, its step;
        else the periodic packet if one is due now (the next one is then
        planned), or None."""
        d = self.detect_at
        if d is not None and now >= d:
            return None, self.step(sm.tick, now, jitter, self.slack)
        c = self.cadence
        if c is None or now < self.next_tx:
            return None, None
        self.next_tx = c.next_tx(self.next_tx, now, jitter, self.late)
        return self.tx_bytes, None

    def next_wakeup(self) -> float | None:
        """``session.next_wakeup``."""
        tx = self.next_tx + self.late if self.cadence is not None else None
        d = self.detect_at
        if d is None:
            return tx
        return d if tx is None or d < tx else tx

    def _settle(self, s: sm.Session) -> None:
        self._session = s
        self.next_tx, self.detect_at = s.next_tx, s.detect_at
        c = sm.cadence(s)
        self.detect_s = c.detect_s
        self.late = c.late(self.slack)
        sending = sm.may_send(s)
        self.cadence = c if sending else None
        self.tx_bytes = encode(sm.packet(s)) if sending else b""
        heard = self._heard
        self.quiet_rx = heard[0] if heard is not None and sm.quiet(s, heard[1]) else None
