"""RtnlClient against the kernel, in throwaway namespaces: what it creates,
``ip`` / ``bridge`` read back as meant (and what they create, it reads);
refusals are OSError with the kernel's errno and reason; a reply to
another request is never taken for this one's."""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
from typing import Any

import pytest

from lab.netns import Netns, NetnsFactory
from rtnetlink import attrs as na
from rtnetlink import links as nl
from rtnetlink import routes as nr
from rtnetlink import wire as nw
from rtnetlink.client import RtnlClient

pytestmark = pytest.mark.netns


def _ip_json(ns: Netns, *args: str) -> Any:
    return json.loads(ns.ip("-j", *args) or "[]")


def _veth(ns: Netns, name: str = "a0", peer: str = "a1") -> None:
    ns.ip("link", "add", name, "type", "veth", "peer", "name", peer)
    ns.ip("link", "set", name, "up")


def test_veth_with_its_peer_created_in_another_namespace(netns: NetnsFactory) -> None:
    host, pod = netns.new("rtnl-host"), netns.new("rtnl-pod")
    fd = os.open(f"/var/run/netns/{pod.name}", os.O_RDONLY)
    try:
        with RtnlClient(host.name) as rtnl:
            rtnl.link_create(
                nl.veth_body(
                    "mrhost", "eth0", mtu=1400, peer_netns_fd=fd, address="ee:ee:ee:ee:ee:ee"
                ),
                "veth",
            )
            [mine] = [link for link in rtnl.links() if link.name == "mrhost"]
    finally:
        os.close(fd)
    [h] = _ip_json(host, "-d", "link", "show", "mrhost")
    [p] = _ip_json(pod, "-d", "link", "show", "eth0")
    assert (h["linkinfo"]["info_kind"], h["mtu"], h["address"]) == (
        "veth",
        1400,
        "ee:ee:ee:ee:ee:ee",
    )
    assert (p["linkinfo"]["info_kind"], p["mtu"]) == ("veth", 1400)
    assert "eth0" not in {link["ifname"] for link in _ip_json(host, "link", "show")}
    assert (mine.index, mine.kind, mine.mtu, mine.mac, mine.up) == (
        h["ifindex"],
        "veth",
        1400,
        "ee:ee:ee:ee:ee:ee",
        False,
    )


def test_vxlan_and_its_changes_as_ip_reads_them(netns: NetnsFactory) -> None:
    ns = netns.new("rtnl-vx")
    _veth(ns)
    with RtnlClient(ns.name) as rtnl:
        parent = rtnl.link_index("a0")
        assert parent is not None
        rtnl.link_create(
            nl.vxlan_body(
                "vx0", vni=4096, port=4789, local="192.0.2.1", parent_index=parent, learning=False
            ),
            "vxlan",
        )
        index = rtnl.link_index("vx0")
        assert index is not None
        rtnl.link_set_alias(index, "meshroute:felix_lite")
        rtnl.link_set_mtu(index, 1450)
        rtnl.link_set_address(index, "66:00:00:00:00:01")
        rtnl.link_set_up(index, True)
        [d] = _ip_json(ns, "-d", "link", "show", "vx0")
        data = d["linkinfo"]["info_data"]
        assert (data["id"], data["port"], data["local"], data["link"], data["learning"]) == (
            4096,
            4789,
            "192.0.2.1",
            "a0",
            False,
        )
        assert (d["ifalias"], d["mtu"], d["address"]) == (
            "meshroute:felix_lite",
            1450,
            "66:00:00:00:00:01",
        )
        assert "UP" in d["flags"]
        assert rtnl.link("vx0") == nl.LinkDetail(
            index=index,
            name="vx0",
            up=True,
            mtu=1450,
            mac="66:00:00:00:00:01",
            alias="meshroute:felix_lite",
            kind="vxlan",
            vni=4096,
            port=4789,
            local="192.0.2.1",
            parent=parent,
            learning=False,
        )
        rtnl.link_set_alias(index, "")
        rtnl.link_set_up(index, False)
        [d] = _ip_json(ns, "-d", "link", "show", "vx0")
        assert "ifalias" not in d and "UP" not in d["flags"]
        link = rtnl.link("vx0")
        assert link is not None and (link.alias, link.up) == (None, False)
        rtnl.link_delete(index)
        assert rtnl.link("vx0") is None
    assert _ip_json(ns, "link", "show", "type", "vxlan") == []


def test_a_vxlan_ip_made_reads_back(netns: NetnsFactory) -> None:
    ns = netns.new("rtnl-vx6")
    ns.ip(
        "link",
        "add",
        "vx6",
        "type",
        "vxlan",
        "id",
        "7",
        "dstport",
        "8472",
        "local",
        "2001:db8::1",
        "learning",
    )
    with RtnlClient(ns.name) as rtnl:
        link = rtnl.link("vx6")
    assert link is not None
    assert (link.kind, link.vni, link.port, link.local, link.parent, link.learning) == (
        "vxlan",
        7,
        8472,
        "2001:db8::1",
        None,
        True,
    )


def test_addresses_neighbours_and_routes(netns: NetnsFactory) -> None:
    ns = netns.new("rtnl-addr")
    _veth(ns)
    with RtnlClient(ns.name) as rtnl:
        index = rtnl.link_index("a0")
        assert index is not None
        rtnl.addr_add(index, "10.244.0.5", 32)
        rtnl.addr_add(index, "fd00::5", 128, flags=na.IFA_F_NODAD)
        [d] = _ip_json(ns, "addr", "show", "dev", "a0")
        got = {(a["local"], a["prefixlen"]): a for a in d["addr_info"]}
        assert {("10.244.0.5", 32), ("fd00::5", 128)} <= set(got)
        assert got[("fd00::5", 128)].get("nodad") is True
        assert got[("fd00::5", 128)].get("tentative") is None
        mine = {(a.address, a.prefixlen) for a in rtnl.addresses() if a.index == index}
        assert mine == set(got)

        neigh = na.neigh_body(
            index, dst="169.254.1.1", lladdr="ee:ee:ee:ee:ee:ee", state=na.NUD_PERMANENT
        )
        rtnl.neigh_replace(neigh, "neigh")
        rtnl.neigh_replace(neigh, "neigh again")  # replace: no EEXIST
        [n] = _ip_json(ns, "neigh", "show", "dev", "a0", "169.254.1.1")
        assert (n["lladdr"], n["state"]) == ("ee:ee:ee:ee:ee:ee", ["PERMANENT"])
        assert [
            (m.dst, m.lladdr, m.state)
            for m in rtnl.neighbours(socket.AF_UNSPEC)
            if m.ifindex == index and m.dst == "169.254.1.1"
        ] == [("169.254.1.1", "ee:ee:ee:ee:ee:ee", na.NUD_PERMANENT)]

        rtnl.route_replace(nr.WireRoute(socket.AF_INET, "169.254.1.1", 32, oif=index, proto=4))
        rtnl.route_replace(
            nr.WireRoute(socket.AF_INET, "0.0.0.0", 0, gateway="169.254.1.1", oif=index, proto=4)
        )
        routes = {
            (r["dst"], r.get("gateway"), r["protocol"], r.get("scope"))
            for r in _ip_json(ns, "route", "show", "dev", "a0")
        }
        assert {
            ("169.254.1.1", None, "static", "link"),
            ("default", "169.254.1.1", "static", None),
        } <= routes
        mine_routes = {
            (r.dst, r.dst_len, r.gateway)
            for r in rtnl.routes(socket.AF_INET, index)
            if r.table == 254
        }
        assert {("169.254.1.1", 32, None), ("0.0.0.0", 0, "169.254.1.1")} <= mine_routes
        ns.ip("link", "set", "a1", "up")
        ns.ip("route", "add", "10.8.0.0/24", "dev", "a1")
        assert "10.8.0.0" not in {r.dst for r in rtnl.routes(socket.AF_INET, index)}
        a1 = rtnl.link_index("a1")
        assert a1 is not None
        assert ("10.8.0.0", 24) in {(r.dst, r.dst_len) for r in rtnl.routes(socket.AF_INET, a1)}

        rtnl.neigh_delete(na.neigh_body(index, dst="169.254.1.1"), "neigh del")
        assert _ip_json(ns, "neigh", "show", "dev", "a0", "169.254.1.1") == []
        rtnl.addr_delete(index, "10.244.0.5", 32)
        [d] = _ip_json(ns, "addr", "show", "dev", "a0")
        assert "10.244.0.5" not in {a["local"] for a in d["addr_info"]}


def test_vxlan_fdb_entries(netns: NetnsFactory) -> None:
    ns = netns.new("rtnl-fdb")
    ns.ip(
        "link",
        "add",
        "vx0",
        "type",
        "vxlan",
        "id",
        "1",
        "dstport",
        "4789",
        "local",
        "192.0.2.1",
        "nolearning",
    )
    with RtnlClient(ns.name) as rtnl:
        index = rtnl.link_index("vx0")
        assert index is not None
        entry = na.neigh_body(
            index,
            dst="192.0.2.2",
            lladdr="66:00:00:00:00:02",
            state=na.NUD_PERMANENT | na.NUD_NOARP,
            flags=na.NTF_SELF,
            family=na.AF_BRIDGE,
        )
        rtnl.neigh_replace(entry, "fdb")
        fdb = json.loads(ns.sh("bridge -j fdb show dev vx0"))
        ours = [e for e in fdb if e["mac"] == "66:00:00:00:00:02"]
        assert [(e.get("dst"), e["state"], "self" in e["flags"]) for e in ours] == [
            ("192.0.2.2", "permanent", True)
        ]
        assert [
            (m.dst, m.lladdr)
            for m in rtnl.neighbours(na.AF_BRIDGE)
            if m.ifindex == index and m.lladdr == "66:00:00:00:00:02"
        ] == [("192.0.2.2", "66:00:00:00:00:02")]
        rtnl.neigh_delete(entry, "fdb del")
        fdb = json.loads(ns.sh("bridge -j fdb show dev vx0"))
        assert [e for e in fdb if e["mac"] == "66:00:00:00:00:02"] == []


def test_refusals_carry_the_kernels_errno_and_reason(netns: NetnsFactory) -> None:
    ns = netns.new("rtnl-err")
    _veth(ns)
    with RtnlClient(ns.name) as rtnl:
        with pytest.raises(OSError) as taken:
            rtnl.link_create(
                nl.vxlan_body(
                    "a0", vni=1, port=4789, local="192.0.2.1", parent_index=None, learning=False
                ),
                "vxlan a0",
            )
        assert taken.value.errno == errno.EEXIST
        assert "vxlan a0" in str(taken.value)
        with pytest.raises(OSError) as gone:
            rtnl.link_delete(1_000_000)
        assert gone.value.errno == errno.ENODEV
        index = rtnl.link_index("a0")
        assert index is not None
        with pytest.raises(OSError) as unreachable:
            # a gateway no route reaches: the kernel says why (extended ACK)
            rtnl.route_replace(
                nr.WireRoute(socket.AF_INET, "10.9.0.0", 24, gateway="203.0.113.1", oif=index)
            )
        assert unreachable.value.errno == errno.ENETUNREACH
        ip_says = subprocess.run(
            [
                "ip",
                "-n",
                ns.name,
                "route",
                "replace",
                "10.9.0.0/24",
                "via",
                "203.0.113.1",
                "dev",
                "a0",
            ],
            capture_output=True,
            text=True,
        ).stderr
        reason = ip_says.removeprefix("Error: ").strip().rstrip(".")
        assert reason and f"({reason})" in str(unreachable.value)
        assert rtnl.link("no-such-link") is None


def test_a_reply_to_another_request_is_not_taken_for_this_ones(netns: NetnsFactory) -> None:
    ns = netns.new("rtnl-seq")
    _veth(ns)
    with RtnlClient(ns.name) as rtnl:
        # Requests whose answers nobody reads (as after an exception): a
        # refusal and a link, queued ahead of the next request's replies.
        raw = rtnl._sock
        flags = nw.NLM_F_REQUEST | nw.NLM_F_ACK
        raw.send(nw.frame(nl.RTM_DELLINK, flags, 900_001, nl.del_body(1_000_000)))
        raw.send(nw.frame(nl.RTM_GETLINK, flags, 900_002, nl.get_by_name_body("lo")))
        index = rtnl.link_index("a0")
        assert index is not None and index != 1  # not lo's, not the refusal
        rtnl.link_set_up(index, False)  # not failed by the queued ENODEV
    [d] = _ip_json(ns, "link", "show", "a0")
    assert "UP" not in d["flags"]
