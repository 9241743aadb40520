"""The Kubernetes NetworkPolicy e2e model's shared parts: namespaces x, y, z
with pods a, b, c, their servers' ports and port names, the cases (manifests)
and the truth table: every pod to every other pod on every port, probed and
compared with what the reference evaluator (``k8s_policy_model``) expects."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from netaddr import IPAddress

from tests.harness.k8s_policy_model import ModelPod, allowed
from tests.harness.policy_pods import Pod, Probe, probe_all

NAMESPACES = ("x", "y", "z")
PODS = ("a", "b", "c")
PORTS = (("tcp", 80), ("tcp", 81), ("udp", 80), ("udp", 81))
NAMED = {f"serve-{port}-{proto}": (proto.upper(), port) for proto, port in PORTS}


def netpol(name: str, ns: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }


def pods(pod: str | None = None) -> dict[str, Any]:
    return {"matchLabels": {"pod": pod}} if pod else {}


def nss(ns: str | None = None) -> dict[str, Any]:
    return {"matchLabels": {"ns": ns}} if ns else {}


def truth_table(
    pods: Sequence[Pod],
    policies: Sequence[Mapping[str, Any]],
    ns_labels: Mapping[str, Mapping[str, str]],
    probe: Callable[[Sequence[Probe]], list[bool]] = probe_all,
) -> tuple[dict[str, bool], list[str]]:
    """Probe every cell (IPv4) and return the observed table and the cells
    that differ from the expected one."""
    labels = {n: {**lb, "kubernetes.io/metadata.name": n} for n, lb in ns_labels.items()}
    model = {
        p.ip4: ModelPod(
            p.namespace, p.name, tuple(IPAddress(a) for a in p.addresses), p.labels, NAMED
        )
        for p in pods
    }
    probes: list[Probe] = []
    want, cells = [], []
    for src in pods:
        for dst in pods:
            if src is dst:
                continue  # a pod reaching itself never leaves its namespace
            for proto, port in PORTS:
                probes.append((src, dst.ip4, proto, port))
                want.append(
                    allowed(
                        model[src.ip4], model[dst.ip4], 4, proto.upper(), port, policies, labels
                    )
                )
                cells.append(
                    f"{src.namespace}/{src.name} -> {dst.namespace}/{dst.name} {proto}/{port}"
                )
    got = probe(probes)
    wrong = [
        f"  {c}: expected {'allow' if w else 'DENY'}, got {'allow' if g else 'DENY'}"
        for c, w, g in zip(cells, want, got, strict=True)
        if w != g
    ]
    return dict(zip(cells, got, strict=True)), wrong


CASES: list[tuple[str, list[dict[str, Any]]]] = [
    (
        "default-deny ingress in x",
        [netpol("deny", "x", {"podSelector": {}, "policyTypes": ["Ingress"]})],
    ),
    (
        "default-deny egress in x",
        [netpol("deny", "x", {"podSelector": {}, "policyTypes": ["Egress"]})],
    ),
    (
        "allow from the same namespace",
        [netpol("same", "x", {"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}]})],
    ),
    (
        "namespaceSelector",
        [
            netpol(
                "from-y",
                "x",
                {
                    "podSelector": pods("a"),
                    "ingress": [{"from": [{"namespaceSelector": nss("y")}]}],
                },
            )
        ],
    ),
    (
        "pod and namespace selector in one peer (AND)",
        [
            netpol(
                "and",
                "x",
                {
                    "podSelector": pods("a"),
                    "ingress": [
                        {"from": [{"namespaceSelector": nss("y"), "podSelector": pods("b")}]}
                    ],
                },
            )
        ],
    ),
    (
        "pod and namespace selector as two peers (OR)",
        [
            netpol(
                "or",
                "x",
                {
                    "podSelector": pods("a"),
                    "ingress": [
                        {"from": [{"namespaceSelector": nss("y")}, {"podSelector": pods("b")}]}
                    ],
                },
            )
        ],
    ),
    (
        "ipBlock with except",
        [
            netpol(
                "block",
                "x",
                {
                    "podSelector": pods("a"),
                    "ingress": [
                        {
                            "from": [
                                {
                                    "ipBlock": {
                                        "cidr": "10.244.0.0/28",
                                        "except": ["10.244.0.5/32", "10.244.0.8/31"],
                                    }
                                }
                            ]
                        }
                    ],
                },
            )
        ],
    ),
    (
        "named port",
        [
            netpol(
                "named",
                "x",
                {"podSelector": pods("a"), "ingress": [{"ports": [{"port": "serve-81-tcp"}]}]},
            )
        ],
    ),
    (
        "endPort",
        [
            netpol(
                "range",
                "x",
                {
                    "podSelector": {},
                    "ingress": [{"ports": [{"protocol": "UDP", "port": 80, "endPort": 81}]}],
                },
            )
        ],
    ),
    (
        "two policies adding up",
        [
            netpol(
                "from-y",
                "x",
                {
                    "podSelector": pods("a"),
                    "ingress": [{"from": [{"namespaceSelector": nss("y")}]}],
                },
            ),
            netpol(
                "from-z-81",
                "x",
                {
                    "podSelector": pods("a"),
                    "ingress": [
                        {"from": [{"namespaceSelector": nss("z")}], "ports": [{"port": 81}]}
                    ],
                },
            ),
        ],
    ),
    (
        "default-deny both directions in y",
        [netpol("deny", "y", {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]})],
    ),
    (
        "an allow-all policy adds up with a deny-all one",
        [
            netpol("deny", "x", {"podSelector": {}, "policyTypes": ["Ingress"]}),
            netpol("all", "x", {"podSelector": pods("b"), "ingress": [{}]}),
        ],
    ),
    (
        "matchExpressions In and NotIn",
        [
            netpol(
                "expr",
                "x",
                {
                    "podSelector": {
                        "matchExpressions": [{"key": "pod", "operator": "In", "values": ["a", "b"]}]
                    },
                    "ingress": [
                        {
                            "from": [
                                {
                                    "namespaceSelector": {
                                        "matchExpressions": [
                                            {"key": "ns", "operator": "NotIn", "values": ["y"]}
                                        ]
                                    }
                                }
                            ]
                        }
                    ],
                },
            )
        ],
    ),
    (
        "matchExpressions Exists and DoesNotExist",
        [
            netpol(
                "exists",
                "z",
                {
                    "podSelector": {"matchExpressions": [{"key": "pod", "operator": "Exists"}]},
                    "ingress": [
                        {
                            "from": [
                                {
                                    "podSelector": {
                                        "matchExpressions": [
                                            {"key": "missing", "operator": "DoesNotExist"}
                                        ]
                                    },
                                    "namespaceSelector": nss("x"),
                                }
                            ]
                        }
                    ],
                },
            )
        ],
    ),
    (
        "from every namespace",
        [
            netpol(
                "any-ns",
                "z",
                {
                    "podSelector": pods("c"),
                    "ingress": [{"from": [{"namespaceSelector": {}}], "ports": [{"port": 80}]}],
                },
            )
        ],
    ),
    (
        "egress to an ipBlock",
        [
            netpol(
                "eg-block",
                "x",
                {
                    "podSelector": pods("b"),
                    "egress": [{"to": [{"ipBlock": {"cidr": "10.244.0.4/30"}}]}],
                },
            )
        ],
    ),
    (
        "egress named port",
        [
            netpol(
                "eg-named",
                "z",
                {
                    "podSelector": {},
                    "egress": [{"ports": [{"protocol": "UDP", "port": "serve-80-udp"}]}],
                },
            )
        ],
    ),
    (
        "a protocol without a port",
        [
            netpol(
                "udp-any",
                "y",
                {"podSelector": pods("a"), "ingress": [{"ports": [{"protocol": "UDP"}]}]},
            )
        ],
    ),
    (
        "both types, ingress rules only: egress denied",
        [
            netpol(
                "both",
                "x",
                {
                    "podSelector": pods("c"),
                    "policyTypes": ["Ingress", "Egress"],
                    "ingress": [{"from": [{"podSelector": {}}]}],
                },
            )
        ],
    ),
    (
        "egress only UDP 53",
        [
            netpol(
                "dns",
                "y",
                {"podSelector": {}, "egress": [{"ports": [{"protocol": "UDP", "port": 53}]}]},
            )
        ],
    ),
    (
        "egress to a namespace on TCP",
        [
            netpol(
                "to-z",
                "y",
                {
                    "podSelector": pods("c"),
                    "egress": [
                        {"to": [{"namespaceSelector": nss("z")}], "ports": [{"protocol": "TCP"}]}
                    ],
                },
            )
        ],
    ),
]
