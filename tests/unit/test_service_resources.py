"""ServiceAddress and the BGPConfiguration's service ranges as ``apply``
loads them (pure): what is accepted, what is refused with the field named,
and the rules across resources."""

from __future__ import annotations

import pytest
from netaddr import IPAddress, IPNetwork

from meshroute.resources import BGPConfigurationResource, ResourceError, parse_documents
from meshroute.service_resources import ServiceAddressResource
from meshroute.service_rules import service_conflicts

GOOD = """\
apiVersion: meshroute.io/v1
kind: ServiceAddress
metadata: {name: web}
spec:
  address: 203.0.113.10
  ports: [{port: 80, targetPort: 8080}, {port: 53, protocol: UDP}]
  endpoints: [10.244.1.5, 10.244.2.7]
"""


def test_a_service_address_loads_with_defaults() -> None:
    [item] = parse_documents(GOOD, "svc.yaml")
    r = item.resource
    assert isinstance(r, ServiceAddressResource)
    assert r.spec.address == IPAddress("203.0.113.10")
    assert [(p.port, p.protocol, p.target) for p in r.spec.ports] == [
        (80, "TCP", 8080),
        (53, "UDP", 53),
    ]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ("endpoints: [fd00::1]", "spec.endpoints.0: fd00::1 is IPv6, the address IPv4"),
        ("ports: [{port: 80}, {port: 80, protocol: TCP}]", "spec.ports.1: TCP 80 is listed twice"),
        ("ports: [{port: 70000}]", "spec.ports.0.port"),
        ("ports: [{port: .nan}]", "spec.ports.0.port"),
        ("ports: []", "spec.ports"),
        ("ports: [{port: 80, extra: 1}]", "spec.ports.0.extra"),
        ("endpoints: [[[[[[1]]]]]]", "spec.endpoints.0"),
    ],
)
def test_bad_fields_are_named(change: str, expected: str) -> None:
    key = change.split(":", 1)[0]
    text = "\n".join(
        line if not line.strip().startswith(f"{key}:") else f"  {change}"
        for line in GOOD.splitlines()
    )
    with pytest.raises(ResourceError) as e:
        parse_documents(text, "svc.yaml")
    assert expected in str(e.value) and "svc.yaml: document 1 (ServiceAddress web)" in str(e.value)


def test_a_huge_address_is_quoted_short() -> None:
    with pytest.raises(ResourceError) as e:
        parse_documents(GOOD.replace("203.0.113.10", "x" * 100_000), "svc.yaml")
    assert "spec.address" in str(e.value) and len(str(e.value)) < 500


def test_service_ranges_without_host_bits() -> None:
    doc = (
        "apiVersion: meshroute.io/v1\nkind: BGPConfiguration\nmetadata: {name: default}\n"
        "spec: {serviceClusterIPs: [10.96.0.0/12], serviceExternalIPs: ['fd00:96::1/64']}\n"
    )
    with pytest.raises(ResourceError, match=r"spec.serviceExternalIPs.0: fd00:96::1/64 has host"):
        parse_documents(doc, "bgp.yaml")
    [ok] = parse_documents(doc.replace("fd00:96::1/64", "fd00:96::/64"), "bgp.yaml")
    assert isinstance(ok.resource, BGPConfigurationResource)
    assert ok.resource.spec.service_ranges() == (
        IPNetwork("10.96.0.0/12"),
        IPNetwork("fd00:96::/64"),
    )


def test_conflicts_across_service_addresses_and_pools() -> None:
    a = IPAddress("203.0.113.10")
    pools = {"pods": IPNetwork("10.244.0.0/16")}
    # re-applying a ServiceAddress with its own address is no conflict
    assert service_conflicts([("f: 1", "web", a)], {"web": a}, pools) == []
    assert service_conflicts([("f: 1", "web2", a)], {"web": a}, pools) == [
        "f: 1: spec.address: 203.0.113.10 is already existing serviceaddress web's"
    ]
    twice = service_conflicts([("f: 1", "x", a), ("f: 2", "y", a)], {}, pools)
    assert twice == ["f: 2: spec.address: 203.0.113.10 is already serviceaddress x's"]
    [inside] = service_conflicts([("f: 1", "x", IPAddress("10.244.0.9"))], {}, pools)
    assert "is in IP pool pods (10.244.0.0/16)" in inside
