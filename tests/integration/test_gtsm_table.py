"""bgpd.gtsm.GtsmTable against real nftables in a namespace: written only
when different, read back, repaired when changed behind its back, removed
when no peer needs it, and it drops a low-TTL connection to port 179 while
a TTL-255 one gets through."""

from __future__ import annotations

import subprocess

import pytest
from netaddr import IPAddress

from bgpd.gtsm import TABLE, GtsmTable, plan_gtsm
from lab.netns import Netns, NetnsFactory, veth
from lab.poll import wait_for

pytestmark = [pytest.mark.netns, pytest.mark.slow]
A = IPAddress("192.0.2.21")


def table_text(ns: Netns) -> str:
    return ns.sh(f"nft list table inet {TABLE}", check=False)


def test_apply_read_back_repair_and_remove(netns: NetnsFactory) -> None:
    ns = netns.new("gtsm")
    t = GtsmTable(("ip", "netns", "exec", ns.name))
    assert t.read() == (False, frozenset())
    assert not t.apply(frozenset())  # nothing wanted, nothing there

    want = plan_gtsm({A: 1})
    assert t.apply(want)
    assert t.read() == (True, want)
    assert not t.apply(want)  # equal: not written again

    # someone edits the table: the next apply puts it back
    ns.sh(f"nft add rule inet {TABLE} input tcp dport 22 drop")
    assert t.read() == (True, None)
    assert t.apply(want) and t.read() == (True, want)

    # a peer's hops change live
    assert t.apply(plan_gtsm({A: 3}))
    assert "ip ttl < 253" in table_text(ns)

    assert t.apply(frozenset())
    assert t.read() == (False, frozenset())
    assert "No such file" in table_text(ns) or table_text(ns) == ""


CONNECT = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, int(sys.argv[2]))
s.settimeout(2)  # a dropped SYN: no answer at all
try:
    s.connect((sys.argv[1], 179))
    print("connected")
except OSError as e:
    print("failed", e)
"""


def connect_with_ttl(ns: Netns, addr: str, ttl: int) -> bool:
    p = subprocess.run(
        ["ip", "netns", "exec", ns.name, "python3", "-c", CONNECT, addr, str(ttl)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return p.stdout.strip() == "connected"


def test_low_ttl_syn_is_dropped_ttl_255_passes(netns: NetnsFactory) -> None:
    node, peer = netns.new("gnode"), netns.new("gpeer")
    veth(node, "eth0", peer, "eth0")
    node.ip("addr", "add", "192.0.2.11/24", "dev", "eth0")
    peer.ip("addr", "add", f"{A}/24", "dev", "eth0")
    serve = "import socket\ns = socket.create_server(('0.0.0.0', 179))\nwhile True: s.accept()"
    listener = node.popen(["python3", "-c", serve], stdout=subprocess.DEVNULL)
    try:
        wait_for("the listener", lambda: ":179 " in node.sh("ss -ltn"), 10)
        GtsmTable(("ip", "netns", "exec", node.name)).apply(plan_gtsm({A: 1}))
        assert connect_with_ttl(peer, "192.0.2.11", 255)
        assert not connect_with_ttl(peer, "192.0.2.11", 64)
        assert not connect_with_ttl(peer, "192.0.2.11", 1)
        GtsmTable(("ip", "netns", "exec", node.name)).apply(plan_gtsm({A: 200}))
        assert connect_with_ttl(peer, "192.0.2.11", 64)
    finally:
        listener.terminate()
        listener.wait()
