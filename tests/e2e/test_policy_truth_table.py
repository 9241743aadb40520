"""Kubernetes' NetworkPolicy e2e model on one real node: namespaces x, y, z
with pods a, b, c each (routed pods made by hand, WorkloadEndpoint records
written into etcd), servers on TCP and UDP 80 and 81. Each case applies
manifests with the CLI, waits for the node to apply them, probes the whole
9x8 x port truth table with real connections, and compares it with the
table the reference evaluator (written from the Kubernetes spec) expects;
a failure prints the differing cells. (The lab's version, across nodes and
racks, comes with routed pods in the lab.)"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from datastore.etcd import EtcdStore
from datastore.port import Put
from lab.etcd import EtcdCluster
from lab.netns import NetnsFactory
from lab.node_rig import NodeUnderTest, node_in, wait_for
from tests.harness.cli import cli
from tests.harness.k8s_policy_model import ModelPod, allowed
from tests.harness.policy_pods import Pod, PodNode, Servers, probe_all

pytestmark = [pytest.mark.etcd, pytest.mark.netns, pytest.mark.slow]

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


@dataclass
class Rig:
    etcd: EtcdCluster
    prefix: str
    node: NodeUnderTest
    pods: list[Pod]
    ns_labels: dict[str, dict[str, str]]
    policies: list[dict[str, Any]]

    def cli(self, *args: str, stdin: str | None = None) -> None:
        r = cli(self.etcd, self.prefix, *args, stdin=stdin)
        assert r.returncode == 0, r.stderr

    def write_endpoints(self, *which: Pod) -> None:
        async def put() -> None:
            store = EtcdStore([self.etcd.endpoint])
            try:
                for p in which:
                    rec = {
                        "node": "n1",
                        "namespace": p.namespace,
                        "pod": p.name,
                        "containerId": f"c-{p.namespace}-{p.name}",
                        "ifname": "eth0",
                        "hostIface": p.iface,
                        "ips": [f"{p.ip4}/32", f"{p.ip6}/128"],
                        "labels": p.labels,
                        "ports": [
                            {"name": n, "protocol": proto, "port": port}
                            for n, (proto, port) in NAMED.items()
                        ],
                    }
                    key = f"{self.prefix}/ipam/v1/endpoints/n1/c-{p.namespace}-{p.name}.eth0"
                    await store.txn([], [Put(key.encode(), json.dumps(rec).encode())])
            finally:
                await store.close()

        asyncio.run(put())

    def apply_namespaces(self) -> None:
        docs = [
            {
                "apiVersion": "meshroute.io/v1",
                "kind": "Namespace",
                "metadata": {"name": n, "labels": lb},
            }
            for n, lb in self.ns_labels.items()
        ]
        self.cli("apply", "-f", "-", stdin=yaml.safe_dump_all(docs))

    def settle(self, change: Any) -> None:
        """Make a change and wait until the node has applied a transaction."""
        before = self.node.status()["policy"]["transactions"]
        change()

        def applied() -> bool:
            p = self.node.status()["policy"]
            return p["transactions"] > before and p["converged"]

        wait_for("policy applied", applied, 30)

    def set_policies(self, *docs: dict[str, Any]) -> None:
        old = {(p["metadata"]["namespace"], p["metadata"]["name"]) for p in self.policies}
        new = {(p["metadata"]["namespace"], p["metadata"]["name"]) for p in docs}

        def change() -> None:
            if docs:
                self.cli("apply", "-f", "-", stdin=yaml.safe_dump_all(list(docs)))
            for ns, name in sorted(old - new):
                self.cli("delete", "networkpolicy", f"{ns}/{name}")

        self.settle(change)
        self.policies = list(docs)

    def check(self, case: str) -> None:
        ns_labels = {
            n: {**lb, "kubernetes.io/metadata.name": n} for n, lb in self.ns_labels.items()
        }
        model = {
            p.ip4: ModelPod(p.namespace, p.name, (p.ip4, p.ip6), p.labels, NAMED) for p in self.pods
        }
        probes, want, cells = [], [], []
        for src in self.pods:
            for dst in self.pods:
                if src is dst:
                    continue  # a pod reaching itself never leaves its namespace
                for proto, port in PORTS:
                    probes.append((src, dst.ip4, proto, port))
                    want.append(
                        allowed(
                            model[src.ip4],
                            model[dst.ip4],
                            4,
                            proto.upper(),
                            port,
                            self.policies,
                            ns_labels,
                        )
                    )
                    cells.append(
                        f"{src.namespace}/{src.name} -> {dst.namespace}/{dst.name} {proto}/{port}"
                    )
        got = probe_all(probes)
        wrong = [
            f"  {c}: expected {'allow' if w else 'DENY'}, got {'allow' if g else 'DENY'}"
            for c, w, g in zip(cells, want, got, strict=True)
            if w != g
        ]
        assert not wrong, f"{case}: {len(wrong)} cells differ\n" + "\n".join(wrong)
        self.last = dict(zip(cells, got, strict=True))


@pytest.fixture
def rig(
    etcd_server: EtcdCluster, etcd_prefix: str, netns: NetnsFactory, tmp_path: Path
) -> Iterator[Rig]:
    node_ns = PodNode(netns, "n1")
    node_ns.ns.sh(
        "ip link add eth0 type veth peer name eth1 && ip link set eth0 up && ip link set eth1 up"
    )
    node_ns.ns.sh("ip addr add 192.0.2.10/24 dev eth0")
    pods_ = [
        node_ns.add_pod(p, ns, i * 3 + j + 1, pod=p)
        for i, ns in enumerate(NAMESPACES)
        for j, p in enumerate(PODS)
    ]
    node = node_in(node_ns.ns, "n1", "192.0.2.10", 24, etcd_server, etcd_prefix, tmp_path / "n1")
    r = Rig(etcd_server, etcd_prefix, node, pods_, {n: {"ns": n} for n in NAMESPACES}, [])
    r.apply_namespaces()
    r.write_endpoints(*pods_)
    servers = Servers(pods_, tcp=(80, 81), udp=(80, 81))
    node.start()
    try:
        node.wait_ready()
        wait_for("first policy pass", lambda: node.status()["policy"]["converged"], 30)
        yield r
    finally:
        node.stop()
        servers.close()


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


def test_truth_tables(rig: Rig) -> None:
    for case, docs in CASES:
        rig.set_policies(*docs)
        rig.check(case)
    # spot checks that the model is not vacuous
    assert rig.last["x/a -> y/a tcp/80"] is True and rig.last["y/c -> x/a tcp/80"] is False

    # updating a policy
    from_y = next(docs[0] for case, docs in CASES if case == "namespaceSelector")
    rig.set_policies(from_y)
    rig.check("namespaceSelector again")
    assert rig.last["y/b -> x/a tcp/80"] and not rig.last["z/b -> x/a tcp/80"]
    from_z = json.loads(json.dumps(from_y).replace('"y"', '"z"'))
    rig.set_policies(from_z)
    rig.check("updated to namespace z")
    assert not rig.last["y/b -> x/a tcp/80"] and rig.last["z/b -> x/a tcp/80"]

    # relabelling a pod: y/b becomes "a" to an AND policy
    rig.set_policies(next(docs[0] for case, docs in CASES if "(AND)" in case))
    rig.check("AND before relabel")
    y_b = next(p for p in rig.pods if (p.namespace, p.name) == ("y", "b"))
    y_b.labels = {"pod": "c"}
    rig.settle(lambda: rig.write_endpoints(y_b))
    rig.check("AND after relabelling y/b")
    assert not rig.last["y/b -> x/a tcp/80"]
    y_b.labels = {"pod": "b"}
    rig.settle(lambda: rig.write_endpoints(y_b))

    # relabelling a namespace: z takes y's label
    rig.ns_labels["z"] = {"ns": "y"}
    rig.settle(rig.apply_namespaces)
    rig.check("AND after relabelling namespace z")
    assert rig.last["z/b -> x/a tcp/80"]
    rig.ns_labels["z"] = {"ns": "z"}
    rig.settle(rig.apply_namespaces)

    # deleting the policy: connectivity returns
    rig.set_policies()
    rig.check("no policy")
    assert all(rig.last.values())
