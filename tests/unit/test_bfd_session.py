"""The BFD session state machine (RFC 5880 §6.2, §6.8), one test per
transition and per timer rule, on an injected clock; and two sessions
talking to each other through a simulated wire (Hypothesis over delays)."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from bgpd.bfd import session as sm
from bgpd.bfd.packet import ControlPacket, Diag, State, decode, encode

FAST = sm.Timers(desired_min_tx_us=300_000, required_min_rx_us=300_000, detect_mult=3)


def pkt(state: State, **kw: object) -> ControlPacket:
    base: dict[str, object] = {
        "state": state,
        "detect_mult": 3,
        "my_disc": 99,
        "your_disc": 0 if state in (State.DOWN, State.ADMIN_DOWN) else 1,
        "desired_min_tx_us": 300_000,
        "required_min_rx_us": 300_000,
    }
    base.update(kw)
    return ControlPacket(**base)  # type: ignore[arg-type]


def at(state: State, timers: sm.Timers = FAST) -> sm.Session:
    """A session in ``state`` that has heard from its peer at t=0."""
    s = sm.new_session(1, timers, 0.0)
    if state is State.DOWN:
        return s
    if state is State.ADMIN_DOWN:
        return sm.admin_down(s, 0.0).session
    s = sm.receive(s, pkt(State.DOWN), 0.0).session
    if state is State.UP:
        s = sm.receive(s, pkt(State.INIT), 0.0).session
    assert s.state is state
    return s


# ---- state transitions (§6.8.6) -------------------------------------------------


def test_down_hearing_down_goes_init() -> None:
    step = sm.receive(at(State.DOWN), pkt(State.DOWN), 1.0)
    assert step.session.state is State.INIT
    assert step.change == sm.Change(State.DOWN, State.INIT, Diag.NONE)
    assert step.session.remote_disc == 99
    assert step.session.next_tx == 1.0  # tells the peer at once


def test_down_hearing_init_goes_up() -> None:
    step = sm.receive(at(State.DOWN), pkt(State.INIT), 1.0)
    assert step.session.state is State.UP


def test_down_hearing_up_stays_down() -> None:
    step = sm.receive(at(State.DOWN), pkt(State.UP), 1.0)
    assert step.session.state is State.DOWN and step.change is None


def test_init_hearing_init_or_up_goes_up() -> None:
    for remote in (State.INIT, State.UP):
        step = sm.receive(at(State.INIT), pkt(remote), 1.0)
        assert step.change == sm.Change(State.INIT, State.UP, Diag.NONE)


def test_init_hearing_down_stays_init() -> None:
    step = sm.receive(at(State.INIT), pkt(State.DOWN), 1.0)
    assert step.session.state is State.INIT and step.change is None


def test_up_hearing_down_goes_down_neighbor_signaled() -> None:
    step = sm.receive(at(State.UP), pkt(State.DOWN), 1.0)
    assert step.change == sm.Change(State.UP, State.DOWN, Diag.NEIGHBOR_SIGNALED_DOWN)


def test_up_hearing_up_stays_up() -> None:
    step = sm.receive(at(State.UP), pkt(State.UP), 1.0)
    assert step.session.state is State.UP and step.change is None


def test_admin_down_from_peer_takes_init_and_up_down() -> None:
    for local in (State.INIT, State.UP):
        step = sm.receive(at(local), pkt(State.ADMIN_DOWN, diag=Diag.ADMINISTRATIVELY_DOWN), 1.0)
        assert step.change == sm.Change(local, State.DOWN, Diag.NEIGHBOR_SIGNALED_DOWN)
        assert step.session.remote_diag == Diag.ADMINISTRATIVELY_DOWN
    step = sm.receive(at(State.DOWN), pkt(State.ADMIN_DOWN), 1.0)
    assert step.session.state is State.DOWN and step.change is None


def test_detection_time_expiry_takes_up_and_init_down() -> None:
    for local in (State.INIT, State.UP):
        s = at(local)
        assert s.detect_at is not None
        assert sm.tick(s, s.detect_at - 0.001, 0.0).change is None
        step = sm.tick(s, s.detect_at, 0.0)
        assert step.change == sm.Change(local, State.DOWN, Diag.CONTROL_DETECTION_TIME_EXPIRED)
        assert step.session.remote_disc == 0  # §6.8.1
        assert step.session.detect_at is None


def test_detection_time_expiry_in_down_forgets_the_peer_only() -> None:
    s = sm.receive(at(State.DOWN), pkt(State.UP), 0.0).session
    assert s.remote_disc == 99
    step = sm.tick(s, 10.0, 0.0)
    assert step.change is None and step.session.remote_disc == 0


def test_admin_down_and_back() -> None:
    step = sm.admin_down(at(State.UP), 1.0)
    assert step.change == sm.Change(State.UP, State.ADMIN_DOWN, Diag.ADMINISTRATIVELY_DOWN)
    s = step.session
    assert sm.receive(s, pkt(State.UP), 2.0).session == s  # discarded
    out = sm.tick(s, 2.0, 0.0).send
    assert out and out[0].state is State.ADMIN_DOWN  # the peer is told why
    up = sm.admin_up(s, 3.0)
    assert up.change == sm.Change(State.ADMIN_DOWN, State.DOWN, Diag.NONE)


# ---- timers (§6.8.2-§6.8.4, §6.8.7) ------------------------------------------------


def test_slow_tx_until_up_then_poll_to_fast() -> None:
    s = at(State.INIT)
    assert sm.packet(s).desired_min_tx_us == sm.SLOW_TX_US
    assert sm.tx_interval_us(s) == sm.SLOW_TX_US
    s = sm.receive(s, pkt(State.UP), 1.0).session
    assert s.state is State.UP and s.polling
    assert sm.packet(s).desired_min_tx_us == 300_000 and sm.packet(s).poll
    assert sm.tx_interval_us(s) == 300_000  # a faster rate needs no wait
    s = sm.receive(s, pkt(State.UP, final=True), 1.1).session
    assert not s.polling and not sm.packet(s).poll


def test_poll_is_answered_at_once_with_final() -> None:
    step = sm.receive(at(State.UP), pkt(State.UP, poll=True), 1.0)
    assert len(step.send) == 1
    f = step.send[0]
    assert f.final and not f.poll and f.your_disc == 99


def test_slower_tx_waits_for_final() -> None:
    s = sm.receive(at(State.UP), pkt(State.UP, final=True), 0.0).session
    assert sm.tx_interval_us(s) == 300_000
    s = sm.reconfigure(s, replace(FAST, desired_min_tx_us=900_000), 1.0).session
    assert s.polling and sm.packet(s).desired_min_tx_us == 900_000
    assert sm.tx_interval_us(s) == 300_000
    s = sm.receive(s, pkt(State.UP, final=True), 1.1).session
    assert sm.tx_interval_us(s) == 900_000 and not s.polling
    assert s.state is State.UP


def test_shorter_rx_keeps_old_detection_time_until_final() -> None:
    s = sm.receive(at(State.UP), pkt(State.UP, final=True, desired_min_tx_us=50_000), 0.0).session
    assert sm.detection_time_us(s) == 900_000
    s = sm.reconfigure(s, replace(FAST, required_min_rx_us=50_000), 1.0).session
    assert sm.packet(s).required_min_rx_us == 50_000
    s = sm.receive(s, pkt(State.UP, desired_min_tx_us=50_000), 1.1).session
    assert sm.detection_time_us(s) == 900_000
    s = sm.receive(s, pkt(State.UP, final=True, desired_min_tx_us=50_000), 1.2).session
    assert sm.detection_time_us(s) == 150_000


def test_detection_time_uses_remote_multiplier_and_slower_side() -> None:
    s = sm.receive(at(State.UP), pkt(State.UP, detect_mult=5, desired_min_tx_us=400_000), 0.0)
    assert sm.detection_time_us(s.session) == 5 * 400_000
    assert s.session.detect_at == 2.0


def test_tx_interval_is_the_slower_of_ours_and_remote_rx() -> None:
    s = sm.receive(at(State.UP), pkt(State.UP, final=True, required_min_rx_us=700_000), 0.0)
    assert sm.tx_interval_us(s.session) == 700_000


def test_remote_faster_rx_is_honoured_at_once() -> None:
    s = at(State.INIT)
    s = s._replace(next_tx=5.0)
    s = sm.receive(s, pkt(State.UP, required_min_rx_us=1), 1.0).session  # goes Up
    assert s.next_tx <= 1.0 + 0.3


def test_remote_rx_zero_stops_transmission() -> None:
    s = sm.receive(at(State.UP), pkt(State.UP, required_min_rx_us=0), 0.0).session
    assert not sm.may_send(s)
    assert sm.tick(s._replace(detect_at=None), 5.0, 0.0).send == ()


def test_jitter_range() -> None:
    s = sm.receive(at(State.UP), pkt(State.UP, final=True), 0.0).session
    assert sm.jittered(s, 0.0) == 0.3
    assert abs(sm.jittered(s, 0.999) - 0.3 * 0.75) < 0.001
    one = s._replace(timers=replace(FAST, detect_mult=1))  # §6.8.7: 75-90 %
    assert abs(sm.jittered(one, 0.0) - 0.3 * 0.9) < 1e-9
    assert abs(sm.jittered(one, 0.999) - 0.3 * 0.75) < 0.001


@given(st.floats(0, 0.999), st.floats(0, 1), st.sampled_from([1, 3]))
def test_a_packet_sent_up_to_slack_late_stays_within_the_jitter_range(
    jitter: float, part: float, mult: int
) -> None:
    """Any slack, up to twice the width of the range: the session takes at
    most half the range of it (``Cadence.late``), and the caller's wakeup
    (``next_wakeup``) comes at most that late."""
    s = sm.receive(at(State.UP), pkt(State.UP, final=True), 0.0).session
    s = s._replace(timers=replace(FAST, detect_mult=mult), next_tx=1.0, detect_at=5.0)
    top = 0.9 if mult == 1 else 1.0
    slack = part * (top - 0.75) * 0.3 * 2
    late = sm.cadence(s).late(slack)
    assert late <= slack and late <= (top - 0.75) * 0.3 / 2 + 1e-12
    assert sm.next_wakeup(s, slack) == 1.0 + late
    planned = sm.jittered(s, jitter, slack=slack)
    assert 0.3 * 0.75 - 1e-9 <= planned <= 0.3 * top + 1e-9
    assert 0.3 * 0.75 - 1e-9 <= planned + late <= 0.3 * top + 1e-9


def test_next_wakeup_lets_a_packet_wait_but_never_the_detection_time() -> None:
    s = at(State.UP)._replace(next_tx=1.0, detect_at=5.0)
    assert sm.next_wakeup(s) == 1.0
    assert sm.next_wakeup(s, slack=0.002) == 1.002
    assert sm.next_wakeup(s._replace(detect_at=1.001), slack=0.002) == 1.001
    step = sm.tick(s, 1.002, 0.0, slack=0.002)
    assert step.send and abs(step.session.next_tx - (1.0 + 0.298)) < 1e-9


def test_a_late_tick_keeps_the_cadence_but_never_sends_sooner_than_75_percent() -> None:
    s = at(State.UP)._replace(next_tx=1.0, detect_at=5.0)
    assert sm.tick(s, 1.05, 0.0).session.next_tx == 1.3  # when it was due + 300 ms
    assert sm.tick(s, 1.2, 0.0).session.next_tx == 1.2 + 0.225  # 75 % after it left


def test_periodic_tx_carries_our_values() -> None:
    s = sm.new_session(5, FAST, 0.0)
    step = sm.tick(s, 0.0, 0.0)
    (p,) = step.send
    assert (p.state, p.my_disc, p.your_disc, p.detect_mult) == (State.DOWN, 5, 0, 3)
    assert step.session.next_tx == 1.0
    assert sm.tick(step.session, 0.5, 0.0).send == ()


def test_passive_waits_for_the_peer_and_stops_when_it_is_gone() -> None:
    s = sm.new_session(5, replace(FAST, passive=True), 0.0)
    assert sm.tick(s, 0.0, 0.0).send == () and sm.next_wakeup(s) is None
    s = sm.receive(s, pkt(State.DOWN), 1.0).session
    assert sm.tick(s, 1.0, 0.0).send
    assert s.detect_at is not None
    gone = sm.tick(s, s.detect_at, 0.0).session
    assert not sm.may_send(gone)


def test_cpi_bit_follows_the_timers() -> None:
    s = sm.new_session(5, replace(FAST, cpi=True), 0.0)
    assert sm.packet(s).cpi
    s = sm.reconfigure(s, FAST, 0.0).session
    assert not sm.packet(s).cpi


def test_reconfigure_while_down_takes_effect_at_once() -> None:
    s = sm.reconfigure(at(State.DOWN), replace(FAST, desired_min_tx_us=2_000_000), 0.0).session
    assert sm.tx_interval_us(s) == 2_000_000 and not s.polling


# ---- two sessions on a simulated wire ---------------------------------------------


def run_pair(delay: float, until: float, cut_at: float | None, jitters: list[float]) -> dict:
    """Two sessions exchanging encoded packets with a fixed one-way delay;
    from ``cut_at`` B's packets no longer reach A. Returns A's changes."""
    a = sm.new_session(1, FAST, 0.0)
    b = sm.new_session(2, FAST, 0.0)
    wire: list[tuple[float, str, bytes]] = []
    changes: list[tuple[float, State]] = []
    now, j = 0.0, 0
    while now < until:
        for name in ("a", "b"):
            s = a if name == "a" else b
            step = sm.tick(s, now, jitters[j % len(jitters)])
            j += 1
            for p in step.send:
                wire.append((now + delay, name, encode(p)))
            if name == "a":
                a = step.session
                if step.change:
                    changes.append((now, step.change.new))
            else:
                b = step.session
        due = [w for w in wire if w[0] <= now]
        wire = [w for w in wire if w[0] > now]
        for _, sender, data in due:
            if sender == "b" and cut_at is not None and now >= cut_at:
                continue
            target = b if sender == "a" else a
            step = sm.receive(target, decode(data), now)
            for p in step.send:
                wire.append((now + delay, "b" if sender == "a" else "a", encode(p)))
            if sender == "a":
                b = step.session
            else:
                a = step.session
                if step.change:
                    changes.append((now, step.change.new))
        now = round(now + 0.005, 6)
    return {"a": a, "b": b, "changes": changes}


@settings(deadline=None, max_examples=40)  # 1,600 simulated steps per example
@given(
    st.sampled_from([0.0, 0.005, 0.02, 0.05]),
    st.lists(st.floats(0, 0.999), min_size=1, max_size=8),
)
def test_pair_comes_up_and_detects_a_cut_within_detection_time(
    delay: float, jitters: list[float]
) -> None:
    r = run_pair(delay, until=8.0, cut_at=5.0, jitters=jitters)
    states = [s for _, s in r["changes"]]
    assert states[:2] == [State.INIT, State.UP] or states[:1] == [State.UP]
    ups = [t for t, s in r["changes"] if s is State.UP]
    assert ups and ups[0] < 3.5  # slow start: 1 s packets
    (down,) = [t for t, s in r["changes"] if s is State.DOWN]
    assert 5.0 < down <= 5.0 + 0.9 + 0.01  # 3 x 300 ms after the last packet
    assert r["a"].state is State.DOWN


STEADY_CHANGES: dict[str, object] = {
    "state": State.INIT,
    "poll": True,
    "final": True,
    "my_disc": 98,
    "required_min_rx_us": 50_000,
    "desired_min_tx_us": 1_000_000,
    "detect_mult": 5,
    "diag": Diag.PATH_DOWN,
    "cpi": True,
}


def changed(field: str | None) -> ControlPacket:
    """An Up packet from the peer, ``field`` changed from the usual."""
    kw = {"state": State.UP, **({field: STEADY_CHANGES[field]} if field else {})}
    state = kw.pop("state")
    assert isinstance(state, State)
    return pkt(state, **kw)


@given(
    st.sampled_from([None, *STEADY_CHANGES]),
    st.sampled_from([None, *STEADY_CHANGES]),
    st.booleans(),
    st.floats(0.5, 5.0),
)
def test_the_steady_state_shortcut_is_what_the_full_rules_do(
    last: str | None, this: str | None, polling: bool, now: float
) -> None:
    """Up, the last packet differing from the defaults in ``last`` and this
    one in ``this`` (None: in nothing): the same Step either way."""
    s = at(State.UP)
    if last is not None:
        s = sm.receive(s, changed(last), 0.2).session
    s = sm.receive(s, pkt(State.UP), 0.4).session
    if polling:  # a Poll Sequence of ours under way
        s = sm.reconfigure(s, replace(FAST, required_min_rx_us=600_000), 0.4).session
    p = changed(this)
    assert sm.receive(s, p, now) == sm._receive(s, p, now)
    if this is None and s.state is State.UP:
        expected = now + 3 * max(s.rx_us, 300_000) / 1e6
        assert sm.receive(s, p, now).session == s._replace(detect_at=expected)
