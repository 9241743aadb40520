"""Kubernetes' NetworkPolicy e2e model on one real node: namespaces x, y, z
with pods a, b, c each (routed pods made by hand, WorkloadEndpoint records
written into etcd), servers on TCP and UDP 80 and 81. Each case applies
manifests with the CLI, waits for the node to apply them, probes the whole
9x8 x port truth table with real connections, and compares it with the
table the reference evaluator (written from the Kubernetes spec) expects;
a failure prints the differing cells. The cases and the
table are shared with the lab's version across nodes and racks
(``test_lab_policy.py``) in ``tests/harness/policy_cases.py``."""

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
from tests.harness.policy_cases import CASES, NAMED, NAMESPACES, PODS, truth_table
from tests.harness.policy_pods import Pod, PodNode, Servers

pytestmark = [pytest.mark.etcd, pytest.mark.netns, pytest.mark.slow]


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

    def etcd_revision(self) -> int:
        async def read() -> int:
            store = EtcdStore([self.etcd.endpoint])
            try:
                return (await store.list(self.prefix.encode())).revision
            finally:
                await store.close()

        return asyncio.run(read())

    def settle(self, change: Any) -> None:
        """Make a change and wait until the node's kernel enforces etcd as it
        stands after it. Waiting for any new transaction was not enough: a
        change of two writes (apply the new policies, delete the old one)
        was once probed between them, on a loaded machine."""
        change()
        want = self.etcd_revision()

        def applied() -> bool:
            p = self.node.status()["policy"]
            return bool(p["appliedRevision"] >= want and p["converged"])

        wait_for(f"policy at etcd revision {want} applied", applied, 30)

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
        self.last, wrong = truth_table(self.pods, self.policies, self.ns_labels)
        assert not wrong, f"{case}: {len(wrong)} cells differ\n" + "\n".join(wrong)


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
