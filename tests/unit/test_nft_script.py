"""The nft script planner (only differences, in an order nft accepts) and
the reader of ``nft -j`` output."""

from __future__ import annotations

import json

from felix_lite.nft_model import BaseHook, NftChain, NftRule, NftSet, Ruleset, TableState
from felix_lite.nft_script import parse_table_json, plan_nft_script

T = "inet meshroute"
BASE = NftChain(
    "mr_forward", (NftRule("oifname vmap @m", "dispatch"),), BaseHook("filter", "forward", 0)
)
M = NftSet("m", "ifname : verdict", elements=frozenset({'"v1" : jump c1'}))
S = NftSet("s", "ipv4_addr", elements=frozenset({"10.0.0.1", "10.0.0.2"}))
C1 = NftChain("c1", (NftRule("ip saddr @s accept", "allow"),))


def rs(*items: NftSet | NftChain) -> Ruleset:
    return Ruleset(
        {i.name: i for i in items if isinstance(i, NftSet)},
        {i.name: i for i in items if isinstance(i, NftChain)},
    )


def test_equal_means_no_statements() -> None:
    desired = rs(BASE, M, S, C1)
    assert plan_nft_script(desired, TableState.of(desired)) == []


def test_no_table_full_script_declares_before_use() -> None:
    lines = plan_nft_script(rs(BASE, M, S, C1), None)
    assert lines[0] == f"add table {T}"
    first_rule = next(i for i, ln in enumerate(lines) if ln.startswith("add rule"))
    assert all(not ln.startswith(("add set", "add map", "add chain")) for ln in lines[first_rule:])
    assert (
        f"add chain {T} mr_forward {{ type filter hook forward priority 0 ; policy accept ; }}"
        in lines
    )


def test_set_elements_only() -> None:
    old = rs(BASE, M, S, C1)
    new = rs(BASE, M, NftSet("s", "ipv4_addr", elements=frozenset({"10.0.0.2", "10.0.0.3"})), C1)
    assert plan_nft_script(new, TableState.of(old)) == [
        f"delete element {T} s {{ 10.0.0.1 }}",
        f"add element {T} s {{ 10.0.0.3 }}",
    ]


def test_changed_chain_flushed_and_refilled() -> None:
    old = rs(BASE, M, S, C1)
    c1 = NftChain("c1", (NftRule("ip saddr @s drop", "deny"),))
    lines = plan_nft_script(rs(BASE, M, S, c1), TableState.of(old))
    assert lines[0] == f"flush chain {T} c1"
    assert lines[1].startswith(f"add rule {T} c1 ip saddr @s drop comment ")


def test_removed_endpoint_map_element_before_its_chain() -> None:
    old = rs(BASE, M, S, C1)
    new = rs(BASE, NftSet("m", "ifname : verdict"), S)
    assert plan_nft_script(new, TableState.of(old)) == [
        f'delete element {T} m {{ "v1" }}',
        f"flush chain {T} c1",
        f"delete chain {T} c1",
    ]


def test_map_value_change_deletes_then_adds_key() -> None:
    c2 = NftChain("c2", (NftRule("accept", "a"),))
    old = rs(BASE, M, C1)
    new = rs(BASE, NftSet("m", "ifname : verdict", elements=frozenset({'"v1" : jump c2'})), c2)
    lines = plan_nft_script(new, TableState.of(old))
    assert lines.index(f"add chain {T} c2") < lines.index(f'delete element {T} m {{ "v1" }}')
    assert lines.index(f'delete element {T} m {{ "v1" }}') < lines.index(
        f'add element {T} m {{ "v1" : jump c2 }}'
    )
    assert lines[-1] == f"delete chain {T} c1"


def test_reshaped_table_is_replaced_in_one_script() -> None:
    actual = TableState.of(rs(NftChain("mr_forward", (), BaseHook("filter", "input", 0))))
    lines = plan_nft_script(rs(BASE, M), actual)
    assert lines[:2] == [f"delete table {T}", f"add table {T}"]


def _nft(*items: dict) -> str:
    return json.dumps({"nftables": [{"metainfo": {"json_schema_version": 1}}, *items]})


def test_parse_table_json_normalises_elements_and_reads_counters() -> None:
    text = _nft(
        {"table": {"family": "inet", "name": "meshroute", "handle": 1}},
        {"table": {"family": "ip", "name": "other", "handle": 2}},
        {
            "set": {
                "family": "inet",
                "name": "n",
                "table": "meshroute",
                "type": "ipv4_addr",
                "flags": ["interval"],
                "elem": [{"prefix": {"addr": "10.0.0.0", "len": 8}}, "192.0.2.5"],
            }
        },
        {
            "set": {
                "family": "inet",
                "name": "q",
                "table": "meshroute",
                "type": ["ipv6_addr", "inet_proto", "inet_service"],
                "elem": [{"concat": ["fd00:0::5", "tcp", 80]}],
            }
        },
        {
            "map": {
                "family": "inet",
                "name": "m",
                "table": "meshroute",
                "type": "ifname",
                "map": "verdict",
                "elem": [["v1", {"jump": {"target": "c1"}}]],
            }
        },
        {
            "chain": {
                "family": "inet",
                "table": "meshroute",
                "name": "mr_forward",
                "type": "filter",
                "hook": "forward",
                "prio": 0,
                "policy": "accept",
            }
        },
        {"chain": {"family": "inet", "table": "meshroute", "name": "c1"}},
        {
            "rule": {
                "family": "inet",
                "table": "meshroute",
                "chain": "c1",
                "comment": "abc np/x/p ingress r0 allow",
                "expr": [{"counter": {"packets": 3, "bytes": 180}}, {"accept": None}],
            }
        },
        {"rule": {"family": "inet", "table": "meshroute", "chain": "c1", "expr": [{"drop": None}]}},
        {"rule": {"family": "ip", "table": "other", "chain": "x", "comment": "zzz"}},
    )
    st = parse_table_json(text)
    assert st is not None
    assert st.sets["n"].elements == {"10.0.0.0/8", "192.0.2.5/32"}
    assert (
        st.sets["q"].elements == {"fd00::5 . tcp . 80"}
        and st.sets["q"].type == "ipv6_addr . inet_proto . inet_service"
    )
    assert st.sets["m"].elements == {'"v1" : jump c1'} and st.sets["m"].is_map
    assert st.chains["mr_forward"].hook == BaseHook("filter", "forward", 0)
    assert st.chains["c1"].rule_ids == ("abc", "")  # a rule without our comment never equals ours
    (c,) = st.counters
    assert (c.chain, c.label, c.packets, c.bytes) == ("c1", "np/x/p ingress r0 allow", 3, 180)


def test_parse_without_our_table() -> None:
    assert parse_table_json(_nft({"table": {"family": "ip", "name": "meshroute"}})) is None
