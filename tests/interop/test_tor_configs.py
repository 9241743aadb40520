"""The worked top-of-rack configurations in configs/tor/ (README "Peering
with top-of-rack routers"), loaded verbatim into FRR and BIRD, against a
real ``meshroute node`` configured with configs/tor/meshroute.yaml: the
session comes up with TCP-MD5 and GTSM, the ToR re-advertises pod routes
between the rack's nodes, and keeps a stopped node's routes (graceful
restart helper).

Layout (rack r1, 192.0.2.0/26, a bridge in the ToR's namespace)::

    [tor ns] rack 192.0.2.1 (FRR or BIRD, AS 65001)
        +-- 192.0.2.10 [node ns]  meshroute node rack1-node1 (AS 64601)
        +-- 192.0.2.11 [node2 ns] BIRD standing in for rack1-node2 (AS 64602)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from netaddr import IPNetwork

from ipam.cni_install import install_plugin
from lab.etcd import EtcdCluster
from lab.netns import Netns, NetnsFactory, veth
from lab.node_rig import REPO, NodeUnderTest, add_pod, node_in, wait_for
from tests.harness.bgp_peers import Bird, BirdNeighbor, BirdSpec, start_bird, start_frr
from tests.harness.frr import FrrDaemons

pytestmark = [pytest.mark.etcd, pytest.mark.netns, pytest.mark.slow]
TOR_DIR = REPO / "configs" / "tor"
TOR_IP, NODE1_IP, NODE2_IP = "192.0.2.1", "192.0.2.10", "192.0.2.11"
NODE2_BLOCK = "10.244.202.0/26"
POOL = """
apiVersion: meshroute.io/v1
kind: IPPool
metadata: {name: pods}
spec: {cidr: 10.244.0.0/16, blockSize: 26}
"""


def apply(env: dict[str, str], text: str) -> None:
    p = subprocess.run(
        [sys.executable, "-m", "meshroute.cli", "apply", "-f", "-"],
        input=text,
        env=env,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=30,
    )
    assert p.returncode == 0, p.stderr


def node2_spec() -> BirdSpec:
    """rack1-node2 as the ToR expects it: AS 64602, TCP-MD5, GTSM."""
    return BirdSpec(
        router_id=NODE2_IP,
        local_as=64602,
        neighbors=(
            BirdNeighbor(
                "tor",
                TOR_IP,
                65001,
                NODE2_IP,
                password="change-me",
                extra="  ttl security on;",
            ),
        ),
        static4=(NODE2_BLOCK,),
    )


def node_routes(node: NodeUnderTest) -> set[str]:
    routes = json.loads(node.ns.ip("-j", "route", "show", "proto", "213") or "[]")
    return {r["dst"] for r in routes if r.get("gateway") in (TOR_IP, NODE2_IP)}


@dataclass
class Rack:
    netns: NetnsFactory
    tor_ns: Netns
    node: NodeUnderTest
    node2: Bird
    tmp: Path


@pytest.fixture
def rack(
    etcd_server: EtcdCluster, etcd_prefix: str, netns: NetnsFactory, tmp_path: Path
) -> Iterator[Rack]:
    env = {**os.environ, "MESHROUTE_ETCD": etcd_server.endpoint, "MESHROUTE_PREFIX": etcd_prefix}
    tor, n1, n2 = netns.new("tor"), netns.new("n1"), netns.new("n2")
    tor.ip("link", "add", "rack", "type", "bridge")
    tor.ip("addr", "add", f"{TOR_IP}/26", "dev", "rack")
    tor.ip("link", "set", "rack", "up")
    for ns, port, addr in ((n1, "p1", NODE1_IP), (n2, "p2", NODE2_IP)):
        veth(tor, port, ns, "eth0")
        tor.ip("link", "set", port, "master", "rack")
        tor.ip("link", "set", port, "up")
        ns.ip("addr", "add", f"{addr}/26", "dev", "eth0")
    tor.sh("sysctl -qw net.ipv4.ip_forward=1")
    apply(env, POOL)
    apply(env, (TOR_DIR / "meshroute.yaml").read_text())
    node = node_in(
        n1,
        "rack1-node1",
        NODE1_IP,
        26,
        etcd_server,
        etcd_prefix,
        tmp_path / "node",
        labels={"rack": "r1"},
    )
    node2 = start_bird(n2, tmp_path / "node2", node2_spec())
    node.start()
    try:
        # not ready before the ToR (started by the test) sends End-of-RIB
        wait_for("the node's IPAM service", lambda: Path(node.socket).exists(), 30)
        wait_for("the node's status", lambda: bool(node.status()), 30)
        yield Rack(netns, tor, node, node2, tmp_path)
    finally:
        node.stop()
        node2.stop()
        sys.stderr.write(node.logs() + "\n")


def tor_peer(node: NodeUnderTest) -> dict[str, object]:
    found = [p for p in node.status().get("peers", []) if p["peer"] == TOR_IP]
    return found[0] if found else {}


@pytest.mark.parametrize("tor_kind", ["frr", "bird"])
def test_worked_tor_config_peers_with_a_real_node(rack: Rack, tor_kind: str) -> None:
    node, node2 = rack.node, rack.node2
    cni_bin = rack.tmp / "cni-bin"
    install_plugin(cni_bin)
    _pod, ip = add_pod(node, rack.netns, cni_bin, "pod")
    my_block = str(IPNetwork(f"{ip}/26").cidr)
    tor: FrrDaemons | Bird
    if tor_kind == "frr":
        tor = start_frr(rack.tor_ns, (TOR_DIR / "frr.conf").read_text())
    else:
        tor = start_bird(rack.tor_ns, rack.tmp / "tor", (TOR_DIR / "bird.conf").read_text())
    try:
        up = lambda: tor_peer(node).get("state") == "established"  # noqa: E731
        wait_for("the node's session to the ToR (TCP-MD5, GTSM)", up, 40)
        node2.wait_established("tor", 30)
        assert tor_peer(node)["asn"] == 65001 and node.status()["asn"] == 64601
        assert "192.0.2.1" in node.ns.sh("nft list table inet meshroute_gtsm")
        # the ToR passes pod routes between the rack's nodes, both ways
        wait_for("the node installs node 2's block", lambda: NODE2_BLOCK in node_routes(node), 30)
        wait_for("node 2 learns the node's block", lambda: my_block in node2.routes_from("tor"), 30)
        # the ToR sends the node its own block back: refused as a loop, nothing else
        assert set(tor_peer(node)["rejected"]) <= {"as-path-loop"}, tor_peer(node)  # type: ignore[arg-type]
        assert my_block not in node_routes(node)

        # graceful-restart helper: a stopped node's routes stay at the ToR
        node.stop()
        time.sleep(3)
        assert my_block in node2.routes_from("tor")
    finally:
        if isinstance(tor, FrrDaemons):
            sys.stderr.write(tor.log()[-3000:])
        tor.stop()
