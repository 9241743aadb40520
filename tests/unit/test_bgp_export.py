"""Export: the node's blocks and borrowed addresses with communities, and
the announce/withdraw diff."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from netaddr import IPAddress, IPNetwork

from bgpd.export import (
    CommunityRule,
    ExportPolicy,
    announced_after,
    parse_community,
    plan_announcements,
    plan_exports,
    validate_community,
)
from bgpd.model import Announce, Withdraw

B1, B2 = IPNetwork("10.244.1.0/26"), IPNetwork("10.244.2.0/26")
POLICY = ExportPolicy(communities=((64512, 100),))


def test_blocks_and_borrowed_host_routes_with_communities() -> None:
    policy = ExportPolicy(
        communities=((64512, 100),),
        rules=(CommunityRule(IPNetwork("10.244.2.0/24"), ((64512, 200), (64512, 100))),),
    )
    desired = plan_exports(
        [B1, B2, IPNetwork("fd00:10::40/122")],
        [IPAddress("10.244.9.7"), IPAddress("fd00:10::99")],
        policy,
    )
    assert desired == {
        (B1, None): Announce(B1, None, ((64512, 100),)),
        (B2, None): Announce(B2, None, ((64512, 100), (64512, 200))),
        (IPNetwork("fd00:10::40/122"), None): Announce(
            IPNetwork("fd00:10::40/122"), None, ((64512, 100),)
        ),
        (IPNetwork("10.244.9.7/32"), None): Announce(
            IPNetwork("10.244.9.7/32"), None, ((64512, 100),)
        ),
        (IPNetwork("fd00:10::99/128"), None): Announce(
            IPNetwork("fd00:10::99/128"), None, ((64512, 100),)
        ),
    }


def test_explicit_next_hop_and_local_pref() -> None:
    policy = ExportPolicy(next_hop=IPAddress("192.0.2.1"), local_pref=150)
    (a,) = plan_exports([B1], [], policy).values()
    assert (a.next_hop, a.local_pref, a.communities) == (IPAddress("192.0.2.1"), 150, ())


def test_plan_announces_new_and_changed_withdraws_gone() -> None:
    announced = plan_exports([B1, B2], [], ExportPolicy())
    desired = plan_exports([B2, IPNetwork("10.244.3.0/26")], [], POLICY)
    plan = plan_announcements(desired, announced)
    assert plan.announce == (
        Announce(B2, None, ((64512, 100),)),  # communities changed: re-announced
        Announce(IPNetwork("10.244.3.0/26"), None, ((64512, 100),)),
    )
    assert plan.withdraw == (Withdraw(B1),)
    after = announced_after(announced, plan)
    assert after == desired
    assert plan_announcements(desired, after) == plan_announcements({}, {})
    assert plan_announcements({}, {}).announce == ()


@pytest.mark.parametrize("bad", [(-1, 5), (65536, 1), (1, 65536), (1.5, 2), (True, 1), (1, 2, 3)])
def test_invalid_communities(bad: tuple) -> None:
    with pytest.raises(ValueError, match="community"):
        validate_community(bad)
    with pytest.raises(ValueError, match="community"):
        ExportPolicy(communities=(bad,))


@pytest.mark.parametrize("bad", ["64512", "a:1", "1:-1", "70000:1", ":", "1:2:3"])
def test_parse_community_errors(bad: str) -> None:
    with pytest.raises(ValueError, match="community"):
        parse_community(bad)


def test_parse_community() -> None:
    assert parse_community(" 64512:100 ") == (64512, 100)
    assert parse_community("0:65535") == (0, 65535)


blocks = st.sets(st.integers(0, 15).map(lambda i: IPNetwork(f"10.244.{i}.0/26")), max_size=6)
communities = st.sets(st.tuples(st.integers(0, 3), st.integers(0, 3)), max_size=3)


@given(blocks, communities, blocks, communities)
def test_plan_converges_in_one_step(b1, c1, b2, c2) -> None:
    announced = plan_exports(b1, [], ExportPolicy(communities=tuple(c1)))
    desired = plan_exports(b2, [], ExportPolicy(communities=tuple(c2)))
    plan = plan_announcements(desired, announced)
    assert announced_after(announced, plan) == desired
    assert {w.prefix for w in plan.withdraw} == b1 - b2
    assert {a.prefix for a in plan.announce} >= b2 - b1
    again = plan_announcements(desired, announced_after(announced, plan))
    assert again.announce == () and again.withdraw == ()
