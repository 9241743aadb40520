"""rtnetlink.links and rtnetlink.attrs against pyroute2's own rtnetlink classes:
what we encode (veth with a peer in another namespace, VXLAN, IPIP, link
changes, addresses, neighbours and FDB entries), pyroute2 decodes to the
same fields; what pyroute2 encodes in the shape of the kernel's replies
(RTM_NEWLINK with IFLA_LINKINFO, RTM_NEWNEIGH), we parse to the same
fields. The kernel's side of the contract is tests/integration/
test_rtnetlink_client.py."""

from __future__ import annotations

import socket
from typing import Any

import pytest
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.ndmsg import ndmsg

from rtnetlink import attrs as na
from rtnetlink import links as nl
from rtnetlink import wire as nw


def _decode(cls: Any, mtype: int, body: bytes) -> Any:
    msg = cls(nw.frame(mtype, nw.NLM_F_REQUEST, 7, body))
    msg.decode()
    assert msg["header"]["length"] == nw.HDR_LEN + len(body)
    return msg


def _encoded(msg: Any) -> tuple[bytes, int, int]:
    """A message pyroute2 encoded, as (buffer, payload start, payload end)."""
    msg["header"]["type"] = nl.RTM_NEWLINK
    msg.encode()
    data = bytes(msg.data)
    return data, nw.HDR_LEN, len(data)


def test_veth_with_its_peer_in_another_namespace() -> None:
    body = nl.veth_body(
        "mr0123456789ab", "eth0", mtu=1400, peer_netns_fd=9, address="ee:ee:ee:ee:ee:ee"
    )
    m = _decode(ifinfmsg, nl.RTM_NEWLINK, body)
    assert (m["index"], m["flags"], m["change"]) == (0, 0, 0)
    assert m.get_attr("IFLA_IFNAME") == "mr0123456789ab"
    assert m.get_attr("IFLA_MTU") == 1400
    assert m.get_attr("IFLA_ADDRESS") == "ee:ee:ee:ee:ee:ee"
    info = m.get_attr("IFLA_LINKINFO")
    assert info.get_attr("IFLA_INFO_KIND") == "veth"
    peer = info.get_attr("IFLA_INFO_DATA").get_attr("VETH_INFO_PEER")
    assert peer.get_attr("IFLA_IFNAME") == "eth0"
    assert peer.get_attr("IFLA_MTU") == 1400
    assert peer.get_attr("IFLA_NET_NS_FD") == 9


@pytest.mark.parametrize(
    ("local", "local_attr", "parent"),
    [("192.0.2.1", "IFLA_VXLAN_LOCAL", 3), ("2001:db8::1", "IFLA_VXLAN_LOCAL6", None)],
)
def test_vxlan(local: str, local_attr: str, parent: int | None) -> None:
    body = nl.vxlan_body(
        "vxlan.mesh", vni=4096, port=4789, local=local, parent_index=parent, learning=False
    )
    m = _decode(ifinfmsg, nl.RTM_NEWLINK, body)
    assert m.get_attr("IFLA_IFNAME") == "vxlan.mesh"
    info = m.get_attr("IFLA_LINKINFO")
    assert info.get_attr("IFLA_INFO_KIND") == "vxlan"
    data = info.get_attr("IFLA_INFO_DATA")
    assert data.get_attr("IFLA_VXLAN_ID") == 4096
    assert data.get_attr("IFLA_VXLAN_PORT") == 4789  # pyroute2 reads it big-endian
    assert data.get_attr(local_attr) == local
    assert data.get_attr("IFLA_VXLAN_LEARNING") == 0
    assert data.get_attr("IFLA_VXLAN_LINK") == parent


def test_ipip() -> None:
    m = _decode(ifinfmsg, nl.RTM_NEWLINK, nl.ipip_body("tunl0"))
    assert m.get_attr("IFLA_IFNAME") == "tunl0"
    info = m.get_attr("IFLA_LINKINFO")
    assert info.get_attr("IFLA_INFO_KIND") == "ipip"
    assert info.get_attr("IFLA_INFO_DATA") is None


def test_link_changes_name_the_link_by_index_and_change_one_thing() -> None:
    up = _decode(ifinfmsg, nl.RTM_NEWLINK, nl.set_up_body(5, True))
    down = _decode(ifinfmsg, nl.RTM_NEWLINK, nl.set_up_body(5, False))
    assert (up["index"], up["flags"], up["change"], len(up["attrs"])) == (5, 1, 1, 0)
    assert (down["index"], down["flags"], down["change"]) == (5, 0, 1)
    mtu = _decode(ifinfmsg, nl.RTM_NEWLINK, nl.set_mtu_body(5, 1450))
    assert [tuple(a) for a in mtu["attrs"]] == [("IFLA_MTU", 1450)]
    mac = _decode(ifinfmsg, nl.RTM_NEWLINK, nl.set_address_body(5, "66:00:00:00:00:0A"))
    assert mac.get_attr("IFLA_ADDRESS") == "66:00:00:00:00:0a"
    alias = _decode(ifinfmsg, nl.RTM_NEWLINK, nl.set_alias_body(5, "meshroute:felix_lite"))
    assert alias.get_attr("IFLA_IFALIAS") == "meshroute:felix_lite"
    cleared = _decode(ifinfmsg, nl.RTM_NEWLINK, nl.set_alias_body(5, ""))
    assert cleared.get_attr("IFLA_IFALIAS") == ""
    assert _decode(ifinfmsg, nl.RTM_DELLINK, nl.del_body(5))["index"] == 5
    get = _decode(ifinfmsg, nl.RTM_GETLINK, nl.get_by_name_body("eth0"))
    assert (get["index"], get.get_attr("IFLA_IFNAME")) == (0, "eth0")


@pytest.mark.parametrize(
    ("address", "plen", "flags", "family", "attrs"),
    [
        ("10.244.0.5", 32, 0, socket.AF_INET, {"IFA_LOCAL", "IFA_ADDRESS"}),
        ("fd00::5", 128, na.IFA_F_NODAD, socket.AF_INET6, {"IFA_ADDRESS"}),
    ],
)
def test_address(address: str, plen: int, flags: int, family: int, attrs: set[str]) -> None:
    m = _decode(ifaddrmsg, na.RTM_NEWADDR, na.addr_body(4, address, plen, flags=flags))
    assert (m["family"], m["prefixlen"], m["flags"], m["scope"], m["index"]) == (
        family,
        plen,
        flags,
        0,
        4,
    )
    assert {a[0] for a in m["attrs"]} == attrs
    assert all(a[1] == address for a in m["attrs"])


def test_neighbour_and_fdb_entry() -> None:
    n = _decode(
        ndmsg,
        na.RTM_NEWNEIGH,
        na.neigh_body(6, dst="169.254.1.1", lladdr="ee:ee:ee:ee:ee:ee", state=na.NUD_PERMANENT),
    )
    assert (n["family"], n["ifindex"], n["state"], n["flags"]) == (
        socket.AF_INET,
        6,
        na.NUD_PERMANENT,
        0,
    )
    assert n.get_attr("NDA_DST") == "169.254.1.1"
    assert n.get_attr("NDA_LLADDR") == "ee:ee:ee:ee:ee:ee"
    fdb = _decode(
        ndmsg,
        na.RTM_NEWNEIGH,
        na.neigh_body(
            6,
            dst="2001:db8::2",
            lladdr="66:00:00:00:00:02",
            state=na.NUD_PERMANENT | na.NUD_NOARP,
            flags=na.NTF_SELF,
            family=na.AF_BRIDGE,
        ),
    )
    assert (fdb["family"], fdb["state"], fdb["flags"]) == (
        na.AF_BRIDGE,
        na.NUD_PERMANENT | na.NUD_NOARP,
        na.NTF_SELF,
    )
    assert fdb.get_attr("NDA_DST") == "2001:db8::2"
    gone = _decode(ndmsg, na.RTM_DELNEIGH, na.neigh_body(6, dst="fe80::1"))
    assert (gone["family"], gone.get_attr("NDA_LLADDR")) == (socket.AF_INET6, None)
    dump = _decode(ndmsg, na.RTM_GETNEIGH, na.neigh_dump_body(na.AF_BRIDGE))
    assert (dump["family"], dump["ifindex"], len(dump["attrs"])) == (na.AF_BRIDGE, 0, 0)


def test_parse_a_vxlan_link_as_the_kernel_reports_it() -> None:
    m = ifinfmsg()
    m["index"], m["flags"] = 12, 0x1043  # UP | BROADCAST | RUNNING | MULTICAST
    m["attrs"] = [
        ("IFLA_IFNAME", "vxlan.mesh"),
        ("IFLA_MTU", 1450),
        ("IFLA_ADDRESS", "66:00:00:00:00:01"),
        ("IFLA_IFALIAS", "meshroute:felix_lite"),
        (
            "IFLA_LINKINFO",
            {
                "attrs": [
                    ("IFLA_INFO_KIND", "vxlan"),
                    (
                        "IFLA_INFO_DATA",
                        {
                            "attrs": [
                                ("IFLA_VXLAN_ID", 4096),
                                ("IFLA_VXLAN_LINK", 2),
                                ("IFLA_VXLAN_LOCAL", "192.0.2.1"),
                                ("IFLA_VXLAN_LEARNING", 0),
                                ("IFLA_VXLAN_PORT", 4789),
                            ]
                        },
                    ),
                ]
            },
        ),
    ]
    assert nl.parse_link_detail(*_encoded(m)) == nl.LinkDetail(
        index=12,
        name="vxlan.mesh",
        up=True,
        mtu=1450,
        mac="66:00:00:00:00:01",
        alias="meshroute:felix_lite",
        kind="vxlan",
        vni=4096,
        port=4789,
        local="192.0.2.1",
        parent=2,
        learning=False,
    )


def test_parse_a_plain_link_and_an_ipv6_vxlan() -> None:
    plain = ifinfmsg()
    plain["index"] = 1
    plain["attrs"] = [("IFLA_IFNAME", "lo"), ("IFLA_MTU", 65536)]
    assert nl.parse_link_detail(*_encoded(plain)) == nl.LinkDetail(1, "lo", False, 65536)
    v6 = ifinfmsg()
    v6["index"] = 3
    v6["attrs"] = [
        ("IFLA_IFNAME", "vxlan.v6"),
        (
            "IFLA_LINKINFO",
            {
                "attrs": [
                    ("IFLA_INFO_KIND", "vxlan"),
                    (
                        "IFLA_INFO_DATA",
                        {
                            "attrs": [
                                ("IFLA_VXLAN_ID", 7),
                                ("IFLA_VXLAN_LOCAL6", "2001:db8::1"),
                                ("IFLA_VXLAN_LEARNING", 1),
                                ("IFLA_VXLAN_PORT", 8472),
                            ]
                        },
                    ),
                ]
            },
        ),
    ]
    got = nl.parse_link_detail(*_encoded(v6))
    assert (got.kind, got.vni, got.port, got.local, got.parent, got.learning) == (
        "vxlan",
        7,
        8472,
        "2001:db8::1",
        None,
        True,
    )


def test_parse_a_neighbour_as_the_kernel_reports_it() -> None:
    m = ndmsg()
    m["family"], m["ifindex"], m["state"], m["flags"] = na.AF_BRIDGE, 9, 0xC0, na.NTF_SELF
    m["attrs"] = [("NDA_LLADDR", "66:00:00:00:00:02"), ("NDA_DST", "192.0.2.2")]
    m["header"]["type"] = na.RTM_NEWNEIGH
    m.encode()
    data = bytes(m.data)
    assert na.parse_neigh(data, nw.HDR_LEN, len(data)) == na.WireNeighbour(
        na.AF_BRIDGE, 9, 0xC0, na.NTF_SELF, "192.0.2.2", "66:00:00:00:00:02"
    )
    bare = ndmsg()
    bare["family"], bare["ifindex"] = socket.AF_INET6, 2
    bare["attrs"] = [("NDA_DST", "fe80::1")]
    bare.encode()
    data = bytes(bare.data)
    assert na.parse_neigh(data, nw.HDR_LEN, len(data)) == na.WireNeighbour(
        socket.AF_INET6, 2, 0, 0, "fe80::1", None
    )
