"""Pods in the lab, before ``meshroute node`` exists: the lab starts its
nodes through the starter callable it is given; here a stand-in starter
runs only the node's IPAM service (``meshroute ipam serve``) from the
node's ``node.yaml``. Pods come from Debian's bridge plugin with
``meshroute-cni-ipam``, or (the lab's default) from ``meshroute-cni``; pods
on one node reach each other and their node; CNI DEL gives every address
back; teardown removes the pods too."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest
import yaml
from netaddr import IPAddress, IPNetwork

from ipam.cni_install import install_plugin
from lab.build import (
    NodeLaunch,
    Spawned,
    apply_resources,
    build_underlay,
    meshroute_cli,
    spawn_in_netns,
    start_nodes,
    teardown,
    wait_nodes_ready,
)
from lab.netns import run
from lab.pods import Endpoint, create_pods, delete_pods, ping_matrix
from lab.state import record_process, still_ours
from lab.status import node_ready, summary
from lab.topology import POOL_BLOCK, LabParams, plan_lab
from lab.up import lab_down, lab_up

pytestmark = [pytest.mark.netns, pytest.mark.etcd, pytest.mark.slow]
# "mrlab" is the real lab's; one prefix per test process so that concurrent
# runs never sweep each other's namespaces
PREFIX = f"mrlabt{os.getpid()}x"


def ipam_only(launch: NodeLaunch) -> Spawned:
    """A stand-in for ``meshroute node``: the IPAM part, from node.yaml."""
    cfg = yaml.safe_load(launch.config_path.read_text())
    labels = ",".join(f"{k}={v}" for k, v in cfg["labels"].items())
    argv = [
        sys.executable, "-m", "meshroute.cli", "ipam", "serve",
        "--host", cfg["nodeName"], "--labels", labels,
        "--socket", cfg["ipam"]["socket"],
        "--etcd", ",".join(cfg["etcd"]["endpoints"]), "--prefix", cfg["etcd"]["prefix"],
    ]  # fmt: skip
    if cfg["ipam"]["l2Segment"]:
        argv.append("--l2-segment")
    if cfg.get("netns"):  # the process in the root namespace: pods' veths go to the node's
        argv += ["--netns", cfg["netns"]]
    return spawn_in_netns(None if launch.in_root else launch.netns, argv, launch.log_path)


@pytest.mark.parametrize("placement", ["root", "netns"])
def test_pods_through_the_bridge_plugin(tmp_path: Path, placement: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    params = LabParams(
        topology="tor",
        racks=2,
        nodes_per_rack=1,
        pods_per_node=2,
        run_dir=str(tmp_path / "lab"),
        node_placement=placement,  # type: ignore[arg-type]
        pod_mode="bridge",
    )
    lab = build_underlay(plan_lab(params), prefix=PREFIX)
    try:
        apply_resources(lab)
        got = json.loads(meshroute_cli(lab, "get", "pools", "-o", "json").stdout or "null")
        assert got is not None and "lab-pods" in json.dumps(got)

        start_nodes(lab, ipam_only)
        wait_nodes_ready(lab, timeout=30)
        cfg = yaml.safe_load(Path(lab.plan.nodes[0].config_path).read_text())
        assert cfg["etcd"]["endpoints"] == [lab.etcd_endpoint]
        assert ("netns" in cfg) == (placement == "root")

        # /readiness where node.yaml says (a static file stands in for the node)
        node = lab.plan.nodes[0]
        assert not node_ready(lab, node)
        (tmp_path / "www").mkdir()
        (tmp_path / "www" / "readiness").write_text("ok")
        port = cfg["http"]["listen"].split(":")[1]
        web = [sys.executable, "-m", "http.server", port, "--bind", "127.0.0.1"]
        web += ["--directory", str(tmp_path / "www")]
        ns = None if placement == "root" else lab.state.ns(node.ns)
        sp = spawn_in_netns(ns, web, tmp_path / "www.log")
        lab.record(record_process("web", node.ns, sp.pid, sp.argv))
        deadline = time.monotonic() + 10
        while not node_ready(lab, node) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert node_ready(lab, node)

        cni_bin = tmp_path / "cni-bin"
        install_plugin(cni_bin)
        by_node = {n.name: create_pods(lab, n, cni_bin) for n in lab.plan.nodes}
        pods = [p for ps in by_node.values() for p in ps]
        assert len({p.address for p in pods}) == len(pods) == 4
        blocks = {
            name: {IPNetwork(f"{p.address}/{POOL_BLOCK}").cidr for p in ps}
            for name, ps in by_node.items()
        }
        # each node's pods come from its own block
        assert all(len(b) == 1 for b in blocks.values())
        assert len(set.union(*blocks.values())) == len(lab.plan.nodes)

        for node in lab.plan.nodes:
            eps = [Endpoint(p.label, p.netns, p.address) for p in by_node[node.name]]
            eps.append(Endpoint(node.ns, lab.state.ns(node.ns), node.ip))
            m = ping_matrix(eps)
            assert m.all_ok, m.failures
            assert all(IPAddress(p.address) in IPNetwork("10.244.0.0/16") for p in pods)

        text = summary(lab, m)
        assert "Established" in text and "9/9 pairs answered" in text

        delete_pods(lab, cni_bin)
        show = json.loads(meshroute_cli(lab, "ipam", "show", "--json").stdout)
        assert sum(p["allocated"] for p in show["pools"].values()) == 0
    finally:
        procs = list(lab.state.processes)
        pod_ns = [p.netns for p in lab.state.pods]
        teardown(lab.state)
    names = run(["ip", "netns", "list"]).split()
    assert not any(n.startswith(PREFIX) for n in names)
    assert pod_ns and not set(pod_ns) & set(names)
    assert {p.role for p in procs} == {"etcd", "bird", "node", "web"}
    assert not any(still_ours(p) for p in procs)


def _no_lab_left() -> bool:
    return not any(n.startswith(PREFIX) for n in run(["ip", "netns", "list"]).split())


def test_lab_up_and_down_twice_in_one_run_dir(tmp_path: Path) -> None:
    """The whole sequence as ``meshroute lab up`` runs it, with the
    stand-in starter: one node, two pods that reach each other. The second
    lab in the same run dir starts from an empty etcd."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    params = LabParams(topology="tor", racks=1, nodes_per_rack=1, run_dir=str(tmp_path / "lab"))
    said: list[str] = []
    marker = tmp_path / "marker.yaml"
    marker.write_text(
        "apiVersion: meshroute.io/v1\nkind: IPPool\nmetadata: {name: from-the-first-lab}\n"
        "spec: {cidr: 10.99.0.0/16}\n"
    )
    for round_ in range(2):
        res = lab_up(params, ipam_only, prefix=PREFIX, say=said.append, converge_timeout=0)
        try:
            assert res.matrix is not None and res.matrix.all_ok, res.matrix
            assert len(res.matrix.labels) == 2
            # routed pods: their veths are in the node's namespace, never the root's
            assert " mr" not in run(["ip", "-o", "link"])
            assert " mr" in run(
                ["ip", "-n", res.lab.state.ns(res.lab.plan.nodes[0].ns), "-o", "link"]
            )
            assert any("pods" in s for s in said)
            pools = meshroute_cli(res.lab, "get", "pools").stdout
            assert "lab-pods" in pools
            if round_ == 0:
                assert meshroute_cli(res.lab, "apply", "-f", str(marker)).returncode == 0
            else:
                assert "from-the-first-lab" not in pools
        finally:
            lab_down(str(tmp_path / "lab"), prefix=PREFIX, say=said.append)
        assert _no_lab_left()
        assert not (tmp_path / "lab" / "state.json").exists()


def test_lab_up_with_a_node_that_dies_cleans_up(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")

    def dies(launch: NodeLaunch) -> Spawned:
        argv = [sys.executable, "-c", "import sys; print('no such node'); sys.exit(3)"]
        return spawn_in_netns(None, argv, launch.log_path)

    params = LabParams(topology="mesh", racks=1, nodes_per_rack=1, run_dir=str(tmp_path))
    with pytest.raises((RuntimeError, ProcessLookupError), match=r"exited|no such node"):
        lab_up(params, dies, prefix=PREFIX, say=lambda _m: None)
    assert _no_lab_left()
