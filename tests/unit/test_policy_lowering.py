"""Lowering Kubernetes NetworkPolicy and GlobalNetworkPolicy to felix_lite's
rule model, WorkloadEndpoint records to endpoints, and counters to rows."""

from __future__ import annotations

import json
from typing import Any

import pytest
from netaddr import IPNetwork

from datastore.memory import MemoryStore
from datastore.port import Put
from felix_lite.nft_model import RuleCounter
from felix_lite.policy_inputs import Action, Direction, NamedPort, PortRange
from meshroute.node.policy import summarize_counters
from meshroute.policy_lowering import (
    EndpointRecordError,
    PolicyLowering,
    endpoint_from_record,
    k8s_selector_text,
    lower_global_policy,
    lower_network_policy,
    plan_namespaces,
)
from meshroute.policy_resources import (
    GlobalNetworkPolicyResource,
    LabelSelector,
    NamespaceResource,
    NetworkPolicyResource,
)
from meshroute.policy_store import PolicyState, PolicyStore, encode_resource


def np_(spec: dict[str, Any]) -> NetworkPolicyResource:
    return NetworkPolicyResource.model_validate(
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": "p", "namespace": "x"},
            "spec": spec,
        }
    )


def test_selector_text_and_meaning() -> None:
    s = LabelSelector.model_validate(
        {
            "matchLabels": {"app": "web"},
            "matchExpressions": [
                {"key": "tier", "operator": "NotIn", "values": ["db"]},
                {"key": "env", "operator": "Exists"},
                {"key": "legacy", "operator": "DoesNotExist"},
            ],
        }
    )
    text = k8s_selector_text(s)
    assert text == "app == 'web' && tier not in {'db'} && has(env) && !has(legacy)"
    assert k8s_selector_text(LabelSelector()) == "all()"


@pytest.mark.parametrize(
    ("spec", "types"),
    [
        ({}, {Direction.INGRESS}),
        ({"egress": [{}]}, {Direction.INGRESS, Direction.EGRESS}),
        ({"egress": []}, {Direction.INGRESS}),
        ({"policyTypes": ["Egress"]}, {Direction.EGRESS}),
    ],
)
def test_policy_types_default_as_kubernetes(spec: dict[str, Any], types: set[Direction]) -> None:
    assert lower_network_policy(np_(spec)).types == types


def test_absent_and_empty_mean_all() -> None:
    for rule in ({}, {"from": []}, {"ports": []}, {"from": [], "ports": []}):
        (r,) = lower_network_policy(np_({"ingress": [rule]})).ingress
        assert not r.source.selects_endpoints and r.protocol is None and not r.destination.ports
    assert lower_network_policy(np_({"ingress": []})).ingress == ()


def test_peers_scope() -> None:
    p = lower_network_policy(
        np_(
            {
                "ingress": [
                    {
                        "from": [
                            {"podSelector": {"matchLabels": {"a": "b"}}},
                            {"namespaceSelector": {}},
                            {"podSelector": {}, "namespaceSelector": {"matchLabels": {"t": "y"}}},
                            {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}},
                        ]
                    }
                ]
            }
        )
    )
    own, any_ns, both, block = (r.source for r in p.ingress)
    assert own.namespace == "x" and own.selector is not None and own.namespace_selector is None
    assert any_ns.namespace is None and any_ns.namespace_selector is not None
    assert any_ns.namespace_selector.match({}) and any_ns.selector is not None
    assert both.namespace_selector is not None and both.namespace_selector.text == "t == 'y'"
    assert block.nets == (IPNetwork("10.0.0.0/8"),) and block.not_nets == (
        IPNetwork("10.1.0.0/16"),
    )
    assert not block.selects_endpoints


def test_ports_grouped_by_protocol_and_bare_protocol_wins() -> None:
    p = lower_network_policy(
        np_(
            {
                "egress": [
                    {
                        "to": [{"podSelector": {}}],
                        "ports": [
                            {"port": 80},
                            {"port": "http"},
                            {"protocol": "UDP", "port": 53, "endPort": 60},
                            {"protocol": "SCTP", "port": 9},
                            {"protocol": "SCTP"},
                        ],
                    }
                ]
            }
        )
    )
    got = {r.protocol: r.destination.ports for r in p.egress}
    assert got == {
        "sctp": (),
        "tcp": (PortRange(80, 80), PortRange(name="http")),
        "udp": (PortRange(53, 60),),
    }
    assert all(r.destination.namespace == "x" for r in p.egress)  # the peer is the destination


def test_global_policy() -> None:
    r = GlobalNetworkPolicyResource.model_validate(
        {
            "apiVersion": "meshroute.io/v1",
            "kind": "GlobalNetworkPolicy",
            "metadata": {"name": "g"},
            "spec": {
                "order": 5,
                "selector": "has(app)",
                "egress": [
                    {
                        "action": "Deny",
                        "protocol": "ICMPv6",
                        "icmp": {"type": 128, "code": 0},
                        "destination": {"notNets": ["fd00::/8"]},
                    },
                    {
                        "action": "Pass",
                        "protocol": 17,
                        "source": {"ports": ["1000:2000", 53, "dns"]},
                    },
                ],
            },
        }
    )
    p = lower_global_policy(r)
    assert p.key == "gnp/g" and p.order == 5 and p.types == {Direction.EGRESS}
    deny, pass_ = p.egress
    assert (deny.action, deny.protocol, deny.icmp_type, deny.icmp_code) == (
        Action.DENY,
        "icmpv6",
        128,
        0,
    )
    assert deny.destination.not_nets == (IPNetwork("fd00::/8"),)
    assert pass_.protocol == "udp"
    assert pass_.source.ports == (PortRange(1000, 2000), PortRange(53, 53), PortRange(name="dns"))


def test_namespaces_get_their_name_label_even_without_a_resource() -> None:
    ns = NamespaceResource.model_validate(
        {
            "apiVersion": "meshroute.io/v1",
            "kind": "Namespace",
            "metadata": {"name": "y", "labels": {"t": "1"}},
        }
    )
    got = plan_namespaces(PolicyState((np_({}),), (), (ns,)), ())
    assert {n.name: dict(n.labels) for n in got} == {
        "x": {"kubernetes.io/metadata.name": "x"},
        "y": {"t": "1", "kubernetes.io/metadata.name": "y"},
    }


def record(**over: Any) -> bytes:
    d = {
        "node": "n1",
        "namespace": "x",
        "pod": "a",
        "containerId": "c1",
        "ifname": "eth0",
        "hostIface": "mr1234",
        "ips": ["10.244.0.5/32", "fd00::5/128"],
        "labels": {"app": "a"},
        "ports": [{"name": "http", "protocol": "TCP", "port": 80}],
    }
    d.update(over)
    return json.dumps(d).encode()


def test_endpoint_record_of_a_bridged_pod_has_no_interface() -> None:
    assert endpoint_from_record(record(hostIface="")).iface == ""


def test_endpoint_record() -> None:
    ep = endpoint_from_record(record())
    assert ep.iface == "mr1234" and ep.ips == (IPNetwork("10.244.0.5/32"), IPNetwork("fd00::5/128"))
    # the same values netaddr's own parser gives, host bits and a bare address included
    for text in ("10.1.2.3/24", "10.1.2.3", "fd00::1:0:5/64", "::ffff:10.0.0.1/128", "::"):
        (got,) = endpoint_from_record(record(ips=[text])).ips
        assert (got, got.ip, got.prefixlen) == (
            IPNetwork(text),
            IPNetwork(text).ip,
            IPNetwork(text).prefixlen,
        )
    assert ep.ports == (NamedPort("http", "tcp", 80),) and ep.labels == (("app", "a"),)


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"[1]",
        b"[" * 100_000,
        record(hostIface="x" * 16),
        record(ips=["10.300.0.1/32"]),
        record(ips=["10.0.0.1/33"]),
        record(ips=["fd00::1/129"]),
        record(ips=["10.0.0.1/-1"]),
        record(ips=["10.0.0.1/"]),
        record(ips=["10.0.0.1/٣"]),  # a digit, but not an ASCII one
        record(ips=["fe80::1%eth0/64"]),
        record(ips=[10]),
        record(ips=["x" * 100_000]),
        record(labels={"a": 1}),
        record(ports=[{"name": "x"}]),
        record(node=None),
    ],
)
def test_bad_endpoint_record_is_refused(raw: bytes) -> None:
    with pytest.raises(EndpointRecordError):
        endpoint_from_record(raw)


def test_counters_summed_over_families_per_rule() -> None:
    rows = summarize_counters(
        (
            RuleCounter("c", "np/x/p ingress r0 allow", 2, 100),
            RuleCounter("c", "np/x/p ingress r0 allow", 1, 50),
            RuleCounter("e", "default-deny ingress t1 np/x/p,np/x/q", 4, 240),
            RuleCounter("f", "invalid", 9, 9),
        )
    )
    assert rows == [
        {
            "policy": "default-deny np/x/p,np/x/q",
            "direction": "ingress",
            "rule": "t1",
            "action": "deny",
            "packets": 4,
            "bytes": 240,
        },
        {
            "policy": "np/x/p",
            "direction": "ingress",
            "rule": "r0",
            "action": "allow",
            "packets": 3,
            "bytes": 150,
        },
    ]


def test_the_example_policy_file_validates_and_lowers() -> None:
    from pathlib import Path

    from meshroute.resources import load_files

    loaded = load_files([str(Path(__file__).resolve().parents[2] / "configs" / "policy.yaml")])
    kinds = [item.resource.kind for item in loaded]
    assert kinds == ["NetworkPolicy", "GlobalNetworkPolicy", "Namespace"]
    web = lower_network_policy(loaded[0].resource)  # type: ignore[arg-type]
    assert web.ingress[0].destination.ports == (
        PortRange(80, 80),
        PortRange(name="metrics"),
    )


def test_lowering_with_memory_lowers_only_new_resources() -> None:
    a = np_({"podSelector": {"matchLabels": {"app": "a"}}, "ingress": [{}]})
    b = GlobalNetworkPolicyResource.model_validate(
        {
            "apiVersion": "meshroute.io/v1",
            "kind": "GlobalNetworkPolicy",
            "metadata": {"name": "g"},
            "spec": {"selector": "all()", "ingress": [{"action": "Deny"}]},
        }
    )
    lower = PolicyLowering()
    first = lower(PolicyState((a,), (b,)))
    assert first == (lower_global_policy(b), lower_network_policy(a))
    # the same resource objects: the same Policy objects (identity, not only equality)
    again = lower(PolicyState((a,), (b,)))
    assert all(x is y for x, y in zip(first, again, strict=True))
    # one changed: that one lowered anew, the other kept
    a2 = np_({"podSelector": {"matchLabels": {"app": "b"}}, "ingress": [{}]})
    changed = lower(PolicyState((a2,), (b,)))
    assert changed[0] is first[0]
    assert changed[1] == lower_network_policy(a2) != first[1]
    assert lower(PolicyState()) == ()


async def test_store_load_keeps_the_objects_of_unchanged_records() -> None:
    store = MemoryStore()
    ps = PolicyStore(store)
    a = np_({"podSelector": {}, "ingress": [{}]})
    await store.txn([], [Put(ps.key(a), encode_resource(a))])
    bad = ps.key_of("networkpolicies", "x/bad")
    await store.txn([], [Put(bad, b'{"kind": "NetworkPolicy"}')])
    first = await ps.load()
    assert first.network_policies == (a,)  # the bad record left out
    second = await ps.load()
    assert second.network_policies[0] is first.network_policies[0]
    a2 = np_({"podSelector": {}, "egress": [{}]})
    await store.txn([], [Put(ps.key(a2), encode_resource(a2))])
    assert (await ps.load()).network_policies == (a2,)  # a changed record is parsed anew
