"""Selectors and the rules a pool must satisfy."""

from __future__ import annotations

import pytest
from netaddr import IPNetwork

from ipam.model import EncapMode, Pool, Use
from ipam.pool_rules import overlapping, pool_problems
from ipam.selector import SelectorError, matches, parse_selector

LABELS = {"rack": "r1", "role": "node", "zone": "a"}


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("all()", True),
        ("rack == 'r1'", True),
        ('rack == "r2"', False),
        ("rack != 'r2'", True),
        ("has(rack)", True),
        ("has(gpu)", False),
        ("!has(gpu)", True),
        ("has(rack) && role == 'node'", True),
        ("rack == 'r2' && role == 'node'", False),
        ("rack == 'r2' || role == 'node'", True),
        ("(rack == 'r2' || zone == 'a') && !has(gpu)", True),
        ("rack in {'r2', 'r1'}", True),
        ("rack not in {'r1'}", False),
    ],
)
def test_selector(selector: str, expected: bool) -> None:
    assert matches(selector, LABELS) is expected


@pytest.mark.parametrize(
    ("selector", "message"),
    [
        ("", "empty selector"),
        ("rack = 'r1'", "unexpected"),
        ("rack == r1", "quoted value"),
        ("rack ~= 'x'", "unexpected"),
        ("all() &&", "ends early"),
        ("(rack == 'r1'", "ends early"),
        ("rack like 'r1'", "unknown operator"),
    ],
)
def test_bad_selector_says_why(selector: str, message: str) -> None:
    with pytest.raises(SelectorError, match=message):
        parse_selector(selector)


def _pool(**kw: object) -> Pool:
    base: dict[str, object] = {"name": "p", "cidr": IPNetwork("10.244.0.0/16"), "block_size": 26}
    base.update(kw)
    return Pool(**base)  # type: ignore[arg-type]


def test_valid_pool_has_no_problems() -> None:
    assert pool_problems(_pool()) == []
    assert pool_problems(_pool(cidr=IPNetwork("fd00::/48"), block_size=122)) == []


@pytest.mark.parametrize(
    ("kw", "field", "message"),
    [
        ({"block_size": 33}, "spec.blockSize", "out of range 20..32"),
        ({"block_size": 19}, "spec.blockSize", "out of range"),
        ({"cidr": IPNetwork("10.244.0.0/28")}, "spec.blockSize", "do not fit"),
        ({"cidr": IPNetwork("fd00::/48"), "block_size": 26}, "spec.blockSize", "116..128"),
        ({"cidr": IPNetwork("10.244.1.0/16")}, "spec.cidr", "host bits"),
        (
            {"ipip_mode": EncapMode.ALWAYS, "vxlan_mode": EncapMode.CROSS_SUBNET},
            "spec.ipipMode",
            "both",
        ),
        ({"node_selector": "rack = 1"}, "spec.nodeSelector", "unexpected"),
        ({"allowed_uses": ()}, "spec.allowedUses", "at least one"),
        ({"name": "Bad_Name"}, "metadata.name", "not a valid name"),
    ],
)
def test_pool_problems_name_the_field(kw: dict[str, object], field: str, message: str) -> None:
    problems = pool_problems(_pool(**kw))
    assert any(p.field == field and message in p.message for p in problems), problems


def test_overlap() -> None:
    a = _pool(name="a")
    b = _pool(name="b", cidr=IPNetwork("10.244.128.0/17"))
    c = _pool(name="c", cidr=IPNetwork("10.245.0.0/16"))
    assert overlapping(b, [a, c]) == [a]
    assert overlapping(c, [a, b]) == []
    assert overlapping(a, [a]) == []  # a pool does not overlap itself
    assert Use.WORKLOAD in a.allowed_uses
