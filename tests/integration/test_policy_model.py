"""Hypothesis model test: random Kubernetes NetworkPolicies, pod labels,
named ports and namespace labels are validated and lowered as the CLI and
the node do, compiled, and applied to real nftables in a node namespace
with routed pods; every probe (TCP and UDP, IPv4 and IPv6, real
connections) must get the verdict of the reference evaluator written from
the Kubernetes spec (``tests/harness/k8s_policy_model``).

The pods are made once; each example changes labels, ports and policies
through the same reconciler, so examples also exercise its incremental
passes from one ruleset to the next."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from felix_lite.nft_lib import NftLib
from felix_lite.nft_reconciler import PolicyReconciler
from felix_lite.policy_compiler import plan_policy_ruleset
from felix_lite.policy_inputs import NamedPort
from lab.netns import NetnsFactory
from meshroute.policy_lowering import plan_policy_input
from meshroute.policy_resources import (
    NamespaceResource,
    NetworkPolicyResource,
    namespace_problems,
    network_policy_problems,
)
from meshroute.policy_store import PolicyState
from tests.harness.k8s_policy_model import ModelPod, allowed
from tests.harness.policy_pods import PodNode, Servers, probe_all

pytestmark = [pytest.mark.netns, pytest.mark.slow]

PODS = (("x", "a"), ("x", "b"), ("y", "a"), ("y", "b"))
NAMESPACES = ("x", "y")
KINDS = (("tcp", 80, 4), ("tcp", 81, 4), ("udp", 80, 4), ("tcp", 80, 6))

label_sets = st.fixed_dictionaries(
    {}, optional={"app": st.sampled_from(["a", "b"]), "tier": st.sampled_from(["1", "2"])}
)
ns_label_sets = st.fixed_dictionaries({}, optional={"team": st.sampled_from(["p", "q"])})
named_ports = st.fixed_dictionaries(
    {}, optional={"web": st.sampled_from([("TCP", 80), ("TCP", 81), ("UDP", 80)])}
)


@st.composite
def selectors(draw: st.DrawFn, keys: tuple[str, ...], values: tuple[str, ...]) -> dict[str, Any]:
    sel: dict[str, Any] = {}
    if draw(st.booleans()):
        sel["matchLabels"] = draw(
            st.dictionaries(st.sampled_from(keys), st.sampled_from(values), max_size=2)
        )
    if draw(st.booleans()):
        exprs = []
        for _ in range(draw(st.integers(0, 2))):
            op = draw(st.sampled_from(["In", "NotIn", "Exists", "DoesNotExist"]))
            e: dict[str, Any] = {"key": draw(st.sampled_from(keys)), "operator": op}
            if op in ("In", "NotIn"):
                e["values"] = draw(st.lists(st.sampled_from(values), min_size=1, max_size=2))
            exprs.append(e)
        sel["matchExpressions"] = exprs
    return sel


pod_selectors = selectors(("app", "tier"), ("a", "b", "1", "2"))
ns_selectors = selectors(("team", "kubernetes.io/metadata.name"), ("p", "q", "x", "y"))
BLOCKS = {
    "10.244.0.0/24": ["10.244.0.1/32", "10.244.0.2/31", "10.244.0.4/32"],
    "10.244.0.0/30": ["10.244.0.2/32", "10.244.0.0/31"],
    "10.244.0.4/30": ["10.244.0.4/32"],
    "0.0.0.0/0": ["10.244.0.0/30"],
    "fd00:244::/64": ["fd00:244::1/128"],
}


@st.composite
def peers(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["pod", "ns", "both", "ipBlock"]))
    if kind == "ipBlock":
        cidr = draw(st.sampled_from(sorted(BLOCKS)))
        block: dict[str, Any] = {"cidr": cidr}
        excepts = draw(st.lists(st.sampled_from(BLOCKS[cidr]), max_size=2, unique=True))
        if excepts:
            block["except"] = excepts
        return {"ipBlock": block}
    peer: dict[str, Any] = {}
    if kind in ("pod", "both"):
        peer["podSelector"] = draw(pod_selectors)
    if kind in ("ns", "both"):
        peer["namespaceSelector"] = draw(ns_selectors)
    return peer


@st.composite
def ports(draw: st.DrawFn) -> dict[str, Any]:
    p: dict[str, Any] = {}
    proto = draw(st.sampled_from([None, "TCP", "UDP"]))
    if proto:
        p["protocol"] = proto
    port = draw(st.sampled_from([None, 80, 80, 81, "web", "web", "nothing"]))
    if port is not None:
        p["port"] = port
    if port == 80 and draw(st.booleans()):
        p["endPort"] = draw(st.sampled_from([80, 81, 1000]))
    return p


def optional_list(inner: st.SearchStrategy[Any], max_size: int) -> st.SearchStrategy[Any]:
    """Absent, empty (both "all" in Kubernetes) or, more often, some items:
    lists that allow everything say little about the dataplane."""
    some = st.lists(inner, min_size=1, max_size=max_size)
    return st.one_of(st.none(), st.just([]), some, some, some)


@st.composite
def rules(draw: st.DrawFn, peers_key: str) -> dict[str, Any]:
    r: dict[str, Any] = {}
    got = draw(optional_list(peers(), 2))
    if got is not None:
        r[peers_key] = got
    got = draw(optional_list(ports(), 2))
    if got is not None:
        r["ports"] = got
    return r


@st.composite
def policies(draw: st.DrawFn, index: int) -> dict[str, Any]:
    spec: dict[str, Any] = {"podSelector": draw(pod_selectors)}
    types = draw(st.sampled_from([None, ["Ingress"], ["Egress"], ["Ingress", "Egress"]]))
    if types is not None:
        spec["policyTypes"] = types
    for key, peers_key in (("ingress", "from"), ("egress", "to")):
        got = draw(optional_list(rules(peers_key), 1))
        if got is not None:
            spec[key] = got
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": f"p{index}", "namespace": draw(st.sampled_from(NAMESPACES))},
        "spec": spec,
    }


@st.composite
def worlds(draw: st.DrawFn) -> dict[str, Any]:
    n = draw(st.integers(0, 2))
    return {
        "labels": [draw(label_sets) for _ in PODS],
        "ports": [draw(named_ports) for _ in PODS],
        "ns_labels": {ns: draw(ns_label_sets) for ns in NAMESPACES},
        "policies": [draw(policies(i)) for i in range(n)],
    }


class Rig:
    def __init__(self, netns: NetnsFactory) -> None:
        self.node = PodNode(netns)
        self.pods = [self.node.add_pod(name, ns, i + 1) for i, (ns, name) in enumerate(PODS)]
        for p in self.pods:
            p.name = f"{p.namespace}-{p.name}"
        self.servers = Servers(self.pods, tcp=(80, 81), udp=(80,))
        self.nft = NftLib(self.node.ns.name)
        self.reconciler = PolicyReconciler(self.nft)


@pytest.fixture
def rig(netns: NetnsFactory) -> Iterator[Rig]:
    r = Rig(netns)
    yield r
    r.servers.close()
    r.nft.close()


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(world=worlds())
def test_nftables_agrees_with_the_kubernetes_model(rig: Rig, world: dict[str, Any]) -> None:
    for pod, labels, named in zip(rig.pods, world["labels"], world["ports"], strict=True):
        pod.labels = labels
        pod.ports = tuple(NamedPort(n, proto.lower(), port) for n, (proto, port) in named.items())
    nps = [NetworkPolicyResource.model_validate(p) for p in world["policies"]]
    for r in nps:
        assert network_policy_problems(r) == []
    nss = [
        NamespaceResource.model_validate(
            {
                "apiVersion": "meshroute.io/v1",
                "kind": "Namespace",
                "metadata": {"name": n, "labels": lb},
            }
        )
        for n, lb in world["ns_labels"].items()
    ]
    assert all(namespace_problems(n) == [] for n in nss)
    state = PolicyState(tuple(nps), (), tuple(nss))
    endpoints = tuple(p.endpoint() for p in rig.pods)
    rig.reconciler.set_desired(plan_policy_ruleset(plan_policy_input("n1", state, endpoints, [])))
    result = asyncio.run(rig.reconciler.pass_once())
    assert result.error is None, result.error

    ns_labels = {
        n: {**lb, "kubernetes.io/metadata.name": n} for n, lb in world["ns_labels"].items()
    }
    model = [
        ModelPod(p.namespace, p.name, (p.ip4, p.ip6), p.labels, dict(named))
        for p, named in zip(rig.pods, world["ports"], strict=True)
    ]
    probes, expected, names = [], [], []
    for si, src in enumerate(rig.pods):
        for di, dst in enumerate(rig.pods):
            if si == di:
                continue
            for proto, port, fam in KINDS:
                probes.append((src, dst.ip4 if fam == 4 else dst.ip6, proto, port))
                expected.append(
                    allowed(
                        model[si], model[di], fam, proto.upper(), port, world["policies"], ns_labels
                    )
                )
                names.append(f"{src.name} -> {dst.name} {proto}/{port} v{fam}")
    got = probe_all(probes)
    wrong = [
        f"{n}: expected {'allow' if e else 'deny'}, got {'allow' if g else 'deny'}"
        for n, e, g in zip(names, expected, got, strict=True)
        if e != g
    ]
    assert not wrong, "\n".join(wrong)
