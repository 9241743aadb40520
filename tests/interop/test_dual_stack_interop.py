"""A dual-stack ``meshroute node`` against real peers: its IPv6 block reaches
a BIRD ToR over an IPv6 session (``ipv6Transport: IPv6Peers``, Calico's
meaning) and a GoBGP peer over the IPv4 session (``MultiProtocol``), both
with the node's IPv6 address as next hop; the peer's IPv6 route comes back
into the node's kernel as a direct route through the peer.

Layout (one veth, both families)::

    pod --cni0-- [node ns] eth0 192.0.2.11 ==== 192.0.2.21 eth0 [peer ns]
                            2001:db8::11   ====  2001:db8::21
                 meshroute node (AS 64512)       BIRD or GoBGP (AS 65020)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from netaddr import IPAddress, IPNetwork

from ipam.cni_install import install_plugin
from lab.etcd import EtcdCluster
from lab.netns import Netns, NetnsFactory
from lab.node_rig import REPO, NodeUnderTest, add_pod_ips, node_in, wait_for
from tests.harness.bgp_peers import (
    BirdNeighbor,
    BirdSpec,
    GobgpNeighbor,
    GobgpSpec,
    link,
    start_bird,
    start_gobgp,
)

pytestmark = [pytest.mark.etcd, pytest.mark.netns, pytest.mark.slow]
NODE_IP, PEER_IP = "192.0.2.11", "192.0.2.21"
NODE_IP6, PEER_IP6 = "2001:db8::11", "2001:db8::21"
NODE_AS, PEER_AS = 64512, 65020
POOL6 = IPNetwork("fd00:10::/64")
PEER_BLOCK6 = "fd00:10::ffff:ffc0/122"  # in the IPv6 pool, claimed by nobody
POOLS = f"""
apiVersion: meshroute.io/v1
kind: IPPool
metadata: {{name: pods}}
spec: {{cidr: 10.244.0.0/16, blockSize: 26}}
---
apiVersion: meshroute.io/v1
kind: IPPool
metadata: {{name: pods6}}
spec: {{cidr: "{POOL6}", blockSize: 122}}
"""


def resource(kind: str, name: str, spec: dict[str, Any]) -> str:
    doc = {"apiVersion": "meshroute.io/v1", "kind": kind, "metadata": {"name": name}}
    return yaml.safe_dump({**doc, "spec": spec})


@dataclass
class Rig:
    node: NodeUnderTest
    peer_ns: Netns
    netns: NetnsFactory
    tmp: Path
    env: dict[str, str]
    cni_bin: Path

    def apply(self, text: str) -> None:
        p = subprocess.run(
            [sys.executable, "-m", "meshroute.cli", "apply", "-f", "-"],
            input=text,
            env=self.env,
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=30,
        )
        assert p.returncode == 0, p.stderr

    def block6(self) -> str:
        """A pod with both families; the IPv6 block the node claimed for it."""
        _, ips = add_pod_ips(self.node, self.netns, self.cni_bin, "pod", ipv6=True)
        [v6] = [ip for ip in ips if IPAddress(ip).version == 6]
        return str(IPNetwork(f"{v6}/122").cidr)

    def peer(self, address: str) -> dict[str, Any]:
        found = [p for p in self.node.status().get("peers", []) if p["peer"] == address]
        return found[0] if found else {}

    def kernel_route6(self, dst: str) -> list[dict[str, Any]]:
        out = self.node.ns.ip("-6", "-j", "route", "show", "exact", dst)
        return list(json.loads(out or "[]"))


@pytest.fixture
def rig(
    etcd_server: EtcdCluster, etcd_prefix: str, netns: NetnsFactory, tmp_path: Path
) -> Iterator[Rig]:
    env = {**os.environ, "MESHROUTE_ETCD": etcd_server.endpoint, "MESHROUTE_PREFIX": etcd_prefix}
    node_ns, peer_ns = netns.new("node"), netns.new("peer")
    link(node_ns, "eth0", f"{NODE_IP}/24", peer_ns, "eth0", f"{PEER_IP}/24")
    node_ns.ip("addr", "add", f"{NODE_IP6}/64", "dev", "eth0", "nodad")
    peer_ns.ip("addr", "add", f"{PEER_IP6}/64", "dev", "eth0", "nodad")
    node_ns.sh("sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1")
    node = node_in(
        node_ns,
        "node-a",
        NODE_IP,
        24,
        etcd_server,
        etcd_prefix,
        tmp_path / "node",
        ipv6=f"{NODE_IP6}/64",
    )
    cni_bin = tmp_path / "cni-bin"
    install_plugin(cni_bin)
    r = Rig(node, peer_ns, netns, tmp_path, env, cni_bin)
    r.apply(POOLS)
    node.start()
    try:
        node.wait_ready(30)
        yield r
    finally:
        node.stop()
        sys.stderr.write(node.logs() + "\n")


def test_ipv6_block_reaches_a_bird_tor_over_an_ipv6_session(rig: Rig) -> None:
    block = rig.block6()
    spec = BirdSpec(
        router_id=PEER_IP,
        local_as=PEER_AS,
        neighbors=(BirdNeighbor("node6", NODE_IP6, NODE_AS, PEER_IP6, ipv6=True),),
        static6=(PEER_BLOCK6,),
    )
    bird = start_bird(rig.peer_ns, rig.tmp / "bird", spec)
    try:
        rig.apply(resource("BGPPeer", "tor6", {"peerIP": PEER_IP6, "asNumber": PEER_AS}))
        bird.wait_established("node6", 30)
        wait_for("BIRD learns the IPv6 block", lambda: block in bird.routes_from("node6"), 15)
        shown = bird.birdc(f"show route {block} all")
        assert f"BGP.next_hop: {NODE_IP6}" in shown, shown
        assert rig.peer(PEER_IP6)["state"] == "established"

        wait_for("the node installs BIRD's block", lambda: rig.kernel_route6(PEER_BLOCK6), 15)
        [route] = rig.kernel_route6(PEER_BLOCK6)
        assert (route["gateway"], route["dev"]) == (PEER_IP6, "eth0"), route  # direct
        key = frozenset({("peer", PEER_IP6), ("family", "ipv6")})
        assert rig.node.metrics()[("meshroute_bgp_prefixes_accepted", key)] == 1
    finally:
        bird.stop()


def test_ipv6_block_reaches_gobgp_over_the_ipv4_session_with_mp_bgp(rig: Rig) -> None:
    block = rig.block6()
    rig.apply(resource("BGPConfiguration", "default", {"ipv6Transport": "MultiProtocol"}))
    gobgp = start_gobgp(
        rig.peer_ns,
        rig.tmp / "gobgp",
        GobgpSpec(PEER_IP, PEER_AS, (GobgpNeighbor(NODE_IP, NODE_AS),)),
    )
    try:
        rig.apply(resource("BGPPeer", "external", {"peerIP": PEER_IP, "asNumber": PEER_AS}))
        gobgp.wait_established(NODE_IP, 30)
        wait_for("GoBGP learns the IPv6 block", lambda: block in gobgp.rib("ipv6"), 15)
        path = json.loads(gobgp.cli("global", "rib", "-a", "ipv6", block, "-j"))[block][0]
        nexthops = [a["nexthop"] for a in path["attrs"] if "nexthop" in a]
        nexthops += [a["nexthop"] for a in path["attrs"] if a.get("type") == 14]
        assert NODE_IP6 in nexthops, path
        assert not rig.peer(PEER_IP6)  # one session, both families

        gobgp.add_route(PEER_BLOCK6, family="ipv6", extra=("nexthop", PEER_IP6))
        wait_for("the node installs GoBGP's block", lambda: rig.kernel_route6(PEER_BLOCK6), 15)
        [route] = rig.kernel_route6(PEER_BLOCK6)
        assert (route["gateway"], route["dev"]) == (PEER_IP6, "eth0"), route
        metrics = rig.node.metrics()
        for family, n in (("ipv4", 0), ("ipv6", 1)):
            key = frozenset({("peer", PEER_IP), ("family", family)})
            assert metrics[("meshroute_bgp_prefixes_accepted", key)] == n
    finally:
        gobgp.stop()
