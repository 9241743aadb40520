"""The dual-homed lab's plan: two point-to-point uplinks per node to two ToRs
(BIRD and FRR) of its rack, BFD with one profile on both ends of every
node session, both ToRs eBGP to the spine; and FRR's rendered config."""

from __future__ import annotations

import pytest

from bgpd.bird_config import BfdOptions, render_bird
from lab.dual_homed import (
    BFD_MS,
    BFD_MULTIPLIER,
    BFD_PROFILE,
    DETECT_MS,
    UPLINKS,
    plan_topology,
    tor_b_as,
    tor_ip,
    tor_label,
)
from lab.frr import FrrBfdProfile, FrrNeighbor, FrrRouter, render_frr
from lab.topology import ROUTER_AS, LabParams, plan_lab, tor_as
from meshroute.resources import (
    BFDProfileResource,
    BGPConfigurationResource,
    BGPPeerResource,
    IPPoolResource,
    parse_documents,
)


@pytest.mark.parametrize(("racks", "per_rack"), [(1, 1), (2, 2), (4, 19)])
def test_every_node_has_one_uplink_to_each_tor_of_its_rack(racks: int, per_rack: int) -> None:
    plan = plan_topology(LabParams(topology="dual-homed", racks=racks, nodes_per_rack=per_rack))
    assert plan.params.topology == "dual-homed"
    assert not plan.bridges  # no shared segment: every uplink is its own link
    for n in plan.nodes:
        ups = sorted((v for v in plan.veths if v.a_ns == n.ns), key=lambda v: v.a_if)
        assert [v.a_if for v in ups] == list(UPLINKS)
        for v, side in zip(ups, "ab", strict=True):
            assert v.b_ns == tor_label(n.rack, side)
            assert (v.a_address, v.a_peer) == (f"{n.ip}/32", f"{tor_ip(n.rack, side)}/32")
            assert (v.b_address, v.b_peer) == (f"{tor_ip(n.rack, side)}/32", f"{n.ip}/32")
        ns = next(p for p in plan.namespaces if p.label == n.ns)
        assert ns.forwarding and ns.default_via is None
    assert len(plan.frr) == racks
    tors = [s for s in plan.speakers if s.role == "tor"]
    assert [s.ns for s in tors] == [tor_label(r, "a") for r in range(1, racks + 1)]


def test_plan_lab_leaves_dual_homed_to_plan_topology() -> None:
    with pytest.raises(ValueError, match="plan_topology"):
        plan_lab(LabParams(topology="dual-homed"))
    assert plan_topology(LabParams(topology="rr")) == plan_lab(LabParams(topology="rr"))


def test_both_tors_peer_each_rack_node_with_bfd_and_the_spine() -> None:
    plan = plan_topology(LabParams(topology="dual-homed", racks=2, bgp_password="pw"))
    bfd = BfdOptions(BFD_MS, BFD_MS, BFD_MULTIPLIER)
    for r in (1, 2):
        rack = [n for n in plan.nodes if n.rack == r]
        bird = next(s for s in plan.speakers if s.ns == tor_label(r, "a")).bird
        assert bird.local_as == tor_as(r) and bird.router_id == tor_ip(r, "a")
        peers = {nb.address: nb for nb in bird.neighbors if nb.name.startswith("node_")}
        assert set(peers) == {n.ip for n in rack}
        for n in rack:
            nb = peers[n.ip]
            assert (nb.peer_as, nb.local_address, nb.bfd) == (n.as_number, tor_ip(r, "a"), bfd)
            assert nb.passive and nb.password == "pw"
        assert "  bfd { min rx interval 300 ms; min tx interval 300 ms; multiplier 3;" in (
            render_bird(bird)
        )
        frr = next(f for f in plan.frr if f.ns == tor_label(r, "b"))
        assert frr.dir.endswith(f"/{tor_label(r, 'b')}/frr")
        assert set(frr.neighbors) - {n.ip for n in rack} == {frr.neighbors[0]}  # the spine
        assert f"router bgp {tor_b_as(r)}\n bgp router-id {tor_ip(r, 'b')}\n" in frr.config
        for n in rack:
            assert f" neighbor {n.ip} remote-as {n.as_number}\n" in frr.config
            assert f" neighbor {n.ip} passive\n" in frr.config
            assert f" neighbor {n.ip} bfd profile {BFD_PROFILE}\n" in frr.config
            assert f" neighbor {n.ip} password pw\n" in frr.config
            assert f" neighbor {n.ip} update-source p-{n.ns}\n" in frr.config
        assert f" neighbor {frr.neighbors[0]} remote-as {ROUTER_AS}\n" in frr.config
    spine = next(s for s in plan.speakers if s.role == "router").bird
    assert sorted(nb.peer_as for nb in spine.neighbors) == sorted(
        [tor_as(1), tor_as(2), tor_b_as(1), tor_b_as(2)]
    )
    assert DETECT_MS == BFD_MS * BFD_MULTIPLIER


def test_resources_name_one_bfd_profile_for_both_tors_of_each_rack() -> None:
    plan = plan_topology(LabParams(topology="dual-homed", racks=2))
    docs = {x.resource.metadata.name: x.resource for x in parse_documents(plan.resources_yaml, "y")}
    profile = docs[BFD_PROFILE]
    assert isinstance(profile, BFDProfileResource)
    assert profile.spec.receive_interval == profile.spec.transmit_interval == BFD_MS
    assert profile.spec.detect_multiplier == BFD_MULTIPLIER
    pool, conf = docs["lab-pods"], docs["default"]
    assert isinstance(pool, IPPoolResource) and pool.spec.vxlan_mode.value == "Never"
    assert pool.spec.ipip_mode.value == "Never"  # the fabric carries pod routes
    assert isinstance(conf, BGPConfigurationResource)
    assert not conf.spec.node_to_node_mesh_enabled
    assert conf.spec.node_as_numbers == {n.name: n.as_number for n in plan.nodes}
    peers = [d for d in docs.values() if isinstance(d, BGPPeerResource)]
    assert sorted(p.metadata.name for p in peers) == [
        "rack1-tor-a",
        "rack1-tor-b",
        "rack2-tor-a",
        "rack2-tor-b",
    ]
    for p in peers:
        r, side = int(p.metadata.name[4]), p.metadata.name[-1]
        assert str(p.spec.peer_ip) == tor_ip(r, side)
        assert p.spec.as_number == (tor_as(r) if side == "a" else tor_b_as(r))
        assert p.spec.bfd_profile == BFD_PROFILE and p.spec.node_selector == f"rack == 'r{r}'"


def test_frr_config_renders_filters_bfd_profiles_and_neighbours() -> None:
    router = FrrRouter(
        hostname="t",
        router_id="192.0.2.2",
        local_as=65011,
        neighbors=(
            FrrNeighbor("198.51.100.17", 65000, "fabric"),
            FrrNeighbor(
                "192.0.2.10", 64600, "pods", passive=True, bfd_profile="tor", interface="p-n1"
            ),
        ),
        prefix_lists=(("pods", ("permit 10.244.0.0/16 ge 26 le 32",)),),
        bfd_profiles=(FrrBfdProfile("tor", 300, 200, 3),),
    )
    assert render_frr(router) == (
        "frr defaults traditional\n"
        "hostname t\n"
        "!\n"
        "ip prefix-list pods seq 10 permit 10.244.0.0/16 ge 26 le 32\n"
        "route-map pods permit 10\n"
        " match ip address prefix-list pods\n"
        "!\n"
        "bfd\n"
        " profile tor\n"
        "  receive-interval 300\n"
        "  transmit-interval 200\n"
        "  detect-multiplier 3\n"
        " !\n"
        "!\n"
        "router bgp 65011\n"
        " bgp router-id 192.0.2.2\n"
        " no bgp ebgp-requires-policy\n"
        " no bgp network import-check\n"
        " bgp graceful-restart\n"
        " neighbor 198.51.100.17 remote-as 65000\n"
        " neighbor 198.51.100.17 timers connect 1\n"
        " neighbor 192.0.2.10 remote-as 64600\n"
        " neighbor 192.0.2.10 timers connect 1\n"
        " neighbor 192.0.2.10 passive\n"
        " neighbor 192.0.2.10 bfd profile tor\n"
        " neighbor 192.0.2.10 update-source p-n1\n"
        " address-family ipv4 unicast\n"
        "  neighbor 198.51.100.17 route-map fabric in\n"
        "  neighbor 198.51.100.17 route-map fabric out\n"
        "  neighbor 192.0.2.10 route-map pods in\n"
        "  neighbor 192.0.2.10 route-map pods out\n"
        " exit-address-family\n"
        "!\n"
    )
