"""The node's hand-over of bgpd's best routes to felix_lite."""

from __future__ import annotations

from netaddr import IPAddress, IPNetwork

from bgpd.model import BestRoute
from meshroute.node.bgp_plan import to_felix_changes


def test_felix_changes_drop_routes_lacking_next_hops() -> None:
    nh = (IPAddress("192.0.2.1"),)
    prefixes = ["10.1.0.0/26", "fd00::/64", "10.0.0.64/26", "10.0.0.0/16", "10.0.0.0/26"]
    best: dict[IPNetwork, BestRoute | None] = {
        IPNetwork(p): BestRoute(IPNetwork(p), nh) for p in prefixes
    }
    best[IPNetwork("10.2.0.0/26")] = BestRoute(IPNetwork("10.2.0.0/26"), ())
    best[IPNetwork("10.3.0.0/26")] = None
    got = to_felix_changes(best)
    assert got[IPNetwork("10.2.0.0/26")] is None and got[IPNetwork("10.3.0.0/26")] is None
    kept = {str(p): r for p, r in got.items() if r is not None}
    assert sorted(kept) == sorted(prefixes)
    assert all(r.nexthops == nh and str(r.prefix) == p for p, r in kept.items())
