"""The lab with real ``meshroute node`` processes (the lab's node starter),
two racks of two nodes with two pods each, dual stack, in the three
topologies: full mesh, eBGP to the ToRs, clients of the meshroute reflector
pair, with routed pods (``meshroute-cni``: a veth and a /32 and /128 route
each, no bridge); and the mesh once more with L2-segment pods (Debian's
bridge plugin); and the ToR topology with IPv6 on the IPv4 sessions
(``ipv6Transport: MultiProtocol``). Every pod reaches every pod on both
families (``ping`` and ``ping -6``, across racks too); the routes each node programmed for each
family are of the kind the topology calls for (VXLAN across racks where the
fabric does not carry pod routes, over the IPv6 underlay for IPv6; direct
via the ToR where it does)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lab.build import start_meshroute_node
from lab.netns import run
from lab.status import (
    NodeRoute,
    node_routes,
    node_sessions,
    pod_routes_missing,
    tentative_addresses,
)
from lab.topology import LabParams, NodePlan
from lab.up import lab_down, lab_up

pytestmark = [pytest.mark.netns, pytest.mark.etcd, pytest.mark.slow]
# "mrlab" is the real lab's; one prefix per test process so that concurrent
# runs never sweep each other's namespaces
PREFIX = f"mrlabt{os.getpid()}x"


@pytest.mark.parametrize(
    ("topology", "pod_mode", "transport"),
    [
        ("mesh", "routed", "IPv6Peers"),
        ("tor", "routed", "IPv6Peers"),
        ("rr", "routed", "IPv6Peers"),
        ("mesh", "bridge", "IPv6Peers"),
        ("tor", "routed", "MultiProtocol"),
    ],
)
def test_every_pod_reaches_every_pod(
    tmp_path: Path, topology: str, pod_mode: str, transport: str
) -> None:
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
        dual_stack=True,
        ipv6_transport=transport,  # type: ignore[arg-type]
    )
    res = lab_up(
        params, start_meshroute_node, prefix=PREFIX, say=lambda _m: None, converge_timeout=20
    )
    try:
        for family, matrix in (("IPv4", res.matrix), ("IPv6", res.matrix6)):
            assert matrix is not None
            assert len(matrix.labels) == 8
            assert matrix.all_ok, (
                family,
                matrix.failures,
                pod_routes_missing(res.lab),
                tentative_addresses(res.lab),
            )
        for pod in res.lab.state.pods:
            own = run(["ip", "-n", pod.netns, "addr", "show", "dev", "eth0"])
            default = run(["ip", "-n", pod.netns, "-4", "route", "show", "default"])
            if pod_mode == "routed":
                assert f"{pod.address}/32" in own and "via 169.254.1.1" in default
                assert f"{pod.address6}/128" in own
            else:
                assert f"{pod.address}/26" in own and f"{pod.address6}/122" in own
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
            # IPv6 sessions exactly where ipv6Transport asks for them, all up
            sessions = node_sessions(res.lab, node)
            assert not isinstance(sessions, str), sessions
            assert {s.state for s in sessions} == {"established"}, sessions
            on_v6 = [s.peer for s in sessions if ":" in s.peer]
            assert bool(on_v6) == (transport == "IPv6Peers"), sessions
            for version in (4, 6):
                _assert_route_kinds(
                    topology, res.lab.plan.nodes, node, node_routes(ns, version=version), version
                )
    finally:
        lab_down(params.run_dir, PREFIX, say=lambda _m: None)
    assert not any(n.startswith(PREFIX) for n in run(["ip", "netns", "list"]).split())


def _assert_route_kinds(
    topology: str,
    nodes: tuple[NodePlan, ...],
    node: NodePlan,
    routes: list[NodeRoute],
    version: int,
) -> None:
    others = [r for r in routes if r.kind != "blackhole"]
    assert len(others) == 3, routes  # one block per other node
    if topology == "tor":
        # all through the ToR, which is on the node's subnet
        gateway = node.gateway if version == 4 else node.gateway6
        rack = {n.ip if version == 4 else n.ip6 for n in nodes if n.rack == node.rack}
        assert {r.kind for r in others} == {"direct"} and {r.via for r in others} <= {
            gateway,
            *rack,
        }
    else:
        # the rack mate directly, the other rack through VXLAN (IPv6 over
        # the IPv6 underlay: vxlan-v6.mesh)
        assert sorted(r.kind for r in others) == ["direct", "vxlan", "vxlan"], routes
        if version == 6:
            assert {r.dev for r in others if r.kind == "vxlan"} == {"vxlan-v6.mesh"}, routes
