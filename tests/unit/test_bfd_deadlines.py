"""The BFD speaker's deadline heap: an item is due at its earliest setting
until popped, stale entries never surface, and the order is by time
(Hypothesis against a plain dict of the same operations)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from bgpd.bfd.deadlines import Deadlines


def test_a_later_setting_keeps_the_earlier_entry() -> None:
    d: Deadlines[str] = Deadlines()
    assert d.set("a", 2.0)
    assert not d.set("a", 3.0)  # it fires at 2.0 and the caller looks again
    assert d.set("a", 1.0)
    assert d.earliest() == 1.0
    assert d.pop_due(1.5) == ["a"]
    assert d.earliest() is None and len(d) == 0
    assert d.pop_due(10.0) == []  # the 2.0 entry was replaced, not pending


def test_pop_due_is_in_time_order_and_leaves_the_rest() -> None:
    d: Deadlines[str] = Deadlines()
    for item, when in (("c", 3.0), ("a", 1.0), ("b", 2.0), ("z", 9.0)):
        d.set(item, when)
    assert d.pop_due(3.0) == ["a", "b", "c"]
    assert d.earliest() == 9.0


def test_discard_and_set_again() -> None:
    d: Deadlines[str] = Deadlines()
    d.set("a", 1.0)
    d.discard("a")
    assert d.earliest() is None
    d.set("a", 5.0)
    assert d.pop_due(4.0) == [] and d.pop_due(5.0) == ["a"]


ops = st.lists(
    st.tuples(
        st.sampled_from(["set", "discard", "pop"]),
        st.sampled_from("abcd"),
        st.integers(0, 20).map(float),
    ),
    max_size=60,
)


@given(ops)
def test_matches_a_dict_of_earliest_times(steps: list[tuple[str, str, float]]) -> None:
    d: Deadlines[str] = Deadlines()
    model: dict[str, float] = {}
    for op, item, when in steps:
        if op == "set":
            moved = item not in model or when < model[item]
            assert d.set(item, when) == moved
            if moved:
                model[item] = when
        elif op == "discard":
            d.discard(item)
            model.pop(item, None)
        else:
            due = sorted((w, i) for i, w in model.items() if w <= when)
            got = d.pop_due(when)
            assert sorted(got) == sorted(i for _, i in due)
            assert [model[i] for i in got] == sorted(model[i] for i in got)
            for i in got:
                del model[i]
        assert d.earliest() == (min(model.values()) if model else None)
        assert len(d) == len(model)
