"""The node's BGP plans: ExaBGP's sessions per family, announcements, and
the hand-over of bgpd's best routes to felix_lite."""

from __future__ import annotations

from dataclasses import replace

from netaddr import IPAddress, IPNetwork

from bgpd.exabgp_config import render, render_env
from bgpd.model import BestRoute
from meshroute.node.bgp_plan import (
    plan_bgp_announcements,
    plan_exabgp_config,
    to_felix_changes,
)
from meshroute.node.config import NodeConfig
from meshroute.peering import plan_peers
from meshroute.registry import NodeRecord
from meshroute.resources import BGPConfigurationSpec


def test_felix_changes_drop_routes_lacking_next_hops() -> None:
    nh = (IPAddress("192.0.2.1"),)
    prefixes = ["10.1.0.0/26", "fd00::/64", "10.0.0.64/26", "10.0.0.0/16", "10.0.0.0/26"]
    best: dict[IPNetwork, BestRoute | None] = {
        IPNetwork(p): BestRoute(IPNetwork(p), nh) for p in prefixes
    }
    best[IPNetwork("10.2.0.0/26")] = BestRoute(IPNetwork("10.2.0.0/26"), ())
    best[IPNetwork("10.3.0.0/26")] = None
    got = dict(to_felix_changes(best.items()))
    assert got[IPNetwork("10.2.0.0/26")] is None and got[IPNetwork("10.3.0.0/26")] is None
    kept = {str(p): r for p, r in got.items() if r is not None}
    assert sorted(kept) == sorted(prefixes)
    assert all(r.nexthops == nh and str(r.prefix) == p for p, r in kept.items())


def _config(ipv6: str | None) -> NodeConfig:
    return NodeConfig.model_validate({"nodeName": "a", "ipv4": "192.0.2.11/24", "ipv6": ipv6})


def test_exabgp_sessions_are_sourced_from_the_peers_family_and_listen_on_both() -> None:
    me = NodeRecord("a", ipv4="192.0.2.11/24", ipv6="2001:db8::11/64")
    nodes = {"a": me, "b": NodeRecord("b", ipv4="192.0.2.12/24", ipv6="2001:db8::12/64")}
    peers = plan_peers(me, nodes, BGPConfigurationSpec(), {})
    exa = plan_exabgp_config(_config("2001:db8::11/64"), 64512, 179, peers)
    got = [(str(n.address), str(n.local_address), n.ipv4, n.ipv6) for n in exa.neighbors]
    assert got == [
        ("192.0.2.12", "192.0.2.11", True, False),
        ("2001:db8::12", "2001:db8::11", False, True),
    ]
    assert render_env(exa)["exabgp_tcp_bind"] == "192.0.2.11 2001:db8::11"
    assert "ipv6 unicast;" in render(replace(exa, api_run=("relay",)))

    mp = BGPConfigurationSpec.model_validate({"ipv6Transport": "MultiProtocol"})
    exa = plan_exabgp_config(_config("2001:db8::11/64"), 64512, 179, plan_peers(me, nodes, mp, {}))
    assert [(str(n.address), n.ipv4, n.ipv6) for n in exa.neighbors] == [("192.0.2.12", True, True)]

    v4only = plan_exabgp_config(_config(None), 64512, 179, peers)
    assert [str(n.address) for n in v4only.neighbors] == ["192.0.2.12"]
    assert render_env(v4only)["exabgp_tcp_bind"] == "192.0.2.11"


def test_ipv6_blocks_are_announced_with_the_nodes_ipv6_next_hop() -> None:
    blocks = [IPNetwork("10.0.0.0/26"), IPNetwork("fd00:10::/122")]
    nh6 = IPAddress("2001:db8::11")
    got = plan_bgp_announcements(blocks, [(64512, 1)], nh6)
    assert got[IPNetwork("10.0.0.0/26")].next_hop is None  # next-hop self
    assert got[IPNetwork("fd00:10::/122")].next_hop == nh6
    assert set(plan_bgp_announcements(blocks, [], None)) == {IPNetwork("10.0.0.0/26")}
