"""rtnetlink.routes and rtnetlink.wire against pyroute2's own rtnetlink classes: what we
encode, pyroute2 decodes to the same route; what pyroute2 encodes (the shape
of a kernel dump message), we parse to the same route."""

from __future__ import annotations

import ipaddress
import socket
import struct

from hypothesis import given
from hypothesis import strategies as st
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from rtnetlink import routes as nr
from rtnetlink import wire as nw


def _canon(family: int, text: str) -> str:
    """The kernel's (inet_ntop's) spelling, e.g. ``::1:0`` not ``::0.1.0.0``."""
    return socket.inet_ntop(family, socket.inet_pton(family, text))


def networks(family: int) -> st.SearchStrategy[tuple[str, int]]:
    bits = 32 if family == nw.AF_INET else 128
    cls = ipaddress.IPv4Network if family == nw.AF_INET else ipaddress.IPv6Network

    def build(value: int, plen: int) -> tuple[str, int]:
        n = cls((value, plen), strict=False)
        return _canon(family, str(n.network_address)), plen

    return st.builds(build, st.integers(0, 2**bits - 1), st.integers(0, bits))


def addresses(family: int) -> st.SearchStrategy[str]:
    bits = 32 if family == nw.AF_INET else 128
    cls = ipaddress.IPv4Address if family == nw.AF_INET else ipaddress.IPv6Address
    return st.integers(1, 2**bits - 1).map(lambda v: _canon(family, str(cls(v))))


@st.composite
def wire_routes(draw: st.DrawFn) -> nr.WireRoute:
    family = draw(st.sampled_from([nw.AF_INET, nw.AF_INET6]))
    dst, plen = draw(networks(family))
    shape = draw(st.sampled_from(["unicast", "multipath", "blackhole"]))
    common = {
        "family": family,
        "dst": dst,
        "dst_len": plen,
        "mtu": draw(st.none() | st.integers(68, 65535)),
        "proto": draw(st.integers(1, 255)),
        "table": draw(st.sampled_from([254, 253, 100]) | st.integers(256, 2**32 - 1)),
    }
    if shape == "blackhole":
        return nr.WireRoute(type=nr.RTN_BLACKHOLE, **common)  # type: ignore[arg-type]
    if shape == "unicast":
        return nr.WireRoute(  # type: ignore[arg-type]
            gateway=draw(addresses(family)),
            oif=draw(st.integers(1, 2**31 - 1)),
            flags=draw(st.sampled_from([0, nr.RTNH_F_ONLINK])),
            **common,
        )
    hops = draw(
        st.lists(
            st.builds(
                nr.WireNexthop,
                gateway=addresses(family),
                oif=st.integers(1, 2**31 - 1),
                flags=st.sampled_from([0, nr.RTNH_F_ONLINK]),
                hops=st.integers(0, 255),
            ),
            min_size=2,
            max_size=8,
        )
    )
    return nr.WireRoute(multipath=tuple(hops), **common)  # type: ignore[arg-type]


def _from_pyroute2(m: rtmsg) -> nr.WireRoute:
    """What pyroute2 decoded, as a WireRoute, for comparison."""
    family = m["family"]
    metrics = m.get_attr("RTA_METRICS")
    mp = m.get_attr("RTA_MULTIPATH") or []
    zero = "0.0.0.0" if family == nw.AF_INET else "::"
    return nr.WireRoute(
        family=family,
        dst=m.get_attr("RTA_DST") or zero,
        dst_len=m["dst_len"],
        type=m["type"],
        gateway=m.get_attr("RTA_GATEWAY"),
        oif=m.get_attr("RTA_OIF"),
        flags=m["flags"],
        multipath=tuple(
            nr.WireNexthop(h.get_attr("RTA_GATEWAY"), h["oif"], h["flags"], h["hops"]) for h in mp
        ),
        mtu=metrics.get_attr("RTAX_MTU") if metrics else None,
        proto=m["proto"],
        table=m.get_attr("RTA_TABLE") or m["table"],
    )


def to_pyroute2(r: nr.WireRoute) -> bytes:
    """The same route encoded by pyroute2, shaped as the kernel dumps it
    (RTA_TABLE always present, rtm_table = COMPAT above 255)."""
    m = rtmsg()
    m["header"]["type"] = nr.RTM_NEWROUTE
    m["header"]["flags"] = nw.NLM_F_MULTI
    m["header"]["sequence_number"] = 9
    m["family"] = r.family
    m["dst_len"] = r.dst_len
    m["table"] = r.table if r.table < 256 else nr.RT_TABLE_COMPAT
    m["proto"] = r.proto
    m["type"] = r.type
    m["flags"] = r.flags
    attrs: list[tuple[str, object]] = [("RTA_TABLE", r.table)]
    if r.dst_len:
        attrs.append(("RTA_DST", r.dst))
    if r.gateway:
        attrs.append(("RTA_GATEWAY", r.gateway))
    if r.oif is not None:
        attrs.append(("RTA_OIF", r.oif))
    if r.multipath:
        attrs.append(
            (
                "RTA_MULTIPATH",
                [
                    {
                        "oif": h.oif,
                        "hops": h.hops,
                        "flags": h.flags,
                        "attrs": [("RTA_GATEWAY", h.gateway)],
                    }
                    for h in r.multipath
                ],
            )
        )
    if r.mtu is not None:
        attrs.append(("RTA_METRICS", {"attrs": [("RTAX_MTU", r.mtu)]}))
    m["attrs"] = attrs
    m.encode()
    return bytes(m.data)


@given(wire_routes(), st.integers(1, 2**32 - 1), st.booleans(), st.booleans())
def test_pyroute2_decodes_our_new_route_to_the_same_route(
    route: nr.WireRoute, seq: int, replace: bool, ack: bool
) -> None:
    data = nr.encode_new_route(route, seq, replace=replace, ack=ack)
    m = rtmsg(data)
    m.decode()
    assert m["header"]["length"] == len(data)
    assert m["header"]["type"] == nr.RTM_NEWROUTE
    assert m["header"]["sequence_number"] == seq
    want_flags = nw.NLM_F_REQUEST | nw.NLM_F_CREATE
    want_flags |= nw.NLM_F_REPLACE if replace else nw.NLM_F_EXCL
    want_flags |= nw.NLM_F_ACK if ack else 0
    assert m["header"]["flags"] == want_flags
    assert _from_pyroute2(m) == route
    # large table ids travel only in RTA_TABLE (rtm_table is 8 bits)
    assert m["table"] == (route.table if route.table < 256 else 0)


@given(wire_routes(), st.integers(1, 2**32 - 1))
def test_pyroute2_decodes_our_delete_to_prefix_table_and_proto_only(
    route: nr.WireRoute, seq: int
) -> None:
    m = rtmsg(nr.encode_del_route(route, seq))
    m.decode()
    assert m["header"]["type"] == nr.RTM_DELROUTE
    assert m["scope"] == nr.RT_SCOPE_NOWHERE and m["type"] == nr.RTN_UNSPEC
    got = _from_pyroute2(m)
    assert (got.family, got.dst, got.dst_len, got.proto, got.table) == (
        route.family,
        route.dst,
        route.dst_len,
        route.proto,
        route.table,
    )
    assert got.gateway is None and got.oif is None and not got.multipath and got.mtu is None


@given(wire_routes())
def test_we_parse_pyroute2_encoded_dump_messages_back_to_the_route(route: nr.WireRoute) -> None:
    data = to_pyroute2(route)
    [(mtype, flags, seq, start, end)] = list(nw.iter_messages(data))
    assert (mtype, flags, seq) == (nr.RTM_NEWROUTE, nw.NLM_F_MULTI, 9)
    assert nr.parse_route(data, start, end) == route
    assert nr.parse_route(data, start, end, proto=route.proto) == route
    assert nr.parse_route(data, start, end, proto=(route.proto % 255) + 1) is None


@given(wire_routes())
def test_our_encoding_parses_back_to_the_route(route: nr.WireRoute) -> None:
    data = nr.encode_new_route(route, 1)
    [(_t, _f, _s, start, end)] = list(nw.iter_messages(data))
    assert nr.parse_route(data, start, end) == route


def test_single_route_bytes_match_pyroute2_encoding_exactly() -> None:
    r = nr.WireRoute(
        nw.AF_INET,
        "10.244.1.0",
        26,
        gateway="192.0.2.2",
        oif=3,
        flags=nr.RTNH_F_ONLINK,
        mtu=1430,
        proto=80,
        table=254,
    )
    m = rtmsg()
    m["header"]["type"] = nr.RTM_NEWROUTE
    m["header"]["flags"] = nr.REPLACE_ROUTE_FLAGS | nw.NLM_F_ACK
    m["header"]["sequence_number"] = 42
    m.update({"family": 2, "dst_len": 26, "table": 254, "proto": 80, "type": 1, "flags": 4})
    m["attrs"] = [
        ("RTA_DST", "10.244.1.0"),
        ("RTA_GATEWAY", "192.0.2.2"),
        ("RTA_OIF", 3),
        ("RTA_METRICS", {"attrs": [("RTAX_MTU", 1430)]}),
    ]
    m.encode()
    assert nr.encode_new_route(r, 42) == bytes(m.data)


def test_error_and_ack_parse_with_extended_ack_message() -> None:
    # As the kernel sends them with NETLINK_CAP_ACK and NETLINK_EXT_ACK on:
    # errno, the request's header (capped: no payload), then TLVs.
    echoed = struct.pack("=IHHII", 60, nr.RTM_NEWROUTE, 0x405, 17, 0)
    text = b"Nexthop has invalid gateway\0"
    tlv = struct.pack("=HH", 4 + len(text), nw.NLMSGERR_ATTR_MSG) + text
    tlv += b"\0" * (-len(tlv) % 4)
    body = struct.pack("=i", -101) + echoed + tlv
    flags = nw.NLM_F_CAPPED | nw.NLM_F_ACK_TLVS
    err = struct.pack("=IHHII", 16 + len(body), nw.NLMSG_ERROR, flags, 17, 0) + body
    ack_body = struct.pack("=i", 0) + echoed
    ack = struct.pack("=IHHII", 16 + len(ack_body), nw.NLMSG_ERROR, nw.NLM_F_CAPPED, 18, 0)
    data = err + ack + ack_body
    msgs = list(nw.iter_messages(data))
    assert [m[0] for m in msgs] == [nw.NLMSG_ERROR, nw.NLMSG_ERROR]
    replies = [nw.parse_error(data, s, f, a, b) for _t, f, s, a, b in msgs]
    assert replies == [
        nw.NetlinkReply(seq=17, error=101, message="Nexthop has invalid gateway"),
        nw.NetlinkReply(seq=18, error=0),
    ]


def test_truncated_buffer_is_refused() -> None:
    data = nr.encode_new_route(nr.WireRoute(nw.AF_INET, "10.0.0.0", 8), 1)
    try:
        list(nw.iter_messages(data[:-4]))
    except ValueError as e:
        assert "truncated" in str(e)
    else:
        raise AssertionError("a truncated message parsed")


def test_dump_request_carries_the_protocol_filter() -> None:
    m = rtmsg(nr.encode_dump_request(nw.AF_INET6, 5, proto=80, table=1000))
    m.decode()
    assert m["header"]["flags"] == nw.NLM_F_REQUEST | nw.NLM_F_DUMP
    assert (m["family"], m["proto"], m["table"], m.get_attr("RTA_TABLE")) == (10, 80, 0, 1000)
