"""Service DNAT by real nftables in a node namespace with routed pods: the
service part merged with the policy compiler's ruleset and applied by the
policy reconciler; new connections spread over the targets; a restarted
reconciler adopts the table; a change of targets rewrites one chain and
leaves an established connection on its endpoint; a node without local
endpoints hands connections to the others' masqueraded."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from netaddr import IPAddress

from felix_lite.nft_model import Ruleset, merge_rulesets
from felix_lite.nft_reconciler import NftCli, PolicyReconciler
from felix_lite.nft_script import parse_table_json
from felix_lite.policy_compiler import plan_policy_ruleset
from felix_lite.policy_inputs import PolicyInput
from felix_lite.service_nat import ServiceNat, ServicePort, plan_service_ruleset
from lab.netns import NetnsFactory
from tests.harness.policy_pods import Pod, PodNode
from tests.harness.service_clients import FAILED, NameServer, connect_many, open_conn, read_name

pytestmark = [pytest.mark.netns]

VIP4 = IPAddress("203.0.113.10")
VIP6 = IPAddress("2001:db8:5::10")
WEB = (ServicePort("tcp", 80, 8080),)


class Rig:
    def __init__(self, netns: NetnsFactory) -> None:
        self.node = PodNode(netns)
        self.a = self.node.add_pod("a", "x", 1)
        self.b = self.node.add_pod("b", "x", 2)
        self.client = self.node.add_pod("client", "x", 3)
        self.servers = [
            NameServer(p.ns.name, str(ip), 8080, p.name)
            for p in (self.a, self.b)
            for ip in p.addresses
        ]
        self.nft = NftCli(self.node.ns.name)

    def ruleset(self, *services: ServiceNat) -> Ruleset:
        eps = tuple(p.endpoint() for p in self.node.pods)
        policy = plan_policy_ruleset(PolicyInput("n1", eps, (), ()))
        return merge_rulesets(policy, plan_service_ruleset(services))

    def close(self) -> None:
        for s in self.servers:
            s.close()


@pytest.fixture
def rig(netns: NetnsFactory) -> Iterator[Rig]:
    r = Rig(netns)
    yield r
    r.close()


def both(*pods: Pod, version: int = 4) -> tuple[IPAddress, ...]:
    return tuple(a for p in pods for a in p.addresses if a.version == version)


async def test_connections_spread_over_targets_in_both_families(rig: Rig) -> None:
    rec = PolicyReconciler(rig.nft)
    rec.set_desired(
        rig.ruleset(
            ServiceNat(VIP4, WEB, both(rig.a, rig.b)),
            ServiceNat(VIP6, WEB, both(rig.a, rig.b, version=6)),
        )
    )
    assert (await rec.pass_once()).error is None
    for vip in (VIP4, VIP6):
        got = connect_many(rig.client.ns.name, str(vip), 80, 100)
        assert set(got) == {"a", "b"}, got  # every one answered, by both endpoints
    # nothing answers on a port the service does not have
    assert connect_many(rig.client.ns.name, str(VIP4), 81, 1) == {FAILED: 1}

    # A restarted reconciler adopts the table: nothing to apply.
    again = PolicyReconciler(rig.nft)
    again.set_desired(
        rig.ruleset(
            ServiceNat(VIP4, WEB, both(rig.b, rig.a)),  # the same set, another order
            ServiceNat(VIP6, WEB, both(rig.a, rig.b, version=6)),
        )
    )
    assert (await again.pass_once()).statements == 0


async def test_changed_targets_keep_established_flows(rig: Rig) -> None:
    rec = PolicyReconciler(rig.nft)
    rec.set_desired(rig.ruleset(ServiceNat(VIP4, WEB, (rig.a.ip4,))))
    await rec.pass_once()
    held = open_conn(rig.client.ns.name, str(VIP4), 80)
    try:
        assert read_name(held) == "a"
        rec.set_desired(rig.ruleset(ServiceNat(VIP4, WEB, (rig.b.ip4,))))
        changed = await rec.pass_once()
        # one chain rewritten (flush and one rule), no map, no base chain touched
        assert changed.error is None and changed.statements == 2
        assert connect_many(rig.client.ns.name, str(VIP4), 80, 10) == {"b": 10}
        held.sendall(b"again\n")
        assert read_name(held) == "a"  # conntrack keeps the flow on its endpoint
    finally:
        held.close()

    # the last service gone, so is every part of the service table
    rec.set_desired(rig.ruleset())
    await rec.pass_once()
    table = parse_table_json(rig.node.ns.sh("nft -j list table inet meshroute"))
    assert table is not None
    assert not [n for n in table.chains if n.startswith(("mr_svc", "mrsv_"))]
    assert not [n for n in table.sets if n.startswith("mr_svc")]


async def test_read_back_of_service_maps_equals_the_desired(rig: Rig) -> None:
    desired = rig.ruleset(
        ServiceNat(VIP4, (ServicePort("tcp", 80, 8080), ServicePort("udp", 53, 53)), (rig.a.ip4,)),
        ServiceNat(VIP6, WEB, (rig.b.ip6,) if rig.b.ip6 else (), masquerade=True),
    )
    rec = PolicyReconciler(rig.nft)
    rec.set_desired(desired)
    await rec.pass_once()
    text = rig.node.ns.sh("nft -j list table inet meshroute")
    table = parse_table_json(text)
    assert table is not None
    for name in ("mr_svc4", "mr_svc6"):
        assert table.sets[name] == desired.sets[name], json.dumps(json.loads(text))[:2000]


async def test_a_node_without_local_endpoints_masquerades_to_the_others(
    rig: Rig, netns: NetnsFactory
) -> None:
    """Node 2 (its own namespace, linked to the first node) has no endpoint:
    it DNATs to the first node's pods and masquerades, so the replies come
    back through it."""
    two = PodNode(netns, "node2")
    client = two.add_pod("c2", "x", 9)
    rig.node.ns.ip(
        "link", "add", "to2", "type", "veth", "peer", "name", "to1", "netns", two.ns.name
    )
    rig.node.ns.sh("ip addr add 192.0.2.1/24 dev to2 && ip link set to2 up")
    two.ns.sh("ip addr add 192.0.2.2/24 dev to1 && ip link set to1 up")
    # node 2 reaches the first node's pods; the first node has no route to c2
    two.ns.sh("ip route add 10.244.0.0/29 via 192.0.2.1")
    nft2 = NftCli(two.ns.name)
    rec = PolicyReconciler(nft2)
    eps = tuple(p.endpoint() for p in two.pods)
    rec.set_desired(
        merge_rulesets(
            plan_policy_ruleset(PolicyInput("n2", eps, (), ())),
            plan_service_ruleset([ServiceNat(VIP4, WEB, (rig.a.ip4, rig.b.ip4), masquerade=True)]),
        )
    )
    assert (await rec.pass_once()).error is None
    got = connect_many(client.ns.name, str(VIP4), 80, 40)
    assert set(got) == {"a", "b"}, got
