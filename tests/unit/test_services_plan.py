"""The node's service decisions (pure): which prefixes it advertises and how
it delivers each address; the announcements the speaker gets."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st
from netaddr import IPAddress, IPNetwork

from felix_lite.service_nat import ServiceNat, ServicePort
from ipam.endpoint import WorkloadEndpoint
from ipam.model import IpamSettings, Snapshot
from meshroute.node.bgp_plan import plan_bgp_announcements
from meshroute.node.plan import plan_announcements
from meshroute.node.services_plan import (
    endpoint_addresses,
    plan_service_nat,
    plan_service_prefixes,
)
from meshroute.node.view import ClusterView
from meshroute.resources import BGPConfigurationSpec
from meshroute.service_resources import ServiceAddressSpec


def svc(
    address: str, *endpoints: str, port: int = 80, target: int | None = None
) -> ServiceAddressSpec:
    return ServiceAddressSpec.model_validate(
        {
            "address": address,
            "ports": [{"port": port, "targetPort": target}],
            "endpoints": list(endpoints),
        }
    )


def ips(*a: str) -> frozenset[IPAddress]:
    return frozenset(IPAddress(x) for x in a)


SERVICES = {
    "web": svc("203.0.113.10", "10.244.1.5", "10.244.2.7", target=8080),
    "dns": svc("203.0.113.53", "10.244.2.8", port=53),
    "web6": svc("2001:db8:5::10", "fd00:244::5"),
}


def test_a_node_advertises_the_addresses_it_has_a_local_endpoint_for() -> None:
    config = BGPConfigurationSpec()
    assert plan_service_prefixes(config, SERVICES, ips("10.244.1.5")) == [
        IPNetwork("203.0.113.10/32")
    ]
    assert plan_service_prefixes(
        config, SERVICES, ips("10.244.2.7", "10.244.2.8", "fd00:244::5")
    ) == [
        IPNetwork("203.0.113.10/32"),
        IPNetwork("203.0.113.53/32"),
        IPNetwork("2001:db8:5::10/128"),
    ]
    # the last local endpoint gone (or never there): nothing
    assert plan_service_prefixes(config, SERVICES, ips()) == []
    assert plan_service_prefixes(config, SERVICES, ips("10.244.9.9")) == []
    # the same 32 bits as an IPv6 address are another address
    assert plan_service_prefixes(config, SERVICES, ips("::10.244.1.5")) == []


def test_service_ranges_are_advertised_by_every_node_as_aggregates() -> None:
    config = BGPConfigurationSpec.model_validate(
        {
            "serviceClusterIPs": ["10.96.0.0/12", "fd00:96::/108"],
            "serviceExternalIPs": ["198.51.100.0/24"],
            "serviceLoadBalancerIPs": ["203.0.113.0/24", "10.96.0.0/12"],
        }
    )
    got = plan_service_prefixes(config, SERVICES, ips("10.244.1.5"))
    assert got == [
        IPNetwork("10.96.0.0/12"),  # once, though listed twice
        IPNetwork("198.51.100.0/24"),
        IPNetwork("203.0.113.0/24"),
        IPNetwork("203.0.113.10/32"),  # the host route inside its range too
        IPNetwork("fd00:96::/108"),
    ]
    # a change of the configuration changes the plan, nothing else
    fewer = config.model_copy(update={"service_external_ips": ()})
    assert IPNetwork("198.51.100.0/24") not in plan_service_prefixes(fewer, SERVICES, ips())


def test_delivery_prefers_local_endpoints_then_the_clusters_masqueraded() -> None:
    ready = ips("10.244.1.5", "10.244.2.7", "10.244.2.8")
    got = plan_service_nat(SERVICES, ips("10.244.1.5"), ready)
    assert got == (
        # dns: no local endpoint, one elsewhere
        ServiceNat(
            IPAddress("203.0.113.53"), (ServicePort("tcp", 53, 53),), ips_t("10.244.2.8"), True
        ),
        ServiceNat(IPAddress("203.0.113.10"), (ServicePort("tcp", 80, 8080),), ips_t("10.244.1.5")),
        # web6: its endpoint is ready nowhere: no DNAT at all
    )


def ips_t(*a: str) -> tuple[IPAddress, ...]:
    return tuple(IPAddress(x) for x in a)


def test_an_address_stored_twice_is_delivered_once() -> None:
    two = {"a": svc("203.0.113.10", "10.0.0.1"), "b": svc("203.0.113.10", "10.0.0.2")}
    [only] = plan_service_nat(two, ips("10.0.0.1", "10.0.0.2"), ips("10.0.0.1", "10.0.0.2"))
    assert only.targets == ips_t("10.0.0.1")


def test_endpoint_addresses_of_one_node_or_all() -> None:
    pairs = [("a", ("10.244.1.5/32", "fd00::5/128")), ("b", (IPNetwork("10.244.2.7/32"),))]
    assert endpoint_addresses(pairs, "a") == ips("10.244.1.5", "fd00::5")
    assert endpoint_addresses(pairs) == ips("10.244.1.5", "fd00::5", "10.244.2.7")


@given(st.sets(st.sampled_from(["10.244.1.5", "10.244.2.7", "10.244.2.8", "fd00:244::5"])))
def test_advertised_exactly_when_delivered_locally(local: set[str]) -> None:
    """The node advertises an address iff it delivers it to a local
    endpoint: never a route to a node that would forward elsewhere."""
    mine = ips(*local)
    advertised = {p.ip for p in plan_service_prefixes(BGPConfigurationSpec(), SERVICES, mine)}
    everywhere = ips("10.244.1.5", "10.244.2.7", "10.244.2.8", "fd00:244::5")
    local_nat = {
        s.address for s in plan_service_nat(SERVICES, mine, everywhere) if not s.masquerade
    }
    assert advertised == local_nat


def test_announcements_carry_the_service_prefixes_of_this_node() -> None:
    ep = WorkloadEndpoint("a", "x", "web-1", "c1", "eth0", ips=("10.244.1.5/32",))
    other = WorkloadEndpoint("b", "x", "web-2", "c2", "eth0", ips=("10.244.2.7/32",))
    snap = Snapshot(
        {},
        {},
        {},
        {},
        IpamSettings(),
        1,
        {("a", ep.handle): (ep, 1), ("b", other.handle): (other, 1)},
    )
    view = ClusterView({}, snap, BGPConfigurationSpec(), {}, services=SERVICES)
    assert plan_announcements(view, "a") == [IPNetwork("203.0.113.10/32")]
    assert plan_announcements(view, "b") == [IPNetwork("203.0.113.10/32")]
    assert plan_announcements(view, "c") == []
    # the pod's endpoint record gone: a withdraws
    gone = replace(view, ipam=replace(snap, endpoints={("b", other.handle): (other, 1)}))
    assert plan_announcements(gone, "a") == []
    # next hop self for IPv4 through the node's export planning
    out = plan_bgp_announcements(plan_announcements(view, "a"), [(64512, 100)], None)
    assert out[IPNetwork("203.0.113.10/32")].communities == ((64512, 100),)
