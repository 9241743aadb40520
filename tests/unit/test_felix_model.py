"""felix_lite's model values: netaddr read through its slots, and routes
built straight into theirs, agree with the public ways."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st
from netaddr import IPAddress, IPNetwork

from felix_lite.model import (
    KernelRoute,
    NextHop,
    RouteKind,
    net_fields,
    network_value,
    prefix_text,
)


@st.composite
def networks(draw: st.DrawFn) -> IPNetwork:
    version = draw(st.sampled_from([4, 6]))
    width = 32 if version == 4 else 128
    value = draw(st.integers(0, 2**width - 1))
    plen = draw(st.integers(0, width))
    return IPNetwork((value, plen), version=version)


@given(networks())
def test_slots_read_as_the_public_properties(net: IPNetwork) -> None:
    assert net_fields(net) == (net.version, net.prefixlen, net.value)
    assert network_value(net) == net.first
    assert prefix_text(net) == str(net.cidr)


def test_a_route_is_built_as_its_fields_say_and_stays_frozen() -> None:
    nh = (NextHop(IPAddress("192.0.2.2"), "v0"),)
    r = KernelRoute(IPNetwork("10.1.2.77/26"), RouteKind.IPIP, nh, 1480, 100)
    assert (r.dst, r.kind, r.nexthops, r.mtu, r.table) == (
        IPNetwork("10.1.2.77/26"), RouteKind.IPIP, nh, 1480, 100,
    )  # fmt: skip
    assert r.key == (100, "10.1.2.64/26")
    assert KernelRoute(IPNetwork("10.1.2.64/26"), RouteKind.BLACKHOLE).key == (254, "10.1.2.64/26")
    # the key a caller spelled is taken as given
    assert KernelRoute(IPNetwork("10.1.2.64/26"), RouteKind.IPIP, text="x").key == (254, "x")
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.mtu = 1500  # type: ignore[misc]
    moved = dataclasses.replace(r, table=7)
    assert moved.key == (7, "10.1.2.64/26") and moved.nexthops == nh
    assert r == KernelRoute(IPNetwork("10.1.2.77/26"), RouteKind.IPIP, nh, 1480, 100)
    assert hash(r) == hash(r.key) and r != moved
