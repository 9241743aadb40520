"""A real ``meshroute node`` enforcing policy: resources applied with the
CLI, WorkloadEndpoint records written into etcd (as the CNI path does),
routed pods made by hand. Probed with real connections: a policy, a
relabelled pod, natOutgoing switched on and off live (v4 and v6, the
"outside" namespace sees the node's address or the pod's), counters in
``status --policy`` and ``/metrics``, and kill -9 and restart of the node
with the ruleset enforcing throughout and adopted, not re-applied."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from netaddr import IPAddress

from datastore.etcd import EtcdStore
from datastore.port import Put
from lab.etcd import EtcdCluster
from lab.netns import Netns, NetnsFactory, call_in_netns, veth
from lab.node_rig import NodeUnderTest, node_in, wait_for
from tests.harness.cli import cli
from tests.harness.policy_pods import Pod, PodNode, Servers, probe_all

pytestmark = [pytest.mark.etcd, pytest.mark.netns, pytest.mark.slow]

NODE_V4, OUTSIDE_V4 = "192.0.2.10", "192.0.2.1"
NODE_V6, OUTSIDE_V6 = "2001:db8::10", "2001:db8::1"


def pools(nat: bool) -> str:
    return "---\n".join(
        f"apiVersion: meshroute.io/v1\nkind: IPPool\nmetadata: {{name: {name}}}\n"
        f"spec: {{cidr: '{cidr}', natOutgoing: {str(nat).lower()}}}\n"
        for name, cidr in (("pods4", "10.244.0.0/16"), ("pods6", "fd00:244::/64"))
    )


POLICY = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-from-b, namespace: x}
spec:
  podSelector: {matchLabels: {app: a}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: b}}}]
    ports: [{port: 80}]
"""


@dataclass
class Rig:
    etcd: EtcdCluster
    prefix: str
    node: NodeUnderTest
    pods: PodNode
    outside: Netns
    a: Pod
    b: Pod
    c: Pod

    def cli(self, *args: str, stdin: str | None = None) -> str:
        r = cli(self.etcd, self.prefix, *args, stdin=stdin)
        assert r.returncode == 0, r.stderr
        return r.stdout

    def write_endpoints(self, *pods: Pod) -> None:
        async def put() -> None:
            store = EtcdStore([self.etcd.endpoint])
            try:
                for p in pods:
                    ep = {
                        "node": "n1",
                        "namespace": p.namespace,
                        "pod": p.name,
                        "containerId": f"c-{p.name}",
                        "ifname": "eth0",
                        "hostIface": p.iface,
                        "ips": [f"{p.ip4}/32", f"{p.ip6}/128"],
                        "labels": p.labels,
                        "ports": [],
                    }
                    key = f"{self.prefix}/ipam/v1/endpoints/n1/c-{p.name}.eth0".encode()
                    await store.txn([], [Put(key, json.dumps(ep).encode())])
            finally:
                await store.close()

        asyncio.run(put())

    def rule_handles(self) -> set[int]:
        out = json.loads(self.pods.ns.sh("nft -j list table inet meshroute"))
        return {i["rule"]["handle"] for i in out["nftables"] if "rule" in i}


@pytest.fixture
def rig(
    etcd_server: EtcdCluster, etcd_prefix: str, netns: NetnsFactory, tmp_path: Path
) -> Iterator[Rig]:
    pods = PodNode(netns, "n1")
    outside = netns.new("outside")
    veth(pods.ns, "eth0", outside, "eth0")
    pods.ns.sh(f"ip addr add {NODE_V4}/24 dev eth0 && ip -6 addr add {NODE_V6}/64 dev eth0 nodad")
    outside.sh(
        f"ip addr add {OUTSIDE_V4}/24 dev eth0 && ip -6 addr add {OUTSIDE_V6}/64 dev eth0 nodad"
        # without NAT, replies to pod addresses go back through the node
        f" && ip route add 10.244.0.0/16 via {NODE_V4}"
        f" && ip -6 route add fd00:244::/64 via {NODE_V6}"
    )
    a = pods.add_pod("a", "x", 1, app="a")
    b = pods.add_pod("b", "x", 2, app="b")
    c = pods.add_pod("c", "x", 3, app="c")
    node = node_in(pods.ns, "n1", NODE_V4, 24, etcd_server, etcd_prefix, tmp_path / "n1")
    r = Rig(etcd_server, etcd_prefix, node, pods, outside, a, b, c)
    r.cli("apply", "-f", "-", stdin=pools(nat=False))
    r.write_endpoints(a, b, c)
    servers = Servers(pods.pods, tcp=(80, 81), udp=())
    node.start()
    try:
        node.wait_ready()
        yield r
    finally:
        node.stop()
        servers.close()
        if node.proc is not None and node.proc.returncode not in (0, None):
            print(node.logs())


def source_seen_outside(r: Rig, pod: Pod, outside: str) -> str:
    """Connect from ``pod`` to a listener in the outside namespace; the
    source address the outside sees."""
    fam = socket.AF_INET6 if ":" in outside else socket.AF_INET
    srv = call_in_netns(r.outside.name, lambda: socket.socket(fam, socket.SOCK_STREAM))
    srv.bind((outside, 0))
    srv.listen(1)
    srv.settimeout(5)
    port = srv.getsockname()[1]
    try:
        cl = call_in_netns(pod.ns.name, lambda: socket.create_connection((outside, port), 5))
        conn, peer = srv.accept()
        conn.close()
        cl.close()
        return str(IPAddress(peer[0]))
    finally:
        srv.close()


def test_node_enforces_policy_nat_and_survives_kill_9(rig: Rig) -> None:
    a, b, c = rig.a, rig.b, rig.c
    checks = [
        (b, a.ip4, "tcp", 80),
        (c, a.ip4, "tcp", 80),
        (b, a.ip6, "tcp", 81),
        (a, c.ip4, "tcp", 81),
    ]
    assert probe_all(checks) == [True, True, True, True]
    rig.cli("apply", "-f", "-", stdin=POLICY)
    enforced = [True, False, False, True]
    wait_for("policy enforced", lambda: probe_all(checks) == enforced, 30)

    # counters per rule, in status --policy and /metrics
    def counted() -> bool:
        rules = rig.node.status()["policy"]["rules"]
        return any(r["policy"] == "np/x/a-from-b" and r["packets"] > 0 for r in rules)

    wait_for("rule counters", counted, 30)
    table = rig.cli("status", "--policy", "--endpoint", rig.node.http)
    assert "np/x/a-from-b" in table and "default-deny np/x/a-from-b" in table
    m = rig.node.metrics()
    assert any(k[0] == "meshroute_policy_packets_total" and v > 0 for k, v in m.items())

    # relabel b: an endpoint record change is enough
    rig.b.labels = {"app": "other"}
    rig.write_endpoints(rig.b)
    wait_for("relabel enforced", lambda: probe_all(checks[:1]) == [False], 30)
    rig.b.labels = {"app": "b"}
    rig.write_endpoints(rig.b)
    wait_for("relabel back", lambda: probe_all(checks) == enforced, 30)

    # natOutgoing, live, both families
    assert source_seen_outside(rig, a, OUTSIDE_V4) == str(a.ip4)
    assert source_seen_outside(rig, a, OUTSIDE_V6) == str(a.ip6)
    rig.cli("apply", "-f", "-", stdin=pools(nat=True))
    wait_for("v4 masqueraded", lambda: source_seen_outside(rig, a, OUTSIDE_V4) == NODE_V4, 30)
    wait_for("v6 masqueraded", lambda: source_seen_outside(rig, a, OUTSIDE_V6) == NODE_V6, 30)
    assert probe_all([(b, a.ip4, "tcp", 80)]) == [True]  # pod to pod keeps its address
    rig.cli("apply", "-f", "-", stdin=pools(nat=False))
    wait_for("v4 own address", lambda: source_seen_outside(rig, a, OUTSIDE_V4) == str(a.ip4), 30)

    # kill -9: the kernel keeps enforcing; the restarted node adopts the table
    handles = rig.rule_handles()
    rig.node.stop(signal.SIGKILL)
    assert probe_all(checks) == enforced
    rig.node.start()
    rig.node.wait_ready()
    wait_for("policy pass after restart", lambda: rig.node.status()["policy"]["converged"], 30)
    assert probe_all(checks) == enforced
    assert rig.node.status()["policy"]["transactions"] == 0  # adopted: nothing rewritten
    assert rig.rule_handles() == handles

    rig.cli("delete", "networkpolicy", "x/a-from-b")
    wait_for("policy removed", lambda: probe_all(checks) == [True, True, True, True], 30)
