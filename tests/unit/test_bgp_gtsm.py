"""Inbound GTSM planning (bgpd.gtsm): the RFC 5082 threshold, the rules, the
nft transaction, and reading nft's JSON back (captured from nft 1.0.6:
tests/fixtures/nft/gtsm.json)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from netaddr import IPAddress

from bgpd.gtsm import (
    GtsmRule,
    decide_gtsm_script,
    min_ttl,
    parse_gtsm,
    plan_gtsm,
    render_gtsm,
)

FIX = Path(__file__).parent.parent / "fixtures" / "nft" / "gtsm.json"
A, B = IPAddress("192.0.2.21"), IPAddress("2001:db8::7")


def test_min_ttl_is_rfc_5082() -> None:
    # one hop: only 255 (a directly connected peer); each more hop allows one less
    assert min_ttl(1) == 255
    assert min_ttl(2) == 254
    assert min_ttl(254) == 2
    for bad in (0, 255, -1):
        with pytest.raises(ValueError):
            min_ttl(bad)


def test_plan_checks_what_comes_in_and_sends_255_both_directions() -> None:
    assert plan_gtsm({A: 1, B: 2}) == {
        GtsmRule("input", A, "dport", 255),
        GtsmRule("input", A, "sport", 255),
        GtsmRule("input", B, "dport", 254),
        GtsmRule("input", B, "sport", 254),
        *(GtsmRule("output", x, f, 255) for x in (A, B) for f in ("dport", "sport")),
    }
    assert plan_gtsm({}) == frozenset()


def test_render_replaces_the_table_in_one_transaction() -> None:
    text = render_gtsm(plan_gtsm({A: 1, B: 2}))
    lines = text.splitlines()
    assert lines[:2] == ["table inet meshroute_gtsm", "delete table inet meshroute_gtsm"]
    assert "    ip saddr 192.0.2.21 tcp dport 179 ip ttl < 255 counter drop" in lines
    assert "    ip6 saddr 2001:db8::7 tcp sport 179 ip6 hoplimit < 254 counter drop" in lines
    assert "    ip daddr 192.0.2.21 tcp sport 179 ip ttl set 255" in lines
    assert "type filter hook input priority -150; policy accept;" in text
    assert "type filter hook output priority -150; policy accept;" in text
    # nothing wanted: the table goes
    assert render_gtsm(frozenset()).splitlines() == lines[:2]


def test_parse_reads_back_what_nft_printed() -> None:
    doc = json.loads(FIX.read_text())
    assert parse_gtsm(doc) == plan_gtsm({A: 1, B: 2})


def mutated(change: str) -> object:
    doc = json.loads(FIX.read_text())
    items = doc["nftables"]
    chain = next(i["chain"] for i in items if "chain" in i)
    rule = next(i["rule"] for i in items if "rule" in i)
    out = next(i["rule"] for i in items if "rule" in i and i["rule"]["chain"] == "output")
    if change == "policy":
        chain["policy"] = "drop"
    elif change == "priority":
        chain["prio"] = 0
    elif change == "accept":
        rule["expr"][-1] = {"accept": None}
    elif change == "op":
        rule["expr"][2]["match"]["op"] = "<="
    elif change == "port":
        rule["expr"][1]["match"]["right"] = 180
    elif change == "extra match":
        rule["expr"].insert(0, rule["expr"][0])
    elif change == "foreign set":
        items.append({"set": {"name": "x"}})
    elif change == "duplicate":
        items.append({"rule": rule})
    elif change == "set ttl":
        out["expr"][2]["mangle"]["value"] = 64
    elif change == "no chain":
        items.remove({"chain": chain})
    elif change == "rule in input shaped for output":
        out["chain"] = "input"
    return doc


@pytest.mark.parametrize(
    "change",
    [
        "policy",
        "priority",
        "accept",
        "op",
        "port",
        "extra match",
        "foreign set",
        "duplicate",
        "no chain",
        "rule in input shaped for output",
    ],
)
def test_parse_refuses_anything_it_would_not_write(change: str) -> None:
    assert parse_gtsm(mutated(change)) is None


def test_parse_reads_a_changed_value_as_a_different_rule() -> None:
    got = parse_gtsm(mutated("set ttl"))
    assert got is not None and got != plan_gtsm({A: 1, B: 2})
    assert GtsmRule("output", A, "dport", 64) in got


@pytest.mark.parametrize("doc", [None, [], {"nftables": 3}, {"nftables": [7]}, {"x": []}])
def test_parse_of_garbage_is_none(doc: object) -> None:
    assert parse_gtsm(doc) is None


def test_decide_writes_only_when_different() -> None:
    want = plan_gtsm({A: 1})
    assert decide_gtsm_script(want, True, want) is None
    assert decide_gtsm_script(want, False, frozenset()) == render_gtsm(want)
    assert decide_gtsm_script(want, True, None) == render_gtsm(want)  # not ours as written
    assert decide_gtsm_script(want, True, plan_gtsm({A: 2})) == render_gtsm(want)
    assert decide_gtsm_script(frozenset(), False, frozenset()) is None
    assert decide_gtsm_script(frozenset(), True, None) == render_gtsm(frozenset())
