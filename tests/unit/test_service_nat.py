"""The service DNAT part of ``inet meshroute`` (pure): its shape, rule ids
that depend on the target set only, the script a change of targets needs,
the merge with the policy ruleset, and the read-back of its maps."""

from __future__ import annotations

import json

import pytest
from netaddr import IPAddress

from felix_lite.nft_model import NftChain, Ruleset, TableState, merge_rulesets
from felix_lite.nft_script import parse_table_json, plan_nft_script
from felix_lite.service_nat import (
    MAPS,
    OUTPUT,
    POSTROUTING,
    PREROUTING,
    ServiceNat,
    ServicePort,
    plan_dnat,
    plan_service_ruleset,
    service_chain,
)

VIP = IPAddress("203.0.113.10")
VIP6 = IPAddress("2001:db8::10")
WEB = (ServicePort("tcp", 80, 8080),)
A, B = IPAddress("10.244.1.5"), IPAddress("10.244.2.7")


def test_no_services_no_table_part() -> None:
    assert plan_service_ruleset([]) == Ruleset()
    assert plan_service_ruleset([ServiceNat(VIP, WEB, ())]) == Ruleset()


def test_shape_one_map_lookup_per_family_and_a_chain_per_port() -> None:
    two_ports = (ServicePort("tcp", 80, 8080), ServicePort("udp", 53, 5353))
    r = plan_service_ruleset(
        [ServiceNat(VIP, two_ports, (A, B)), ServiceNat(VIP6, WEB, (IPAddress("fd00::5"),))]
    )
    assert set(r.chains) == {
        PREROUTING,
        OUTPUT,
        POSTROUTING,
        service_chain(VIP, two_ports[0]),
        service_chain(VIP, two_ports[1]),
        service_chain(VIP6, WEB[0]),
    }
    assert r.chains[PREROUTING].hook is not None and r.chains[PREROUTING].hook.priority == -100
    assert r.sets[MAPS[4]].elements == frozenset(
        {
            f"203.0.113.10 . tcp . 80 : goto {service_chain(VIP, two_ports[0])}",
            f"203.0.113.10 . udp . 53 : goto {service_chain(VIP, two_ports[1])}",
        }
    )
    assert r.sets[MAPS[6]].elements == frozenset(
        {f"2001:db8::10 . tcp . 80 : goto {service_chain(VIP6, WEB[0])}"}
    )
    [udp] = r.chains[service_chain(VIP, two_ports[1])].rules
    assert udp.text == (
        "meta l4proto udp dnat ip to numgen random mod 2"
        " map { 0 : 10.244.1.5 . 5353, 1 : 10.244.2.7 . 5353 }"
    )
    [six] = r.chains[service_chain(VIP6, WEB[0])].rules
    assert six.text == "meta l4proto tcp dnat ip6 to [fd00::5]:8080"


def test_rule_ids_depend_on_the_target_set_not_its_order() -> None:
    one = plan_service_ruleset([ServiceNat(VIP, WEB, (A, B))])
    other = plan_service_ruleset([ServiceNat(VIP, WEB, (B, A))])
    assert one == other
    assert plan_dnat(4, "tcp", [B, A], 80) == plan_dnat(4, "tcp", [A, B], 80)


def test_masquerade_marks_before_dnat() -> None:
    r = plan_service_ruleset([ServiceNat(VIP, WEB, (A,), masquerade=True)])
    mark, dnat = r.chains[service_chain(VIP, WEB[0])].rules
    assert mark.text == "meta mark set meta mark | 0x40000"
    assert dnat.text == "meta l4proto tcp dnat ip to 10.244.1.5:8080"
    assert "masquerade" in r.chains[POSTROUTING].rules[0].text


def test_a_change_of_targets_rewrites_one_chain_only() -> None:
    before = plan_service_ruleset(
        [ServiceNat(VIP, WEB, (A, B)), ServiceNat(VIP6, WEB, (IPAddress("fd00::5"),))]
    )
    after = plan_service_ruleset(
        [ServiceNat(VIP, WEB, (B,)), ServiceNat(VIP6, WEB, (IPAddress("fd00::5"),))]
    )
    lines = plan_nft_script(after, TableState.of(before))
    name = service_chain(VIP, WEB[0])
    assert lines[0] == f"flush chain inet meshroute {name}"
    assert len(lines) == 2 and "dnat ip to 10.244.2.7:8080" in lines[1]
    # the service gone: its map element, then its chain
    gone = plan_nft_script(
        plan_service_ruleset([ServiceNat(VIP6, WEB, (IPAddress("fd00::5"),))]),
        TableState.of(before),
    )
    assert gone == [
        "delete element inet meshroute mr_svc4 { 203.0.113.10 . tcp . 80 }",
        f"flush chain inet meshroute {name}",
        f"delete chain inet meshroute {name}",
    ]


def test_merge_keeps_both_parts_and_refuses_a_shared_name() -> None:
    svc = plan_service_ruleset([ServiceNat(VIP, WEB, (A,))])
    other = Ruleset(chains={"mr_forward": NftChain("mr_forward")})
    merged = merge_rulesets(other, svc)
    assert set(merged.chains) == set(svc.chains) | {"mr_forward"}
    assert merged.sets == svc.sets
    with pytest.raises(ValueError, match="same set or chain"):
        merge_rulesets(svc, svc)


def test_concatenated_map_elements_read_back_as_written() -> None:
    """``nft -j`` prints a concatenated map key as a concat expression."""
    name = service_chain(VIP, WEB[0])
    text = json.dumps(
        {
            "nftables": [
                {"table": {"family": "inet", "name": "meshroute"}},
                {
                    "map": {
                        "family": "inet",
                        "table": "meshroute",
                        "name": "mr_svc4",
                        "type": ["ipv4_addr", "inet_proto", "inet_service"],
                        "map": "verdict",
                        "elem": [
                            [{"concat": ["203.0.113.10", "tcp", 80]}, {"goto": {"target": name}}],
                        ],
                    }
                },
                {
                    "map": {
                        "family": "inet",
                        "table": "meshroute",
                        "name": "mr_ingress",
                        "type": "ifname",
                        "map": "verdict",
                        "elem": [["veth1", {"jump": {"target": "x"}}]],
                    }
                },
            ]
        }
    )
    state = parse_table_json(text)
    assert state is not None
    desired = plan_service_ruleset([ServiceNat(VIP, WEB, (A,))]).sets["mr_svc4"]
    assert state.sets["mr_svc4"] == desired
    assert state.sets["mr_ingress"].elements == frozenset({'"veth1" : jump x'})
