"""A real ``meshroute node`` against FRR (Debian's ``frr``: zebra and bgpd
started by hand in a namespace) as an external peer, with BIRD beside it as
an unrelated peer whose session must never be touched: every BGPPeer field
changed live, the AS-path loop check, inbound GTSM, a clean stop.

Layout (one L2 segment: a bridge named eth0 in the node's namespace)::

    [node ns] eth0 (bridge) 192.0.2.11 --+-- 192.0.2.21 [frr ns]    FRR  AS 65020
              meshroute node AS 64512    +-- 192.0.2.22 [steady ns] BIRD AS 65030
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from bgpd.policy import RejectReason
from lab.etcd import EtcdCluster
from lab.netns import Netns, NetnsFactory, veth
from lab.node_rig import REPO, NodeUnderTest, node_in, wait_for
from tests.harness.bgp_peers import (
    BirdNeighbor,
    BirdSpec,
    FrrNeighbor,
    FrrSpec,
    start_bird,
    start_frr,
)
from tests.harness.frr import FrrDaemons

pytestmark = [pytest.mark.etcd, pytest.mark.netns, pytest.mark.slow]
NODE_IP, FRR_IP, STEADY_IP = "192.0.2.11", "192.0.2.21", "192.0.2.22"
NODE_AS, FRR_AS, STEADY_AS = 64512, 65020, 65030
FRR_BLOCKS = ("10.244.200.0/26", "10.244.201.0/26", "10.244.202.0/26")
POOL = """
apiVersion: meshroute.io/v1
kind: IPPool
metadata: {name: pods}
spec: {cidr: 10.244.0.0/16, blockSize: 26}
"""


def bgp_peer(name: str, peer_ip: str, asn: int, **more: Any) -> str:
    doc = {
        "apiVersion": "meshroute.io/v1",
        "kind": "BGPPeer",
        "metadata": {"name": name},
        "spec": {"peerIP": peer_ip, "asNumber": asn, **more},
    }
    return yaml.safe_dump(doc)


def frr_spec(**neighbor: Any) -> FrrSpec:
    return FrrSpec(
        router_id=FRR_IP,
        local_as=FRR_AS,
        neighbors=(FrrNeighbor(NODE_IP, NODE_AS, **neighbor),),
        networks=FRR_BLOCKS,
    )


@dataclass
class Rig:
    node: NodeUnderTest
    frr_ns: Netns
    steady_ns: Netns
    tmp: Path
    env: dict[str, str]

    def apply(self, text: str) -> None:
        p = subprocess.run(
            [sys.executable, "-m", "meshroute.cli", "apply", "-f", "-"],
            input=text,
            env=self.env,
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=30,
        )
        assert p.returncode == 0, p.stderr

    def peer(self, address: str) -> dict[str, Any]:
        found = [p for p in self.node.status().get("peers", []) if p["peer"] == address]
        return found[0] if found else {}

    def up(self, address: str) -> bool:
        return self.peer(address).get("state") == "established"

    def via(self, address: str) -> set[str]:
        routes = json.loads(self.node.ns.ip("-j", "route", "show", "proto", "213") or "[]")
        return {r["dst"] for r in routes if r.get("gateway") == address}


@pytest.fixture
def rig(
    etcd_server: EtcdCluster, etcd_prefix: str, netns: NetnsFactory, tmp_path: Path
) -> Iterator[Rig]:
    env = {**os.environ, "MESHROUTE_ETCD": etcd_server.endpoint, "MESHROUTE_PREFIX": etcd_prefix}
    node_ns, frr_ns, steady_ns = netns.new("node"), netns.new("frr"), netns.new("steady")
    node_ns.ip("link", "add", "eth0", "type", "bridge")
    node_ns.ip("addr", "add", f"{NODE_IP}/24", "dev", "eth0")
    node_ns.ip("link", "set", "eth0", "up")
    for ns, port, addr in ((frr_ns, "pfrr", FRR_IP), (steady_ns, "psteady", STEADY_IP)):
        veth(node_ns, port, ns, "eth0")
        node_ns.ip("link", "set", port, "master", "eth0")
        node_ns.ip("link", "set", port, "up")
        ns.ip("addr", "add", f"{addr}/24", "dev", "eth0")
    node = node_in(node_ns, "node-a", NODE_IP, 24, etcd_server, etcd_prefix, tmp_path / "node")
    r = Rig(node, frr_ns, steady_ns, tmp_path, env)
    r.apply(POOL)
    node.start()
    try:
        node.wait_ready(30)
        yield r
    finally:
        node.stop()
        sys.stderr.write(node.logs() + "\n")


@pytest.fixture
def steady(rig: Rig) -> Iterator[None]:
    """BIRD as a peer no change below concerns: its session must stay up
    through all of them (one Established since the start)."""
    spec = BirdSpec(STEADY_IP, STEADY_AS, (BirdNeighbor("node", NODE_IP, NODE_AS, STEADY_IP),))
    bird = start_bird(rig.steady_ns, rig.tmp / "bird", spec)
    rig.apply(bgp_peer("steady", STEADY_IP, STEADY_AS))
    try:
        bird.wait_established("node", 30)
        wait_for("the node sees BIRD", lambda: rig.up(STEADY_IP), 10)
        since = rig.peer(STEADY_IP)["since"]
        bird_since = bird_state_since(bird.birdc("show protocols node"))
        yield
        assert rig.up(STEADY_IP) and rig.peer(STEADY_IP)["since"] == since, rig.peer(STEADY_IP)
        assert bird_state_since(bird.birdc("show protocols node")) == bird_since
    finally:
        bird.stop()


def bird_state_since(show_protocols: str) -> str:
    """The 'Since' column of BIRD's protocol line: when its state last changed."""
    for line in show_protocols.splitlines():
        tok = line.split()
        if tok and tok[0] == "node":
            return " ".join(tok[3:5])
    raise AssertionError(show_protocols)


def frr_established_count(frr: FrrDaemons) -> int:
    return int(frr.neighbor(NODE_IP).get("connectionsEstablished", 0))  # type: ignore[call-overload]


def wait_frr_reestablished(frr: FrrDaemons, before: int, what: str) -> None:
    wait_for(what, lambda: frr_established_count(frr) > before and frr.established(NODE_IP), 30)


def test_every_bgppeer_field_changes_live_and_alone(rig: Rig, steady: None) -> None:
    frr = start_frr(rig.frr_ns, frr_spec(passive=True))
    try:
        # passive both ways: nobody connects
        rig.apply(bgp_peer("external", FRR_IP, FRR_AS, passive=True))
        wait_for("the node configures FRR", lambda: rig.peer(FRR_IP), 10)
        time.sleep(4)
        assert not frr.established(NODE_IP) and not rig.up(FRR_IP)

        # passive -> active: the node connects (ExaBGP alone never would)
        rig.apply(bgp_peer("external", FRR_IP, FRR_AS))
        wait_for("the node connects to FRR", lambda: rig.up(FRR_IP), 30)
        wait_for("the node installs FRR's blocks", lambda: rig.via(FRR_IP) == set(FRR_BLOCKS))

        # holdTime: FRR offers 90, we now offer 30: 30 is negotiated
        n = frr_established_count(frr)
        rig.apply(bgp_peer("external", FRR_IP, FRR_AS, holdTime=30))
        wait_frr_reestablished(frr, n, "the session renegotiated")
        assert frr.neighbor(NODE_IP)["bgpTimerHoldTimeMsecs"] == 30000

        # gracefulRestartTime: FRR sees the new restart time in our OPEN
        n = frr_established_count(frr)
        rig.apply(bgp_peer("external", FRR_IP, FRR_AS, holdTime=30, gracefulRestartTime=45))
        wait_frr_reestablished(frr, n, "the session renegotiated")
        gr = frr.neighbor(NODE_IP)["gracefulRestartInfo"]
        assert gr["timers"]["receivedRestartTimer"] == 45, gr  # type: ignore[index]

        # password: FRR first (the session drops), then the BGPPeer (it returns)
        n = frr_established_count(frr)
        frr.reconfigure(f"router bgp {FRR_AS}", f"neighbor {NODE_IP} password s3cret-pass")
        wait_for("FRR drops the unauthenticated session", lambda: not frr.established(NODE_IP))
        rig.apply(bgp_peer("external", FRR_IP, FRR_AS, password="s3cret-pass"))
        wait_frr_reestablished(frr, n, "the session with TCP-MD5")

        # ttlSecurity: FRR first sends TTL 255 (multihop 255 checks nothing);
        # with GTSM the node sends 255 and wants 255
        n = frr_established_count(frr)
        frr.reconfigure(f"router bgp {FRR_AS}", f"neighbor {NODE_IP} ebgp-multihop 255")
        wait_frr_reestablished(frr, n, "the session with FRR sending TTL 255")
        n = frr_established_count(frr)
        rig.apply(bgp_peer("external", FRR_IP, FRR_AS, password="s3cret-pass", ttlSecurity=1))
        wait_frr_reestablished(frr, n, "the session with GTSM")
        assert "incoming-ttl 255;" in (rig.node.bgp_dir / "exabgp.conf").read_text()

        # asNumber: FRR presents another AS to us; so does the BGPPeer
        n = frr_established_count(frr)
        frr.reconfigure(
            f"router bgp {FRR_AS}", f"neighbor {NODE_IP} local-as 65021 no-prepend replace-as"
        )
        spec = {"password": "s3cret-pass", "ttlSecurity": 1}
        rig.apply(bgp_peer("external", FRR_IP, 65021, **spec))
        wait_frr_reestablished(frr, n, "the session with the new AS")
        assert rig.peer(FRR_IP)["asn"] == 65021

        # maxPrefix lowered below what FRR sends: the excess goes at once
        rig.apply(bgp_peer("external", FRR_IP, 65021, maxPrefix=2, **spec))
        wait_for("two of FRR's blocks left", lambda: len(rig.via(FRR_IP)) == 2)
        assert rig.peer(FRR_IP)["received"] == 3 and rig.peer(FRR_IP)["accepted"] == 2
        # and raised again: the peer is asked to send everything again
        rig.apply(bgp_peer("external", FRR_IP, 65021, maxPrefix=3, **spec))
        wait_for("all of FRR's blocks back", lambda: rig.via(FRR_IP) == set(FRR_BLOCKS))

        # active -> passive: FRR passive too, the session goes and stays gone
        rig.apply(bgp_peer("external", FRR_IP, 65021, passive=True, **spec))
        wait_for("the node stops connecting", lambda: not frr.established(NODE_IP), 30)
        time.sleep(4)
        assert not frr.established(NODE_IP) and not rig.up(FRR_IP)

        # back to active with maxPrefixAction close under the limit: the node
        # connects, receives three, and closes the session (held down)
        rig.apply(bgp_peer("external", FRR_IP, 65021, maxPrefix=2, maxPrefixAction="close", **spec))
        wait_for("the session closed for max-prefix", lambda: rig.peer(FRR_IP).get("heldDown"), 30)
        wait_for("FRR sees it closed", lambda: not frr.established(NODE_IP), 30)
        assert rig.via(FRR_IP) == set()
    finally:
        sys.stderr.write(frr.log()[-4000:])
        frr.stop()


def test_routes_through_our_own_as_are_refused_and_counted(rig: Rig) -> None:
    """FRR prepends the node's AS to one of its blocks (it does not check the
    receiver's AS itself): an AS-path loop the node refuses."""
    looped, clean = FRR_BLOCKS[0], FRR_BLOCKS[1]
    spec = FrrSpec(
        router_id=FRR_IP,
        local_as=FRR_AS,
        neighbors=(FrrNeighbor(NODE_IP, NODE_AS, extra=("route-map loop out",)),),
        networks=(looped, clean),
        preamble=(
            f"ip prefix-list looped seq 5 permit {looped}",
            "route-map loop permit 10",
            " match ip address prefix-list looped",
            f" set as-path prepend {NODE_AS}",
            "route-map loop permit 20",
        ),
    )
    frr = start_frr(rig.frr_ns, spec)
    try:
        rig.apply(bgp_peer("external", FRR_IP, FRR_AS))
        frr.wait_established(NODE_IP, 30)
        wait_for("the clean block installed", lambda: rig.via(FRR_IP) == {clean})
        wait_for("both received", lambda: rig.peer(FRR_IP).get("received") == 2)
        assert rig.peer(FRR_IP)["accepted"] == 1
        assert rig.peer(FRR_IP)["rejected"] == {RejectReason.AS_PATH_LOOP.value: 1}
        key = (
            "meshroute_bgp_prefixes_rejected_total",
            frozenset({("peer", FRR_IP), ("reason", RejectReason.AS_PATH_LOOP.value)}),
        )
        # a total of refused UPDATEs: FRR may well have sent the block twice
        # already (BGP promises no count of UPDATEs), so only "grows" is exact
        before = rig.node.metrics().get(key)
        assert before is not None and before >= 1
        # a route refresh sends both again: the current counts do not grow
        frr.vtysh("bgpd", f"clear bgp ipv4 unicast {NODE_IP} soft out", check=True)
        wait_for("the refused total grows", lambda: (rig.node.metrics().get(key) or 0) > before)
        assert (rig.peer(FRR_IP)["accepted"], rig.peer(FRR_IP)["received"]) == (1, 2)
    finally:
        sys.stderr.write(frr.log()[-4000:])
        frr.stop()


def gtsm_table(rig: Rig) -> dict[str, Any]:
    out = rig.node.ns.sh("nft -j list table inet meshroute_gtsm", check=False)
    return json.loads(out) if out.startswith("{") else {}


def gtsm_inbound_drops(rig: Rig) -> int:
    """Packets the rule for segments to our port 179 dropped."""
    total = 0
    for item in gtsm_table(rig).get("nftables", []):
        expr = item.get("rule", {}).get("expr", [])
        if any(
            e.get("match", {}).get("left", {}).get("payload", {}).get("field") == "dport"
            for e in expr
        ):
            total += sum(e["counter"]["packets"] for e in expr if "counter" in e)
    return total


def test_inbound_gtsm_refuses_a_peer_sending_ttl_1(rig: Rig) -> None:
    """The node waits (passive) for a GTSM peer; FRR connects in. Without
    GTSM FRR sends eBGP's TTL 1: ExaBGP's shared listener would accept it,
    the node's GTSM table drops it. With GTSM (TTL 255) it comes up."""
    rig.apply(bgp_peer("external", FRR_IP, FRR_AS, passive=True, ttlSecurity=1))
    wait_for("the GTSM table", lambda: gtsm_table(rig), 10)
    frr = start_frr(rig.frr_ns, frr_spec())
    try:
        wait_for("FRR's TTL-1 connections dropped", lambda: gtsm_inbound_drops(rig) >= 3, 20)
        assert not frr.established(NODE_IP) and not rig.up(FRR_IP)

        frr.reconfigure(f"router bgp {FRR_AS}", f"neighbor {NODE_IP} ttl-security hops 1")
        frr.wait_established(NODE_IP, 30)
        wait_for("the node sees the session", lambda: rig.up(FRR_IP), 10)

        # GTSM off on the BGPPeer: the table goes with it
        rig.apply(bgp_peer("external", FRR_IP, FRR_AS, passive=True))
        wait_for("the GTSM table removed", lambda: not gtsm_table(rig), 10)
    finally:
        sys.stderr.write(frr.log()[-4000:])
        frr.stop()


def test_clean_stop_logs_no_warning(rig: Rig) -> None:
    frr = start_frr(rig.frr_ns, frr_spec())
    try:
        rig.apply(bgp_peer("external", FRR_IP, FRR_AS))
        frr.wait_established(NODE_IP, 30)
        wait_for("the node sees FRR", lambda: rig.up(FRR_IP), 10)
        log = rig.node.work / "node.log"
        start = log.stat().st_size
        rig.node.stop()
        assert rig.node.proc is not None and rig.node.proc.returncode == 0
        tail = log.read_bytes()[start:].decode(errors="replace")
        assert "stopping" in tail, tail
        assert not [ln for ln in tail.splitlines() if "WARNING" in ln or "ERROR" in ln], tail
    finally:
        frr.stop()
