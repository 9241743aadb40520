"""The speaker's per-packet shortcuts (``bgpd.bfd.running``) against the
state machine: whatever mix of packets that change nothing and packets
that do, ticks and live reconfigurations, the running session ends where
the state machine does, sends the same packets and asks to be woken at the
same time."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from bgpd.bfd import session as sm
from bgpd.bfd.packet import ControlPacket, Diag, State, decode, encode
from bgpd.bfd.running import Running

SLACK = 0.005  # the speaker's: more than half the jitter range of some intervals
FAST = sm.Timers(50_000, 50_000, 3)
UP = ControlPacket(State.UP, 3, 99, 1, 50_000, 50_000)
# what a peer may send: mostly the same Up packet, and everything that changes something
PACKETS = [
    UP,
    UP,
    UP,
    UP._replace(poll=True),
    UP._replace(final=True),
    UP._replace(diag=Diag.PATH_DOWN),
    UP._replace(required_min_rx_us=80_000),
    UP._replace(desired_min_tx_us=20_000),
    UP._replace(detect_mult=1),
    UP._replace(cpi=True),
    UP._replace(my_disc=98),
    ControlPacket(State.INIT, 3, 99, 1, 50_000, 50_000),
    ControlPacket(State.DOWN, 3, 99, 0, 1_000_000, 50_000),
    ControlPacket(State.ADMIN_DOWN, 3, 99, 0, 1_000_000, 50_000),
    ControlPacket(State.UP, 3, 99, 1, 50_000, 0),  # asks us to stop sending
]
TIMERS = [FAST, sm.Timers(300_000, 300_000, 3), sm.Timers(50_000, 50_000, 1)]

event = st.one_of(
    st.tuples(st.just("rx"), st.sampled_from(PACKETS), st.floats(0, 0.2)),
    st.tuples(st.just("tick"), st.floats(0, 1.0), st.floats(0, 1, exclude_max=True)),
    st.tuples(st.just("timers"), st.sampled_from(TIMERS), st.floats(0, 0.1)),
)


def up_session() -> sm.Session:
    s = sm.new_session(1, FAST, 0.0)
    s = sm.receive(s, PACKETS[-3], 0.0).session
    return sm.receive(s, UP._replace(state=State.INIT), 0.0).session


@settings(max_examples=300, deadline=None)
@given(st.booleans(), st.lists(event, max_size=60))
def test_the_shortcuts_end_where_the_state_machine_does(start_up: bool, events: list) -> None:
    s = up_session() if start_up else sm.new_session(1, FAST, 0.0)
    run = Running(s, SLACK)
    now = 0.0
    for kind, arg, x in events:
        if kind == "rx":
            now += x
            p: ControlPacket = arg
            want = sm.receive(s, p, now)
            data = encode(p)
            if data == run.quiet_rx:
                assert sm.quiet(s, p)
                run.heard_quiet(now)
                assert want.send == () and want.change is None
            else:
                assert run.receive(data, p, now) == want
            s = want.session
        elif kind == "tick":
            now += arg
            want = sm.tick(s, now, x, SLACK)
            periodic, step = run.tick(now, x)
            if step is not None:
                assert periodic is None and step == want
            else:
                assert want.change is None
                assert want.send == ((decode(periodic),) if periodic is not None else ())
            s = want.session
        else:
            now += x
            want = sm.reconfigure(s, arg, now)
            assert run.step(sm.reconfigure, arg, now) == want
            s = want.session
        assert run.value() == s
        assert run.next_wakeup() == sm.next_wakeup(s, SLACK)


def test_an_up_session_hearing_the_same_packet_takes_the_shortcut() -> None:
    run = Running(up_session(), SLACK)
    run.receive(encode(UP), UP, 1.0)
    assert run.quiet_rx == encode(UP)
    s = run.value()
    run.heard_quiet(1.04)
    assert run.value() == sm.receive(s, UP, 1.04).session
    assert run.detect_at == 1.04 + 0.15


def test_a_packet_that_changes_something_goes_through_the_state_machine() -> None:
    run = Running(up_session(), SLACK)
    run.receive(encode(UP), UP, 1.0)
    for p in PACKETS[3:]:
        assert encode(p) != run.quiet_rx, p
        r = Running(run.value(), SLACK)
        r.receive(encode(p), p, 1.01)
        # once taken in, it is the new normal, unless it can never be quiet
        never = p.poll or p.final or p.state is not State.UP
        assert r.quiet_rx == (None if never else encode(p)), p


def test_a_periodic_packet_is_the_one_the_state_machine_sends() -> None:
    run = Running(up_session(), SLACK)
    run.receive(encode(UP), UP, 0.0)
    s = run.value()
    periodic, step = run.tick(0.05, 0.5)
    want = sm.tick(s, 0.05, 0.5, SLACK)
    assert step is None and periodic is not None
    assert (decode(periodic),) == want.send and run.value() == want.session
    assert run.tick(0.051, 0.5) == (None, None)  # not due again yet
