"""Two meshroute nodes on one L2 segment (a veth between their namespaces,
192.0.2.0/24) for end-to-end tests: built here, started by the test (which
chooses their environment), stopped here with their logs on stderr."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path

from ipam.cni_install import install_plugin
from lab.etcd import EtcdCluster
from lab.netns import NetnsFactory, veth
from lab.node_rig import NodeUnderTest, node_in


def two_nodes(
    etcd_server: EtcdCluster, etcd_prefix: str, netns: NetnsFactory, tmp_path: Path
) -> tuple[list[NodeUnderTest], Path]:
    """node-a (192.0.2.11) and node-b (192.0.2.12), forwarding on, not
    started yet; and a CNI plugin directory holding meshroute's plugin."""
    a_ns, b_ns = netns.new("nodeA"), netns.new("nodeB")
    veth(a_ns, "eth0", b_ns, "eth0")
    nodes = []
    for ns, addr, name in ((a_ns, "192.0.2.11", "node-a"), (b_ns, "192.0.2.12", "node-b")):
        ns.ip("addr", "add", f"{addr}/24", "dev", "eth0")
        ns.sh("sysctl -qw net.ipv4.ip_forward=1")
        nodes.append(node_in(ns, name, addr, 24, etcd_server, etcd_prefix, tmp_path / name))
    cni_bin = tmp_path / "cni-bin"
    install_plugin(cni_bin)
    return nodes, cni_bin


def stop_nodes(nodes: Iterable[NodeUnderTest]) -> None:
    """Stop every node, then write their logs to stderr (shown on failure)."""
    nodes = list(nodes)
    for n in nodes:
        n.stop()
    for n in nodes:
        sys.stderr.write(n.logs() + "\n")
