"""felix_lite.netlink_routes: KernelRoutes to rtnetlink route messages and
back, by the WireRoute path and by the cached encoder and decoder, which must
give the same bytes and the same routes."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from netaddr import IPAddress, IPNetwork

from felix_lite import netlink_routes as nc
from felix_lite.model import KernelRoute, NextHop, RouteKind
from rtnetlink import routes as nr
from rtnetlink import wire as nw
from tests.unit.test_rtnetlink_wire import addresses, networks, to_pyroute2


def test_kernel_route_translation_both_ways() -> None:
    idx = {"eth0": 2, "vxlan.mesh": 7, "tunl0": 5}
    names = {v: k for k, v in idx.items()}
    routes = [
        KernelRoute(
            IPNetwork("10.244.1.0/26"), RouteKind.DIRECT, (NextHop(IPAddress("192.0.2.2"), "eth0"),)
        ),
        KernelRoute(
            IPNetwork("10.244.2.0/26"),
            RouteKind.IPIP,
            (NextHop(IPAddress("198.51.100.2"), "tunl0", onlink=True),),
            mtu=1480,
        ),
        KernelRoute(
            IPNetwork("10.244.3.0/26"),
            RouteKind.VXLAN,
            (NextHop(IPAddress("10.244.3.0"), "vxlan.mesh", onlink=True),),
            mtu=1450,
        ),
        KernelRoute(
            IPNetwork("10.244.4.0/26"),
            RouteKind.DIRECT,
            (
                NextHop(IPAddress("192.0.2.2"), "eth0"),
                NextHop(IPAddress("192.0.2.3"), "eth0", weight=3),
            ),
        ),
        KernelRoute(IPNetwork("10.244.0.0/26"), RouteKind.BLACKHOLE, table=1000),
        KernelRoute(
            IPNetwork("fd00:244::/122"), RouteKind.DIRECT, (NextHop(IPAddress("fe80::2"), "eth0"),)
        ),
    ]
    for r in routes:
        w = nc.wire_from_kernel(r, idx, proto=80)
        assert w.proto == 80
        assert nc.kernel_from_wire(w, names) == r
    try:
        nc.wire_from_kernel(routes[0], {})
    except KeyError as e:
        assert "eth0" in str(e)
    else:
        raise AssertionError("unknown interface accepted")


IDX = {"eth0": 2, "tunl0": 5, "vxlan.mesh": 7}
NAMES = {v: k for k, v in IDX.items()}


@st.composite
def kernel_routes(draw: st.DrawFn) -> KernelRoute:
    family = draw(st.sampled_from([nw.AF_INET, nw.AF_INET6]))
    dst, plen = draw(networks(family))
    shape = draw(st.sampled_from(["one", "ecmp", "blackhole"]))
    mtu = draw(st.none() | st.integers(68, 9000))
    table = draw(st.sampled_from([254, 100, 1000]))
    if shape == "blackhole":
        return KernelRoute(IPNetwork(f"{dst}/{plen}"), RouteKind.BLACKHOLE, mtu=mtu, table=table)
    hop = st.builds(
        NextHop,
        gateway=addresses(family).map(IPAddress),
        ifname=st.sampled_from(sorted(IDX)),
        onlink=st.booleans(),
        weight=st.just(1) if shape == "one" else st.integers(1, 256),
    )
    hops = draw(
        st.lists(hop, min_size=1 if shape == "one" else 2, max_size=1 if shape == "one" else 4)
    )
    return KernelRoute(IPNetwork(f"{dst}/{plen}"), RouteKind.DIRECT, tuple(hops), mtu, table)


@given(kernel_routes(), st.integers(1, 255))
def test_route_encoder_writes_the_same_bytes_as_the_wire_route_path(
    route: KernelRoute, proto: int
) -> None:
    enc = nc.RouteEncoder(IDX, proto)
    wire = nc.wire_from_kernel(route, IDX, proto=proto)
    assert enc.new_body(route) == nr.encode_route_body(wire)
    assert enc.delete_body(route) == nr.encode_delete_body(wire)
    assert enc.new_body(route) == nr.encode_route_body(wire)  # from its cache


@given(st.lists(kernel_routes(), min_size=1, max_size=12), st.integers(1, 255))
def test_one_encoder_deletes_many_routes_as_the_wire_route_path(
    routes: list[KernelRoute], proto: int
) -> None:
    """Its delete headers are cached by family, length and table: a route
    of another shape after the first must not get the first one's."""
    enc = nc.RouteEncoder(IDX, proto)
    for route in routes + routes:
        wire = nc.wire_from_kernel(route, IDX, proto=proto)
        assert enc.delete_body(route) == nr.encode_delete_body(wire)


@given(kernel_routes(), st.integers(1, 255))
def test_route_decoder_reads_the_same_route_as_the_wire_route_path(
    route: KernelRoute, proto: int
) -> None:
    dec = nc.RouteDecoder(NAMES)
    data = to_pyroute2(nc.wire_from_kernel(route, IDX, proto=proto))
    [(_t, _f, _s, start, end)] = list(nw.iter_messages(data))
    got = dec.parse(data, start, end, proto)
    assert got == nc.kernel_from_wire(nr.parse_route(data, start, end), NAMES)
    assert got is not None and got.key == route.key
    assert got.nexthops == route.nexthops and got.mtu == route.mtu
    assert dec.parse(data, start, end, (proto % 255) + 1) is None


def test_route_decoder_fast_path_on_the_kernels_own_layout() -> None:
    # Captured from `ip route add 10.0.1.0/26 via 192.0.2.2 proto 80 mtu 1400`
    # and the same with `via 198.51.100.2 dev v0 onlink` (flags 0x10 =
    # RTNH_F_LINKDOWN: the veth's peer was down).
    with_mtu = bytes.fromhex(
        "021a0000fe5000011000000008000f00fe000000080001000a0001000c00080008000200"
        "7805000008000500c00002020800040003000000"
    )
    onlink = bytes.fromhex(
        "021a0000fe5000011400000008000f00fe000000080001000a00020008000500c63364020800040003000000"
    )
    dec = nc.RouteDecoder({3: "v0"})
    assert dec.parse(with_mtu, 0, len(with_mtu), 80) == KernelRoute(
        IPNetwork("10.0.1.0/26"),
        RouteKind.DIRECT,
        (NextHop(IPAddress("192.0.2.2"), "v0"),),
        mtu=1400,
    )
    assert dec.parse(onlink, 0, len(onlink), 80) == KernelRoute(
        IPNetwork("10.0.2.0/26"),
        RouteKind.DIRECT,
        (NextHop(IPAddress("198.51.100.2"), "v0", onlink=True),),
    )
    for data in (with_mtu, onlink):
        assert dec.parse(data, 0, len(data), 81) is None
        assert dec.parse(data, 0, len(data)) == nc.kernel_from_wire(
            nr.parse_route(data, 0, len(data)), {3: "v0"}
        )
