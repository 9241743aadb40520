"""Two real ``meshroute node`` processes in the node-to-node mesh with BFD
turned on live (``nodeToNodeMeshBFDProfile``): our BFD daemon against
itself, both sides control-plane independent. A path blackholed in one
node's namespace (nftables; the link stays up) takes the other's block out
of its kernel within the detection time, and it comes back when healed."""

from __future__ import annotations

import ipaddress
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab.etcd import EtcdCluster
from lab.netns import NetnsFactory
from lab.node_rig import NodeUnderTest, add_pod, wait_for
from tests.harness.cli import cli
from tests.harness.node_pair import stop_nodes, two_nodes

pytestmark = [pytest.mark.etcd, pytest.mark.netns, pytest.mark.slow]
POOL = """
apiVersion: meshroute.io/v1
kind: IPPool
metadata: {name: pods}
spec: {cidr: 10.244.0.0/16, blockSize: 26}
"""
MESH_BFD = """
apiVersion: meshroute.io/v1
kind: BFDProfile
metadata: {name: mesh}
spec: {receiveInterval: 200, transmitInterval: 200, detectMultiplier: 3}
---
apiVersion: meshroute.io/v1
kind: BGPConfiguration
metadata: {name: default}
spec: {nodeToNodeMeshBFDProfile: mesh}
"""
SLACK_S = 0.4


def peer_of(node: NodeUnderTest, addr: str) -> dict[str, Any]:
    for p in node.status().get("peers", []):
        if p["peer"] == addr:
            return dict(p)
    return {}


@pytest.fixture
def pair(
    etcd_server: EtcdCluster, etcd_prefix: str, netns: NetnsFactory, tmp_path: Path
) -> Iterator[tuple[NodeUnderTest, NodeUnderTest, str, str]]:
    assert cli(etcd_server, etcd_prefix, "apply", "-f", "-", stdin=POOL).returncode == 0
    nodes, cni_bin = two_nodes(etcd_server, etcd_prefix, netns, tmp_path)
    try:
        for n in nodes:
            n.start()
        for n in nodes:
            n.wait_ready()
        blocks = []
        for n in nodes:
            _, ip = add_pod(n, netns, cni_bin, f"pod-{n.name}")
            blocks.append(str(ipaddress.ip_network(f"{ip}/26", strict=False)))
        yield nodes[0], nodes[1], blocks[0], blocks[1]
    finally:
        stop_nodes(nodes)


def test_mesh_bfd_on_live_then_a_blackholed_path_is_detected(
    pair: tuple[NodeUnderTest, NodeUnderTest, str, str],
    etcd_server: EtcdCluster,
    etcd_prefix: str,
) -> None:
    a, b, _, b_block = pair
    wait_for("a has b's block", lambda: a.routes(b_block), 30)
    since = peer_of(a, b.address)["since"]

    r = cli(etcd_server, etcd_prefix, "apply", "-f", "-", stdin=MESH_BFD)
    assert r.returncode == 0, r.stderr
    for n, other in ((a, b), (b, a)):
        wait_for(
            f"{n.name}: BFD Up to {other.name}",
            lambda n=n, o=other: (peer_of(n, o.address).get("bfd") or {}).get("state") == "up",  # type: ignore[misc]
            20,
        )
    assert peer_of(a, b.address)["since"] == since  # turning BFD on reset nothing
    time.sleep(1.5)  # past the Poll Sequence to the fast timers

    a.ns.sh(
        "nft add table inet mrtbh && "
        "nft add chain inet mrtbh in '{ type filter hook input priority 0; }' && "
        "nft add rule inet mrtbh in iifname eth0 drop"
    )
    t0 = time.monotonic()
    wait_for("b's block out of a's kernel", lambda: not a.routes(b_block), 5, 0.02)
    took = time.monotonic() - t0
    sys.stderr.write(f"mesh BFD 200 ms x 3: b's block gone from a after {took * 1000:.0f} ms\n")
    assert took <= 0.6 + SLACK_S, f"{took:.3f} s"
    assert peer_of(a, b.address)["downReason"] == "BFD down: control detection time expired"
    # b hears nothing from a either (a's input drops b's packets, so a's
    # session went down and a's packets now say so): b lets go as well
    wait_for(
        "b's BFD session down",
        lambda: (peer_of(b, a.address).get("bfd") or {}).get("state") != "up",
        5,
    )

    a.ns.sh("nft delete table inet mrtbh")
    wait_for("b's block back in a's kernel", lambda: a.routes(b_block), 30)
