"""Kubernetes' NetworkPolicy e2e model across the lab's nodes and racks:
a ToR lab of two racks of two nodes running ``meshroute node``; namespaces
x, y, z (Namespace resources with labels) with pods a, b, c each, spread
round-robin over the four nodes and made by ``meshroute-cni`` with labels
and named ports in ``CNI_ARGS`` as an orchestrator passes them; servers on
TCP and UDP 80 and 81 (this kernel has no SCTP). Each case applies its
manifests with the CLI, waits until every node's ``/status`` reports the
etcd revision as enforced, probes the whole 9x8 x port table and compares it
with the reference evaluator's (``tests/harness/policy_cases.py``, shared
with the one-node test); then updating a policy, relabelling a pod
(``meshroute label pod``) and a namespace, and deleting every policy."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from netaddr import IPAddress

from lab.build import Lab, start_meshroute_node, teardown
from lab.netns import Netns, run
from lab.pods import create_pod, orchestrator_args
from lab.policy import apply_manifests, cli, policy_step, wait_enforced
from lab.topology import LabParams
from lab.up import lab_up
from tests.harness.policy_cases import CASES, NAMED, NAMESPACES, PODS, truth_table
from tests.harness.policy_pods import Pod, Servers

pytestmark = [pytest.mark.netns, pytest.mark.etcd, pytest.mark.slow]
PREFIX = f"mrlabp{os.getpid()}x"


@dataclass
class LabRig:
    lab: Lab
    pods: list[Pod]
    ns_labels: dict[str, dict[str, str]]
    policies: list[dict[str, Any]]
    last: dict[str, bool]

    def apply_namespaces(self) -> None:
        docs = [
            {"apiVersion": "meshroute.io/v1", "kind": "Namespace",
             "metadata": {"name": n, "labels": lb}}
            for n, lb in self.ns_labels.items()
        ]  # fmt: skip
        apply_manifests(self.lab, docs, "namespaces")
        wait_enforced(self.lab)

    def set_policies(self, *docs: dict[str, Any]) -> None:
        old = {(p["metadata"]["namespace"], p["metadata"]["name"]) for p in self.policies}
        new = {(p["metadata"]["namespace"], p["metadata"]["name"]) for p in docs}
        if docs:
            apply_manifests(self.lab, docs)
        for ns, name in sorted(old - new):
            cli(self.lab, "delete", "networkpolicy", f"{ns}/{name}")
        wait_enforced(self.lab)
        self.policies = list(docs)

    def label_pod(self, pod: Pod, value: str) -> None:
        cli(self.lab, "label", "pod", f"{pod.namespace}/{pod.name}", f"pod={value}")
        pod.labels = {"pod": value}
        wait_enforced(self.lab)

    def check(self, case: str) -> None:
        self.last, wrong = truth_table(self.pods, self.policies, self.ns_labels)
        assert not wrong, f"{case}: {len(wrong)} cells differ\n" + "\n".join(wrong)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[LabRig]:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    params = LabParams(
        topology="tor", racks=2, nodes_per_rack=2, pods_per_node=0, run_dir=str(tmp_path / "lab")
    )
    lab = lab_up(params, start_meshroute_node, prefix=PREFIX, say=lambda m: None).lab
    servers = None
    try:
        nodes = lab.plan.nodes
        ports = [(n, proto, port) for n, (proto, port) in NAMED.items()]
        pods = []
        for i, (ns, name) in enumerate((ns, p) for ns in NAMESPACES for p in PODS):
            node = nodes[i % len(nodes)]
            args = orchestrator_args(ns, name, {"pod": name}, ports)
            cni_bin = Path(lab.plan.run_dir) / "cni-bin"
            rec = create_pod(lab, node, f"{ns}-{name}", f"c-{ns}-{name}", cni_bin, args)
            pods.append(Pod(name, ns, Netns(rec.netns), "", IPAddress(rec.address), None,
                            {"pod": name}))  # fmt: skip
        # every rack holds pods of every namespace
        racks = {lab.plan.node(r.node).rack for r in lab.state.pods}
        assert len(racks) == 2
        r = LabRig(lab, pods, {n: {"ns": n} for n in NAMESPACES}, [], {})
        r.apply_namespaces()
        servers = Servers(pods, tcp=(80, 81), udp=(80, 81))
        yield r
    finally:
        if servers is not None:
            servers.close()
        teardown(lab.state)
    assert not any(n.startswith(PREFIX) for n in run(["ip", "netns", "list"]).split())


def test_truth_tables_across_nodes_and_racks(rig: LabRig) -> None:
    t0 = time.monotonic()
    rig.check("no policy")
    assert all(rig.last.values())
    for case, docs in CASES:
        rig.set_policies(*docs)
        rig.check(case)
    assert rig.last["x/a -> y/a tcp/80"] is True and rig.last["y/c -> x/a tcp/80"] is False

    # updating a policy
    from_y = next(docs[0] for case, docs in CASES if case == "namespaceSelector")
    rig.set_policies(from_y)
    rig.check("namespaceSelector again")
    assert rig.last["y/b -> x/a tcp/80"] and not rig.last["z/b -> x/a tcp/80"]
    rig.set_policies(json.loads(json.dumps(from_y).replace('"y"', '"z"')))
    rig.check("updated to namespace z")
    assert not rig.last["y/b -> x/a tcp/80"] and rig.last["z/b -> x/a tcp/80"]

    # relabelling a pod: y/b stops being "b" to an AND policy
    rig.set_policies(next(docs[0] for case, docs in CASES if "(AND)" in case))
    rig.check("AND before relabel")
    assert rig.last["y/b -> x/a tcp/80"]
    y_b = next(p for p in rig.pods if (p.namespace, p.name) == ("y", "b"))
    rig.label_pod(y_b, "c")
    rig.check("AND after relabelling y/b")
    assert not rig.last["y/b -> x/a tcp/80"]
    rig.label_pod(y_b, "b")

    # relabelling a namespace: z takes y's label
    rig.ns_labels["z"] = {"ns": "y"}
    rig.apply_namespaces()
    rig.check("AND after relabelling namespace z")
    assert rig.last["z/b -> x/a tcp/80"]
    rig.ns_labels["z"] = {"ns": "z"}
    rig.apply_namespaces()

    # deleting the policy: connectivity returns
    rig.set_policies()
    rig.check("no policy again")
    assert all(rig.last.values())
    print(f"{len(CASES) + 7} truth tables in {time.monotonic() - t0:.1f} s")


def test_demo_policy_step(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The policy step ``make demo`` runs, on a small dual-stack mesh lab
    (as the demo's): the matrix with denied pairs marked matches the policy,
    and after the policy is deleted every pod reaches every pod again."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    params = LabParams(
        topology="mesh",
        racks=2,
        nodes_per_rack=1,
        pods_per_node=2,
        run_dir=str(tmp_path / "lab"),
        dual_stack=True,
    )
    lab = lab_up(params, start_meshroute_node, prefix=PREFIX, say=lambda m: None).lab
    try:
        said: list[str] = []
        assert policy_step(lab, said.append)
    finally:
        teardown(lab.state)
    cells = capsys.readouterr().out.split()
    assert "LEAK" not in cells and "FAIL" not in cells
    # 4 pods: with the policy the client's row and the diagonal answer (4 + 3)
    # and the other 9 cells are denied; without it all 16 answer
    assert cells.count("deny") == 9 and cells.count("ok") == 7 + 16
    assert any("enforced on every node" in m for m in said)
