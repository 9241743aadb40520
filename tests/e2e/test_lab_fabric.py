"""The lab's BGP fabric carries pod routes, checked before ``meshroute node``
exists: each node is stood in for by a BIRD speaker (started through the
lab's node starter hook) that announces the node's pod block and installs
what it learns. ``tor``: blocks travel node -> ToR -> router -> ToR -> node
over eBGP with TCP-MD5, and a pod address on one rack reaches one on the
other. ``rr``: the pair of meshroute reflectors reflects each client's block
to the others with the originator's next hop and the pair's cluster id."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from bgpd.bird_config import (
    BgpNeighbor,
    BirdConfig,
    PrefixFilter,
    PrefixRange,
    render_bird,
)
from datastore.etcd import EtcdStore
from lab.build import (
    Lab,
    NodeLaunch,
    Spawned,
    apply_resources,
    build_underlay,
    spawn_in_netns,
    start_nodes,
    teardown,
)
from lab.netns import run
from lab.topology import CLUSTER_AS, LabParams, NodePlan, plan_lab, tor_as
from lab.up import wait_fabric
from meshroute.registry import NodeRecord, Registry

pytestmark = [pytest.mark.netns, pytest.mark.slow]
# "mrlab" is the real lab's; one prefix per test process so that concurrent
# runs never sweep each other's namespaces
PREFIX = f"mrlabt{os.getpid()}x"
PODS = PrefixFilter("pods", (PrefixRange("10.244.0.0/16", 26, 32),))


def _block(node: NodePlan) -> str:
    return f"10.244.{10 * node.rack + node.index}.0/26"


def _pod_ip(node: NodePlan) -> str:
    return f"10.244.{10 * node.rack + node.index}.1"


def bird_node(lab_ref: list[Lab], password: str | None) -> Callable[[NodeLaunch], Spawned]:
    """A node starter running BIRD in place of meshroute node: announces the
    node's block, a pod address on its loopback, learned routes to the kernel."""

    def start(launch: NodeLaunch) -> Spawned:
        lab = lab_ref[0]
        n = launch.node
        if lab.plan.params.topology == "tor":
            peers = [(f"tor{n.rack}", n.gateway, tor_as(n.rack))]
        else:
            peers = [(r.ns, r.ip, CLUSTER_AS) for r in lab.plan.reflectors]
        cfg = BirdConfig(
            router_id=n.ip,
            local_as=n.as_number,
            filters=(PODS,),
            neighbors=tuple(
                BgpNeighbor(
                    name=name,
                    address=addr,
                    peer_as=asn,
                    local_address=n.ip,
                    import_filter="pods",
                    export_filter="pods",
                    password=password,
                    connect_delay=1,
                    connect_retry=2,
                )
                for name, addr, asn in peers
            ),
            kernel_export_bgp=lab.plan.params.topology == "tor",
            kernel_learn=lab.plan.params.topology == "rr",
            originate=(_block(n),),
        )
        d = Path(n.run_dir)
        d.mkdir(parents=True, exist_ok=True)
        (d / "bird.conf").write_text(render_bird(cfg))
        run(["ip", "-n", launch.netns, "addr", "add", f"{_pod_ip(n)}/32", "dev", "lo"])
        argv = ["bird", "-f", "-c", str(d / "bird.conf"), "-s", str(d / "bird.ctl")]
        return spawn_in_netns(launch.netns, argv, launch.log_path)

    return start


def _lab(tmp_path: Path, topology: str, password: str | None) -> Lab:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    params = LabParams(
        topology=topology,  # type: ignore[arg-type]
        racks=2,
        nodes_per_rack=1,
        run_dir=str(tmp_path / "lab"),
        bgp_password=password,
    )
    return build_underlay(plan_lab(params), prefix=PREFIX)


def _birdc(sock: str, *args: str) -> str:
    return subprocess.run(
        ["birdc", "-s", sock, *args], capture_output=True, text=True, timeout=10
    ).stdout


def test_tor_fabric_carries_pod_blocks_between_racks(tmp_path: Path) -> None:
    lab = _lab(tmp_path, "tor", "lab-md5")
    try:
        start_nodes(lab, bird_node([lab], "lab-md5"))
        assert wait_fabric(lab, timeout=20, nodes_too=True), _birdc(
            lab.plan.speakers[1].socket_path, "show", "protocols"
        )
        n1, n2 = lab.plan.nodes
        ns1 = lab.netns(n1.ns)
        ns2 = lab.netns(n2.ns)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not (
            _block(n2) in ns1.ip("route") and _block(n1) in ns2.ip("route")
        ):
            time.sleep(0.2)
        # learned through rack 1's ToR, which is on the node's subnet
        assert f"{_block(n2)} via {n1.gateway}" in ns1.ip("route", "show", "proto", "bird")
        # and the router between the racks has both blocks in its kernel
        router = lab.netns("router").ip("route", "show", "proto", "bird")
        assert _block(n1) in router and _block(n2) in router
        ping = ns1.sh(f"ping -n -c1 -W2 -I {_pod_ip(n1)} {_pod_ip(n2)}", check=False)
        assert " 0% packet loss" in ping, ping
    finally:
        teardown(lab.state)


def test_tor_fabric_refuses_a_wrong_md5_password(tmp_path: Path) -> None:
    lab = _lab(tmp_path, "tor", "lab-md5")
    try:
        start_nodes(lab, bird_node([lab], "not-the-password"))
        assert wait_fabric(lab, timeout=15)  # router <-> ToRs: no password there
        time.sleep(4)  # several connect attempts of the nodes (retry 2 s)
        tor = lab.plan.speakers[1]
        node_rows = [
            line for line in _birdc(tor.socket_path, "show", "protocols").splitlines()
            if line.startswith("node_")
        ]  # fmt: skip
        assert node_rows and not any("Established" in r for r in node_rows)
    finally:
        teardown(lab.state)


def _register_nodes(lab: Lab) -> None:
    """What ``meshroute node`` would do for the stand-ins: their records in
    the registry, so the meshroute reflectors find them as clients."""

    async def main() -> None:
        store = EtcdStore([lab.etcd_endpoint], timeout=5)
        reg = Registry(store, lab.plan.params.etcd_prefix)
        try:
            for n in lab.plan.nodes:
                await reg.upsert(NodeRecord(name=n.name, ipv4=n.address, labels=dict(n.labels)))
        finally:
            await store.close()

    asyncio.run(main())


def test_reflector_pair_reflects_blocks_with_the_originator_next_hop(tmp_path: Path) -> None:
    lab = _lab(tmp_path, "rr", None)
    try:
        apply_resources(lab)
        _register_nodes(lab)
        start_nodes(lab, bird_node([lab], None))
        assert wait_fabric(lab, timeout=20, nodes_too=True)
        n1, n2 = lab.plan.nodes
        sock1 = str(Path(n1.run_dir) / "bird.ctl")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            out = _birdc(sock1, "show", "route", "all", _block(n2))
            if out.count("BGP.next_hop") >= 2:
                break
            time.sleep(0.2)
        # one copy from each reflector, both with node 2's own next hop
        assert out.count(f"BGP.next_hop: {n2.ip}") == 2, out
        assert "BGP.cluster_list: 244.0.0.1" in out
        assert f"BGP.originator_id: {n2.ip}" in out
    finally:
        teardown(lab.state)
