"""The lab with real ``meshroute node`` processes (the lab's node starter),
two racks of two nodes with two pods each, in the three topologies: full
mesh, eBGP to the ToRs, clients of the meshroute reflector pair, with
routed pods (``meshroute-cni``: a veth and a /32 route each, no bridge);
and the mesh once more with L2-segment pods (Debian's bridge plugin). Every
pod reaches every pod; the routes each node programmed are of the kind the
topology calls for (VXLAN across racks where the fabric does not carry pod
routes, direct via the ToR where it does)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lab.build import start_meshroute_node
from lab.netns import run
from lab.status import node_routes
from lab.topology import LabParams
from lab.up import lab_down, lab_up

pytestmark = [pytest.mark.netns, pytest.mark.etcd, pytest.mark.slow]
# "mrlab" is the real lab's; one prefix per test process so that concurrent
# runs never sweep each other's namespaces
PREFIX = f"mrlabt{os.getpid()}x"


@pytest.mark.parametrize(
    ("topology", "pod_mode"),
    [("mesh", "routed"), ("tor", "routed"), ("rr", "routed"), ("mesh", "bridge")],
)
def test_every_pod_reaches_every_pod(tmp_path: Path, topology: str, pod_mode: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    params = LabParams(
        topology=topology,  # type: ignore[arg-type]
        racks=2,
        nodes_per_rack=2,
        pods_per_node=2,
        run_dir=str(tmp_path / "lab"),
        bgp_password="lab-md5" if topology != "mesh" else None,
        pod_mode=pod_mode,  # type: ignore[arg-type]
    )
    res = lab_up(
        params, start_meshroute_node, prefix=PREFIX, say=lambda _m: None, converge_timeout=20
    )
    try:
        assert res.matrix is not None
        assert len(res.matrix.labels) == 8
        assert res.matrix.all_ok, res.matrix.failures
        for pod in res.lab.state.pods:
            own = run(["ip", "-n", pod.netns, "-4", "addr", "show", "dev", "eth0"])
            default = run(["ip", "-n", pod.netns, "-4", "route", "show", "default"])
            if pod_mode == "routed":
                assert f"{pod.address}/32" in own and "via 169.254.1.1" in default
            else:
                assert f"{pod.address}/26" in own
        assert " mr" not in run(["ip", "-o", "link"]), "a pod veth in the root namespace"
        for node in res.lab.plan.nodes:
            ns = res.lab.state.ns(node.ns)
            bridges = run(["ip", "-n", ns, "-o", "link", "show", "type", "bridge"])
            pod_routes = run(["ip", "-n", ns, "-4", "route", "show", "scope", "link"])
            mine = [p for p in res.lab.state.pods if p.node == node.name]
            if pod_mode == "routed":
                assert bridges == "", bridges
                assert all(f"{p.address} dev mr" in pod_routes for p in mine), pod_routes
            else:
                assert "cni0" in bridges
            routes = node_routes(ns)
            others = [r for r in routes if r.kind != "blackhole"]
            assert len(others) == 3, routes  # one block per other node
            kinds = {r.kind for r in others}
            if topology == "tor":
                # all through the ToR, which is on the node's subnet
                assert kinds == {"direct"} and {r.via for r in others} <= {
                    node.gateway,
                    *(n.ip for n in res.lab.plan.nodes if n.rack == node.rack),
                }
            else:
                # the rack mate directly, the other rack through VXLAN
                assert sorted(r.kind for r in others) == ["direct", "vxlan", "vxlan"]
    finally:
        lab_down(params.run_dir, PREFIX, say=lambda _m: None)
    assert not any(n.startswith(PREFIX) for n in run(["ip", "netns", "list"]).split())
