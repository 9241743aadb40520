"""Two dual-stack ``meshroute node`` processes: one IPv4 subnet, but each on
its own IPv6 subnet (the underlay routes between them), so IPv4 pod routes
go direct while IPv6 pod routes need VXLAN over the IPv6 underlay
(``vxlan-v6.mesh``, Calico's vxlanModeV6). The nodes peer on both addresses
(``ipv6Transport: IPv6Peers``), register an IPv6 VTEP, and pods ping across
on both families; then IPv6 moves onto the IPv4 sessions live
(``MultiProtocol``)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from netaddr import IPAddress

from ipam.cni_install import install_plugin
from lab.etcd import EtcdCluster
from lab.netns import NetnsFactory, veth
from lab.node_rig import NodeUnderTest, add_pod_ips, node_in, wait_for
from tests.harness.cli import cli

pytestmark = [pytest.mark.etcd, pytest.mark.netns, pytest.mark.slow]
POOLS = """
apiVersion: meshroute.io/v1
kind: IPPool
metadata: {name: pods}
spec: {cidr: 10.244.0.0/16, blockSize: 26, vxlanMode: CrossSubnet}
---
apiVersion: meshroute.io/v1
kind: IPPool
metadata: {name: pods6}
spec: {cidr: "fd00:10::/64", blockSize: 122, vxlanMode: CrossSubnet}
"""
V6 = {
    "node-a": ("2001:db8:a::11", "2001:db8:b::/64"),
    "node-b": ("2001:db8:b::12", "2001:db8:a::/64"),
}


@dataclass
class Pair:
    a: NodeUnderTest
    b: NodeUnderTest
    cni_bin: Path
    netns: NetnsFactory
    etcd: EtcdCluster
    etcd_prefix: str


@pytest.fixture
def pair(
    etcd_server: EtcdCluster, etcd_prefix: str, netns: NetnsFactory, tmp_path: Path
) -> Iterator[Pair]:
    assert cli(etcd_server, etcd_prefix, "apply", "-f", "-", stdin=POOLS).returncode == 0
    a_ns, b_ns = netns.new("nodeA"), netns.new("nodeB")
    veth(a_ns, "eth0", b_ns, "eth0")
    nodes = []
    for ns, addr, name in ((a_ns, "192.0.2.11", "node-a"), (b_ns, "192.0.2.12", "node-b")):
        addr6, other_subnet = V6[name]
        ns.ip("addr", "add", f"{addr}/24", "dev", "eth0")
        ns.ip("addr", "add", f"{addr6}/64", "dev", "eth0", "nodad")
        # the underlay's route to the other IPv6 subnet: not a connected one
        ns.ip("-6", "route", "add", other_subnet, "dev", "eth0")
        ns.sh("sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1")
        work = tmp_path / name
        nodes.append(
            node_in(ns, name, addr, 24, etcd_server, etcd_prefix, work, ipv6=f"{addr6}/64")
        )
    cni_bin = tmp_path / "cni-bin"
    install_plugin(cni_bin)
    try:
        for n in nodes:
            n.start()
        for n in nodes:
            n.wait_ready()
        yield Pair(nodes[0], nodes[1], cni_bin, netns, etcd_server, etcd_prefix)
    finally:
        for n in nodes:
            n.stop()
        for n in nodes:
            sys.stderr.write(n.logs() + "\n")


def routes6(n: NodeUnderTest) -> list[dict[str, Any]]:
    """The IPv6 routes this node owns (proto 213) in its namespace."""
    return list(json.loads(n.ns.ip("-6", "-j", "route", "show", "proto", "213") or "[]"))


def test_dual_stack_pods_ping_on_both_families_ipv6_over_vxlan_v6(pair: Pair) -> None:
    a, b = pair.a, pair.b
    pod_a, ips_a = add_pod_ips(a, pair.netns, pair.cni_bin, "pod-a", ipv6=True)
    pod_b, ips_b = add_pod_ips(b, pair.netns, pair.cni_bin, "pod-b", ipv6=True)
    # IPv6 addresses answer only once duplicate address detection is done
    for ns in (pod_a, pod_b, a.ns, b.ns):
        wait_for(
            "no tentative IPv6 address", lambda ns=ns: not ns.ip("-6", "addr", "show", "tentative")
        )
    [v4_b] = [ip for ip in ips_b if IPAddress(ip).version == 4]
    [v6_b] = [ip for ip in ips_b if IPAddress(ip).version == 6]
    assert len(ips_a) == 2

    def peers_up() -> bool:
        peers = {p["peer"]: p["state"] for p in a.status()["peers"]}
        return peers == {"192.0.2.12": "established", "2001:db8:b::12": "established"}

    wait_for("a has both sessions to b", peers_up)
    [r6] = wait_for(
        "a routes b's IPv6 block over vxlan-v6.mesh",
        lambda: [r for r in routes6(a) if r.get("dev") == "vxlan-v6.mesh"],
    )
    assert r6["dst"].startswith("fd00:10::") and {"mtu": 1430} in r6["metrics"], r6
    [r4] = wait_for(
        "a routes b's IPv4 block direct",
        lambda: [r for r in a.routes() if r.get("gateway") == "192.0.2.12"],
    )
    assert r4["dev"] == "eth0"
    wait_for("b routes a's blocks back", lambda: routes6(b) and len(b.routes()) == 1)
    for target, flag in ((v4_b, ""), (v6_b, "-6 ")):
        out = pod_a.sh(f"ping {flag}-c 3 -i 0.2 -W 2 {target}", check=False)
        assert " 0% packet loss" in out, out

    # live: IPv6 moves onto the IPv4 sessions (MP-BGP); the IPv6 sessions go
    # and the IPv6 routes stay, now learned over IPv4 with an IPv6 next hop
    mp = "apiVersion: meshroute.io/v1\nkind: BGPConfiguration\nmetadata: {name: default}\n"
    mp += "spec: {ipv6Transport: MultiProtocol}\n"
    assert cli(pair.etcd, pair.etcd_prefix, "apply", "-f", "-", stdin=mp).returncode == 0

    def one_session() -> bool:
        peers = {p["peer"]: p["state"] for p in a.status()["peers"]}
        return peers == {"192.0.2.12": "established"}

    wait_for("a keeps one session to b", one_session)

    def v6_over_ipv4(n: NodeUnderTest, peer: str) -> bool:
        key = frozenset({("peer", peer), ("family", "ipv6")})
        return n.metrics().get(("meshroute_bgp_prefixes_accepted", key)) == 1

    wait_for("a holds b's IPv6 block from the IPv4 session", lambda: v6_over_ipv4(a, "192.0.2.12"))
    wait_for("b holds a's IPv6 block from the IPv4 session", lambda: v6_over_ipv4(b, "192.0.2.11"))
    wait_for(
        "a routes b's IPv6 block learned over IPv4",
        lambda: [r for r in routes6(a) if r.get("dev") == "vxlan-v6.mesh"],
    )
    wait_for("b routes a's IPv6 block back", lambda: routes6(b))
    out = pod_a.sh(f"ping -6 -c 3 -i 0.2 -W 2 {v6_b}", check=False)
    assert " 0% packet loss" in out, out
