"""Which sessions a node gets: mesh, global and node-specific peers."""

from __future__ import annotations

from netaddr import IPAddress

from meshroute.peering import GLOBAL, MESH, NODE_SPECIFIC, PeerPlan, plan_peers
from meshroute.registry import NodeRecord
from meshroute.resources import BGPConfigurationSpec, BGPPeerSpec

NODES = {
    "a": NodeRecord("a", {"rack": "r1"}, ipv4="192.0.2.11/24"),
    "b": NodeRecord("b", {"rack": "r1"}, ipv4="192.0.2.12/24"),
    "c": NodeRecord("c", {"rack": "r2"}, ipv4="198.51.100.13/24", asn=65002),
    "rr1": NodeRecord("rr1", {"route-reflector": "true"}, ipv4="192.0.2.100/24"),
}


def spec(**kw: object) -> BGPPeerSpec:
    return BGPPeerSpec.model_validate(kw)


def test_full_mesh_one_session_per_pair_greater_address_passive() -> None:
    plans = plan_peers(NODES["a"], NODES, BGPConfigurationSpec(), {})
    assert [(str(p.address), p.kind, p.passive, p.peer_as) for p in plans] == [
        ("192.0.2.12", MESH, False, 64512),
        ("192.0.2.100", MESH, False, 64512),
        ("198.51.100.13", MESH, False, 65002),
    ]
    back = plan_peers(NODES["b"], NODES, BGPConfigurationSpec(), {})
    assert next(p for p in back if str(p.address) == "192.0.2.11").passive
    assert all(p.local_as == 64512 for p in plans)


def test_mesh_off_and_reflector_peers_by_selector() -> None:
    config = BGPConfigurationSpec.model_validate({"nodeToNodeMeshEnabled": False})
    peers = {
        "to-rr": spec(
            nodeSelector="!has(route-reflector)", peerSelector="route-reflector == 'true'"
        )
    }
    plans = plan_peers(NODES["a"], NODES, config, peers)
    assert [(str(p.address), p.kind, p.source, p.peer_node) for p in plans] == [
        ("192.0.2.100", NODE_SPECIFIC, "to-rr", "rr1")
    ]
    assert plan_peers(NODES["rr1"], NODES, config, peers) == []  # selector excludes it


def test_global_and_node_specific_peer_ip_override_mesh() -> None:
    peers = {
        "tor": spec(peerIP="192.0.2.1", asNumber=65001, password="s3cret", maxPrefix=100),
        "only-c": spec(node="c", peerIP="198.51.100.1", asNumber=65101),
        "over-mesh": spec(peerIP="192.0.2.12", asNumber=64999),
    }
    a = {str(p.address): p for p in plan_peers(NODES["a"], NODES, BGPConfigurationSpec(), peers)}
    assert a["192.0.2.1"].kind == GLOBAL and a["192.0.2.1"].password == "s3cret"
    assert a["192.0.2.1"].max_prefix == 100
    assert a["192.0.2.12"].source == "over-mesh" and a["192.0.2.12"].peer_as == 64999
    assert "198.51.100.1" not in a
    c = {str(p.address) for p in plan_peers(NODES["c"], NODES, BGPConfigurationSpec(), peers)}
    assert "198.51.100.1" in c


def test_node_as_overrides() -> None:
    config = BGPConfigurationSpec.model_validate({"asNumber": 65000, "nodeASNumbers": {"b": 65010}})
    plans = {str(p.address): p for p in plan_peers(NODES["a"], NODES, config, {})}
    assert plans["192.0.2.12"].peer_as == 65010
    assert plans["198.51.100.13"].peer_as == 65002  # the node record wins
    assert plans["192.0.2.12"].local_as == 65000
    assert plans["192.0.2.12"].address == IPAddress("192.0.2.12")


DUAL = {
    "a": NodeRecord("a", {"rack": "r1"}, ipv4="192.0.2.11/24", ipv6="2001:db8::11/64"),
    "b": NodeRecord("b", {"rack": "r1"}, ipv4="192.0.2.12/24", ipv6="2001:db8::12/64"),
    "c": NodeRecord("c", {"rack": "r2"}, ipv4="198.51.100.13/24"),
}


def _sessions(plans: list[PeerPlan]) -> list[tuple[str, tuple[int, ...], bool]]:
    return [(str(p.address), p.families, p.passive) for p in plans]


def test_dual_stack_mesh_pairs_nodes_on_both_addresses_by_default() -> None:
    """Calico's meaning: an IPv4 session carries IPv4, an IPv6 one IPv6."""
    plans = plan_peers(DUAL["a"], DUAL, BGPConfigurationSpec(), {})
    assert _sessions(plans) == [
        ("192.0.2.12", (4,), False),
        ("198.51.100.13", (4,), False),
        ("2001:db8::12", (6,), False),
    ]
    back = plan_peers(DUAL["b"], DUAL, BGPConfigurationSpec(), {})
    assert ("2001:db8::11", (6,), True) in _sessions(back)
    # a node without an IPv6 address has no IPv6 session
    assert _sessions(plan_peers(DUAL["c"], DUAL, BGPConfigurationSpec(), {})) == [
        ("192.0.2.11", (4,), True),
        ("192.0.2.12", (4,), True),
    ]


def test_multiprotocol_carries_ipv6_over_the_ipv4_sessions() -> None:
    cfg = BGPConfigurationSpec.model_validate({"ipv6Transport": "MultiProtocol"})
    plans = plan_peers(DUAL["a"], DUAL, cfg, {})
    assert _sessions(plans) == [("192.0.2.12", (4, 6), False), ("198.51.100.13", (4, 6), False)]
    assert {p.families for p in plan_peers(DUAL["c"], DUAL, cfg, {})} == {(4,)}


def test_ipv6_peers_by_address_and_by_selector() -> None:
    peers = {
        "tor6": spec(node="a", peerIP="2001:db8::1", asNumber=65001),
        "tor4": spec(node="a", peerIP="192.0.2.1", asNumber=65001),
        "rr": spec(peerSelector="rack == 'r1'"),
    }
    cfg = BGPConfigurationSpec(nodeToNodeMeshEnabled=False)
    assert _sessions(plan_peers(DUAL["a"], DUAL, cfg, peers)) == [
        ("192.0.2.1", (4,), False),
        ("192.0.2.12", (4,), False),
        ("2001:db8::1", (6,), False),
        ("2001:db8::12", (6,), False),
    ]
    # node c has no IPv6 address: the selector pairs it on IPv4 only
    assert _sessions(plan_peers(DUAL["c"], DUAL, cfg, peers)) == [
        ("192.0.2.11", (4,), False),
        ("192.0.2.12", (4,), False),
    ]
    mp = BGPConfigurationSpec.model_validate(
        {"nodeToNodeMeshEnabled": False, "ipv6Transport": "MultiProtocol"}
    )
    assert _sessions(plan_peers(DUAL["a"], DUAL, mp, peers)) == [
        ("192.0.2.1", (4, 6), False),
        ("192.0.2.12", (4, 6), False),
        ("2001:db8::1", (6,), False),
    ]
