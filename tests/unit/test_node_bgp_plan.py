"""The node's hand-over of bgpd's best routes to felix_lite."""

from __future__ import annotations

from netaddr import IPAddress, IPNetwork

from bgpd.model import BestRoute
from meshroute.node.bgp_plan import to_felix_routes


def test_felix_routes_without_routes_lacking_next_hops() -> None:
    nh = (IPAddress("192.0.2.1"),)
    prefixes = ["10.1.0.0/26", "fd00::/64", "10.0.0.64/26", "10.0.0.0/16", "10.0.0.0/26"]
    best = {IPNetwork(p): BestRoute(IPNetwork(p), nh) for p in prefixes}
    best[IPNetwork("10.2.0.0/26")] = BestRoute(IPNetwork("10.2.0.0/26"), ())
    got = to_felix_routes(best)
    assert sorted(str(r.prefix) for r in got) == sorted(prefixes)
    assert all(r.nexthops == nh for r in got)
