"""Service addresses end to end: two real ``meshroute node`` processes on
one segment with a BIRD ToR and a GoBGP router, a pod with a name server
behind each node, and a client behind the ToR.

    [client] 198.51.100.10 -- 198.51.100.1 [tor] BIRD 192.0.2.21 (AS 65020) --+
                                           [gobgp] 192.0.2.22 (AS 65030)     --+-- br0 [sw]
          pod-a -- [node-a] 192.0.2.11 (AS 64512) --+                           |
          pod-b -- [node-b] 192.0.2.12 (AS 64512) --+---------------------------+

A ServiceAddress with both pods as endpoints: both routers learn its /32
from both nodes (BIRD installs one ECMP route), 100 connections from the
client reach both pods. One endpoint removed: its node withdraws, no new
connection fails meanwhile, the routers converge on the other node. The
BGPConfiguration's service ranges come and go live.
"""

from __future__ import annotations

import json
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from ipam.cni_install import install_plugin
from lab.etcd import EtcdCluster
from lab.netns import Netns, NetnsFactory, plug, switch, veth
from lab.node_rig import NodeUnderTest, add_pod, nodes_on_switch, wait_for
from tests.harness.bgp_peers import (
    Bird,
    BirdNeighbor,
    BirdSpec,
    Gobgp,
    GobgpNeighbor,
    GobgpSpec,
    start_bird,
    start_gobgp,
)
from tests.harness.cli import cli
from tests.harness.node_pair import stop_nodes
from tests.harness.service_clients import FAILED, NameServer, ask, connect_many

pytestmark = [pytest.mark.etcd, pytest.mark.netns, pytest.mark.slow]
NODES = {"node-a": "192.0.2.11", "node-b": "192.0.2.12"}
TOR, GOBGP, CLIENT = "192.0.2.21", "192.0.2.22", "198.51.100.10"
NODE_AS, TOR_AS, GOBGP_AS = 64512, 65020, 65030
VIP, PORT = "203.0.113.10", 80
RANGE = "198.18.0.0/24"


def doc(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "meshroute.io/v1", "kind": kind, "metadata": {"name": name}, "spec": spec}


def web(*endpoints: str) -> dict[str, Any]:
    spec = {"address": VIP, "ports": [{"port": PORT, "targetPort": 8080}], "endpoints": endpoints}
    return doc("ServiceAddress", "web", spec)


@dataclass
class Rig:
    nodes: list[NodeUnderTest]
    tor: Netns
    client: Netns
    bird: Bird
    gobgp: Gobgp
    etcd: EtcdCluster
    prefix: str
    pods: dict[str, tuple[Netns, str]] = field(default_factory=dict)
    servers: list[NameServer] = field(default_factory=list)

    def apply(self, *docs: dict[str, Any]) -> None:
        done = cli(self.etcd, self.prefix, "apply", "-f", "-", stdin=yaml.safe_dump_all(docs))
        assert done.returncode == 0, done.stderr

    def tor_next_hops(self, prefix: str) -> set[str]:
        """The next hops of ``prefix`` in the ToR's kernel (BIRD's ECMP route)."""
        out: set[str] = set()
        for r in json.loads(self.tor.ip("-j", "route", "show", "exact", prefix) or "[]"):
            if "gateway" in r:
                out.add(r["gateway"])
            out |= {h["gateway"] for h in r.get("nexthops", []) if "gateway" in h}
        return out

    def gobgp_next_hops(self, prefix: str) -> set[str]:
        rib = json.loads(self.gobgp.cli("global", "rib", "-a", "ipv4", "-j") or "{}")
        hops = set()
        for path in rib.get(prefix, []):
            for attr in path.get("attrs", []):
                if "nexthop" in attr:
                    hops.add(attr["nexthop"])
        return hops


@pytest.fixture
def rig(
    etcd_server: EtcdCluster, etcd_prefix: str, netns: NetnsFactory, tmp_path: Path
) -> Iterator[Rig]:
    sw = switch(netns)
    nodes = nodes_on_switch(sw, netns, NODES, etcd_server, etcd_prefix, tmp_path)
    tor, gobgp_ns, client = netns.new("tor"), netns.new("gobgp"), netns.new("client")
    plug(sw, tor, "p-tor", f"{TOR}/24")
    plug(sw, gobgp_ns, "p-gobgp", f"{GOBGP}/24")
    veth(tor, "eth1", client, "eth0")
    tor.ip("addr", "add", "198.51.100.1/24", "dev", "eth1")
    client.ip("addr", "add", f"{CLIENT}/24", "dev", "eth0")
    client.ip("route", "add", "default", "via", "198.51.100.1")
    # the ToR forwards, spreading flows (not just address pairs) over ECMP paths
    tor.sh("sysctl -qw net.ipv4.ip_forward=1 net.ipv4.fib_multipath_hash_policy=1")
    for n in nodes:
        n.ns.ip("route", "add", "198.51.100.0/24", "via", TOR)  # the way back to clients
    cni_bin = tmp_path / "cni-bin"
    install_plugin(cni_bin)
    bird = start_bird(
        tor,
        tmp_path / "bird",
        BirdSpec(
            router_id=TOR,
            local_as=TOR_AS,
            neighbors=tuple(
                BirdNeighbor(name.replace("-", "_"), ip, NODE_AS, TOR) for name, ip in NODES.items()
            ),
            kernel=True,
            merge_paths=True,
        ),
    )
    gobgp = start_gobgp(
        gobgp_ns,
        tmp_path / "gobgp",
        GobgpSpec(GOBGP, GOBGP_AS, tuple(GobgpNeighbor(ip, NODE_AS) for ip in NODES.values())),
    )
    r = Rig(nodes, tor, client, bird, gobgp, etcd_server, etcd_prefix)
    try:
        r.apply(
            doc("IPPool", "pods", {"cidr": "10.244.0.0/16", "blockSize": 26}),
            doc("BGPPeer", "tor", {"peerIP": TOR, "asNumber": TOR_AS}),
            doc("BGPPeer", "gobgp", {"peerIP": GOBGP, "asNumber": GOBGP_AS}),
        )
        for n in nodes:
            n.start()
        for n in nodes:
            n.wait_ready()
        for n in nodes:
            pod, ip = add_pod(n, netns, cni_bin, f"pod-{n.name[-1]}")
            r.pods[n.name] = (pod, ip)
            r.servers.append(NameServer(pod.name, ip, 8080, n.name))
        yield r
    finally:
        for s in r.servers:
            s.close()
        bird.stop()
        gobgp.stop()
        stop_nodes(nodes)
        sys.stderr.write((tmp_path / "bird" / "bird.log").read_text()[-2000:] + "\n")


def test_routers_spread_over_the_nodes_with_endpoints_and_follow_a_withdrawal(rig: Rig) -> None:
    a_ip, b_ip = rig.pods["node-a"][1], rig.pods["node-b"][1]
    rig.apply(web(a_ip, b_ip))
    both = set(NODES.values())
    wait_for("the ToR's ECMP route over both nodes", lambda: rig.tor_next_hops(f"{VIP}/32") == both)
    wait_for("GoBGP's paths from both nodes", lambda: rig.gobgp_next_hops(f"{VIP}/32") == both)

    got = connect_many(rig.client.name, VIP, PORT, 100)
    assert got.keys() == {"node-a", "node-b"}, got  # no FAILED, both endpoints

    # One endpoint removed while the client keeps opening connections.
    tally: Counter[str] = Counter()
    stop = threading.Event()

    def keep_connecting() -> None:
        while not stop.is_set():
            tally[ask(rig.client.name, VIP, PORT)] += 1

    t = threading.Thread(target=keep_connecting, daemon=True)
    t.start()
    try:
        wait_for("connections before the change", lambda: sum(tally.values()) >= 20)
        rig.apply(web(b_ip))
        b_only = {NODES["node-b"]}
        wait_for("the ToR converges on node-b", lambda: rig.tor_next_hops(f"{VIP}/32") == b_only)
        wait_for("GoBGP converges on node-b", lambda: rig.gobgp_next_hops(f"{VIP}/32") == b_only)
        seen = sum(tally.values())
        wait_for("connections after convergence", lambda: sum(tally.values()) >= seen + 20)
    finally:
        stop.set()
        t.join()
    assert tally[FAILED] == 0, tally
    assert connect_many(rig.client.name, VIP, PORT, 20) == {"node-b": 20}
    assert all(n.status()["policy"]["lastError"] is None for n in rig.nodes)

    # the last endpoint gone: no node advertises the address
    rig.apply(web())
    wait_for("the ToR drops the address", lambda: not rig.tor_next_hops(f"{VIP}/32"))


def test_service_ranges_are_advertised_by_every_node_and_change_live(rig: Rig) -> None:
    both = set(NODES.values())
    rig.apply(doc("BGPConfiguration", "default", {"serviceLoadBalancerIPs": [RANGE]}))
    wait_for("the range from both nodes", lambda: rig.tor_next_hops(RANGE) == both)
    wait_for("GoBGP has the range from both", lambda: rig.gobgp_next_hops(RANGE) == both)
    sessions = {n.name: n.status()["peers"] for n in rig.nodes}
    rig.apply(doc("BGPConfiguration", "default", {}))
    wait_for("the range withdrawn", lambda: not rig.tor_next_hops(RANGE))
    wait_for("GoBGP drops the range", lambda: not rig.gobgp_next_hops(RANGE))
    # no session was reset for it
    for n in rig.nodes:
        before = {p["peer"]: p["since"] for p in sessions[n.name]}
        assert {p["peer"]: p["since"] for p in n.status()["peers"]} == before
