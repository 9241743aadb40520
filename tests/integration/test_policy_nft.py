"""Policy enforced by real nftables in a node namespace with routed pods:
the compiler's ruleset applied by the reconciler, probed with real
connections; adoption after a restart, only differences applied, a refused
transaction keeping the last good ruleset, established connections kept,
another table left alone."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import pytest

from felix_lite.nft_lib import NftLib
from felix_lite.nft_model import NftChain, NftRule, Ruleset
from felix_lite.nft_reconciler import NftCli, PolicyReconciler
from felix_lite.nft_script import parse_table_json
from felix_lite.policy_compiler import plan_policy_ruleset
from felix_lite.policy_inputs import (
    NAMESPACED_TIER,
    Action,
    Direction,
    EntityMatch,
    NamespaceInfo,
    Policy,
    PolicyInput,
    PortRange,
    Rule,
    Selector,
)
from ipam.selector import parse_selector
from lab.netns import NetnsFactory, call_in_netns
from meshroute.policy_lowering import lower_global_policy, lower_network_policy
from meshroute.policy_resources import GlobalNetworkPolicyResource, NetworkPolicyResource
from tests.harness.policy_pods import Pod, PodNode, Servers, probe_all

pytestmark = [pytest.mark.netns]


def sel(text: str) -> Selector:
    return Selector(text, parse_selector(text))


ALLOW_B_TO_A_80 = Policy(
    "np/x/a-from-b",
    NAMESPACED_TIER,
    sel("app == 'a'"),
    frozenset({Direction.INGRESS}),
    namespace="x",
    ingress=(
        Rule(
            Action.ALLOW,
            "tcp",
            source=EntityMatch(selector=sel("app == 'b'"), namespace="x"),
            destination=EntityMatch(ports=(PortRange(80, 80),)),
        ),
    ),
)
NAMESPACES = (NamespaceInfo("x"),)


class Rig:
    def __init__(self, netns: NetnsFactory) -> None:
        self.node = PodNode(netns)
        self.a = self.node.add_pod("a", "x", 1, app="a")
        self.b = self.node.add_pod("b", "x", 2, app="b")
        self.c = self.node.add_pod("c", "x", 3, app="c")
        self.servers = Servers(self.node.pods, tcp=(80, 81), udp=(80, 81))
        self.nft = NftLib(self.node.ns.name)

    def ruleset(self, *policies: Policy, pods: tuple[Pod, ...] | None = None) -> Ruleset:
        eps = tuple(p.endpoint() for p in (pods or tuple(self.node.pods)))
        return plan_policy_ruleset(PolicyInput("n1", eps, NAMESPACES, policies))

    def table_json(self) -> dict:
        return json.loads(self.node.ns.sh("nft -j list table inet meshroute"))


@pytest.fixture
def rig(netns: NetnsFactory) -> Iterator[Rig]:
    r = Rig(netns)
    yield r
    r.servers.close()
    r.nft.close()


async def test_enforce_adopt_and_apply_only_differences(rig: Rig) -> None:
    a, b, c = rig.a, rig.b, rig.c
    rig.node.ns.sh("nft add table inet other && nft add chain inet other keep")
    rec = PolicyReconciler(rig.nft)
    rec.set_desired(rig.ruleset(ALLOW_B_TO_A_80))
    first = await rec.pass_once()
    assert first.error is None and first.statements > 0
    got = probe_all(
        [
            (b, a.ip4, "tcp", 80),  # allowed
            (b, a.ip6, "tcp", 80),  # allowed, v6
            (c, a.ip4, "tcp", 80),  # not b
            (b, a.ip4, "tcp", 81),  # not port 80
            (b, a.ip4, "udp", 80),  # not tcp
            (a, b.ip4, "tcp", 81),  # b is selected by nothing
            (c, b.ip6, "udp", 80),
        ]
    )
    assert got == [True, True, False, False, False, True, True]
    # the node reaches its pods whatever the policy (health probes)
    assert (
        rig.node.ns.sh(
            f"python3 -c \"import socket; socket.create_connection(('{a.ip4}', 81), 2)\" && echo ok"
        ).strip()
        == "ok"
    )

    # A restarted process adopts the table: nothing to apply.
    handles = {r["rule"]["handle"] for r in rig.table_json()["nftables"] if "rule" in r}
    again = PolicyReconciler(rig.nft)
    again.set_desired(rig.ruleset(ALLOW_B_TO_A_80))
    assert (await again.pass_once()).statements == 0
    assert {r["rule"]["handle"] for r in rig.table_json()["nftables"] if "rule" in r} == handles

    # A new pod labelled b: set elements only, and it is let in at once.
    d = rig.node.add_pod("d", "x", 4, app="b")
    extra = Servers([d], tcp=(80,), udp=())
    try:
        rec.set_desired(rig.ruleset(ALLOW_B_TO_A_80))
        lines_before = rec.applied
        p = await rec.pass_once()
        assert rec.applied == lines_before + 1
        assert p.statements == 2  # one set element (v4 and v6 in one set each)...
        assert probe_all([(d, a.ip4, "tcp", 80), (d, a.ip4, "tcp", 81)]) == [True, False]
    finally:
        extra.close()
    assert "other" in rig.node.ns.sh("nft list tables")


async def test_refused_transaction_keeps_the_last_good_ruleset(rig: Rig) -> None:
    a, b, c = rig.a, rig.b, rig.c
    rec = PolicyReconciler(rig.nft)
    good = rig.ruleset(ALLOW_B_TO_A_80)
    rec.set_desired(good)
    await rec.pass_once()
    before = rig.node.ns.sh("nft -s list table inet meshroute")
    broken = dict(good.chains)
    broken["mr_bad"] = NftChain("mr_bad", (NftRule("jump mr_no_such_chain", "bad"),))
    rec.set_desired(Ruleset(good.sets, broken))
    res = await rec.pass_once()
    assert res.error is not None and rec.failures == 1 and rec.last_error
    assert rig.node.ns.sh("nft -s list table inet meshroute") == before
    assert probe_all([(b, a.ip4, "tcp", 80), (c, a.ip4, "tcp", 80)]) == [True, False]
    rec.set_desired(good)
    assert (await rec.pass_once()).error is None  # full re-read after a failure: nothing to do
    assert rig.node.ns.sh("nft -s list table inet meshroute") == before


async def test_established_connection_survives_reapplication(rig: Rig) -> None:
    a, b = rig.a, rig.b
    rec = PolicyReconciler(rig.nft)
    rec.set_desired(rig.ruleset(ALLOW_B_TO_A_80))
    await rec.pass_once()
    server = call_in_netns(a.ns.name, lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
    server.bind((str(a.ip4), 90))
    server.listen(1)
    server.settimeout(5)
    # Opened while everything is allowed (no policy selects a) ...
    rec.set_desired(rig.ruleset())
    await rec.pass_once()
    client = call_in_netns(b.ns.name, lambda: socket.create_connection((str(a.ip4), 90), 5))
    conn, _ = server.accept()
    try:
        # ... then every chain of a is re-applied with a policy that does not allow port 90.
        rec.set_desired(rig.ruleset(ALLOW_B_TO_A_80))
        assert (await rec.pass_once()).statements > 0
        client.settimeout(5)
        conn.settimeout(5)
        client.sendall(b"ping")
        assert conn.recv(4) == b"ping"
        conn.sendall(b"pong")
        assert client.recv(4) == b"pong"
        assert probe_all([(b, a.ip4, "tcp", 81)]) == [False]  # a new one is denied
    finally:
        client.close()
        conn.close()
        server.close()


async def test_full_pass_repairs_a_table_changed_behind_its_back(rig: Rig) -> None:
    a, b, c = rig.a, rig.b, rig.c
    rec = PolicyReconciler(rig.nft)
    rec.set_desired(rig.ruleset(ALLOW_B_TO_A_80))
    await rec.pass_once()
    good = rig.node.ns.sh("nft -s list table inet meshroute")
    members = next(
        i["set"]["name"]
        for i in rig.table_json()["nftables"]
        if "set" in i and i["set"]["name"].startswith("mrs_") and i["set"].get("elem")
    )
    policy_chain = next(
        i["chain"]["name"]
        for i in rig.table_json()["nftables"]
        if "chain" in i and i["chain"]["name"].startswith("mrp_")
    )
    rig.node.ns.sh(
        f"nft delete element inet meshroute {members} {{ {b.ip4} }}"
        f" && nft flush chain inet meshroute {policy_chain}"
        " && nft add rule inet meshroute mr_forward accept"
    )
    assert probe_all([(b, a.ip4, "tcp", 80)]) == [False]  # its allow rule is gone
    assert (await rec.pass_once(full=False)).statements == 0  # it believes all is well...
    repaired = await rec.pass_once(full=True)  # ... until it reads the kernel back
    assert repaired.statements > 0
    assert rig.node.ns.sh("nft -s list table inet meshroute") == good
    assert probe_all([(b, a.ip4, "tcp", 80), (c, a.ip4, "tcp", 80)]) == [True, False]


def gnp(name: str, spec: dict) -> Policy:
    return lower_global_policy(
        GlobalNetworkPolicyResource.model_validate(
            {
                "apiVersion": "meshroute.io/v1",
                "kind": "GlobalNetworkPolicy",
                "metadata": {"name": name},
                "spec": spec,
            }
        )
    )


async def test_global_policies_order_deny_pass_log_icmp_and_not_ports(rig: Rig) -> None:
    a, b, c = rig.a, rig.b, rig.c
    k8s = lower_network_policy(
        NetworkPolicyResource.model_validate(
            {
                "apiVersion": "networking.k8s.io/v1",
                "kind": "NetworkPolicy",
                "metadata": {"name": "a-all", "namespace": "x"},
                "spec": {
                    "podSelector": {"matchLabels": {"app": "a"}},
                    "ingress": [{}],
                },
            }
        )
    )
    first = gnp(
        "first",
        {
            "order": 5,
            "selector": "app == 'a'",
            "ingress": [
                {"action": "Log", "protocol": "TCP", "destination": {"ports": [81]}},
                {
                    "action": "Allow",
                    "protocol": "TCP",
                    "source": {"nets": [f"{b.ip4}/32"]},
                    "destination": {"ports": [81]},
                },
            ],
        },
    )
    second = gnp(
        "second",
        {
            "order": 10,
            "selector": "app == 'a'",
            "ingress": [
                {"action": "Deny", "protocol": "TCP", "source": {"selector": "app == 'c'"}},
                {"action": "Pass"},
            ],
        },
    )
    b_out = gnp(
        "b-out",
        {
            "selector": "app == 'b'",
            "egress": [
                {"action": "Deny", "protocol": "UDP", "destination": {"notPorts": [80]}},
                {
                    "action": "Deny",
                    "protocol": "ICMP",
                    "icmp": {"type": 8},
                    "destination": {"notNets": [f"{a.ip4}/32"]},
                },
                {"action": "Pass"},
            ],
        },
    )
    # counters read through a port of their own, as the node does
    rec = PolicyReconciler(rig.nft, counters=NftCli(rig.node.ns.name))
    rec.set_desired(rig.ruleset(second, first, b_out, k8s))
    assert (await rec.pass_once()).error is None
    got = probe_all(
        [
            (b, a.ip4, "tcp", 80),  # no match in 5, passed by 10, the NetworkPolicy allows
            (c, a.ip4, "tcp", 80),  # the order-10 policy denies c before the NetworkPolicy
            (b, a.ip4, "tcp", 81),  # the order-5 policy allows b's address on 81
            (c, a.ip4, "tcp", 81),  # logged and not allowed by 5, denied by 10
            (a, b.ip4, "udp", 80),  # b is not selected for ingress
            (b, c.ip4, "udp", 80),  # b's egress: UDP 80 is not denied, then nothing selects it
            (b, c.ip4, "udp", 81),  # ... UDP to any other port is
            (c, b.ip6, "udp", 81),
        ]
    )
    assert got == [True, False, True, False, True, True, False, True]
    ping = "ping -c1 -W2 {} >/dev/null && echo ok || echo no"
    assert b.ns.sh(ping.format(c.ip4)).strip() == "no"  # echo from b, not to a
    assert b.ns.sh(ping.format(a.ip4)).strip() == "ok"  # notNets: a is exempt
    state = parse_table_json(rig.node.ns.sh("nft -j list table inet meshroute"))
    assert state is not None
    logged = [x for x in state.counters if x.label == "gnp/first ingress r0 log"]
    assert logged and logged[0].packets >= 1  # b's and c's SYNs to 81 were logged
    # the periodic counter read (rules only, no set elements) sees the same counters
    await rec.refresh_counters()
    assert {(x.chain, x.label) for x in rec.counters} == {
        (x.chain, x.label) for x in state.counters
    }
    assert any(x.label == "gnp/first ingress r0 log" and x.packets >= 1 for x in rec.counters)
