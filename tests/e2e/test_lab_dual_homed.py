"""The dual-homed lab (``lab.dual_homed``) with real ``meshroute node``
processes: two racks of two nodes, each node with one uplink to a BIRD ToR
and one to an FRR ToR, ECMP over both, BFD 300 ms x 3 on every session
between a node and a ToR. The faults of issue 13 section 3, each measured:

- one uplink blackholed by nftables in the ToR's namespace (the link stays
  up) while a pod pings a pod of the other rack every 20 ms, once with the
  flow on the BIRD ToR, once on the FRR ToR: the node's route leaves the
  blackholed ToR within the detection time and no more pings are lost than
  detection time / interval + 1;
- a node gone silent (all its links blackholed in its namespace): both
  ToRs' RIBs (``birdc``, ``vtysh``) lose its blocks within the detection
  time;
- malformed BFD packets from a ToR's address: dropped, counted by reason
  in the node's ``/metrics``, no session moved;
- kill -9 and restart of a node under a 20 ms cross-rack ping: none lost.

Each test starts from a healthy lab (every session Up on both ends, the
fast timers in force, ECMP everywhere) and heals what it broke."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bgpd.bfd.packet import ControlPacket, State, encode
from lab.build import Lab, start_meshroute_node
from lab.dual_homed import DETECT_MS, UPLINKS, node_port, tor_ip, tor_label
from lab.frr import bfd_peers, vtysh
from lab.netns import call_in_netns, run
from lab.pods import ping_once
from lab.poll import wait_for
from lab.state import PodRecord
from lab.status import node_get
from lab.topology import FrrPlan, LabParams, NodePlan, SpeakerPlan
from lab.up import lab_down, lab_up
from tests.soak.lab_ops import LabOps

pytestmark = [pytest.mark.netns, pytest.mark.etcd, pytest.mark.slow, pytest.mark.timeout(600)]
PREFIX = f"mrlabt{os.getpid()}x"
INTERVAL_MS = 20
DETECT_S = DETECT_MS / 1000
SLACK_S = 0.4  # BFD daemon -> node -> planner -> netlink, and polling, on a loaded machine
TOR_SLACK_S = 1.0  # the ToR's own pipeline (FRR: bfdd -> bgpd -> zebra), as in test_node_bfd
BH_TABLE = "mrtbh"


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    # FRR's daemons run as user frr, which cannot enter pytest's tmp dirs
    run_dir = Path(tempfile.mkdtemp(prefix="mrt-dual-homed-"))
    run_dir.chmod(0o755)
    params = LabParams(
        topology="dual-homed",
        racks=2,
        nodes_per_rack=2,
        pods_per_node=2,
        run_dir=str(run_dir / "lab"),
    )
    try:
        res = lab_up(
            params, start_meshroute_node, prefix=PREFIX, say=lambda _m: None, converge_timeout=60
        )
    except BaseException:
        shutil.rmtree(run_dir, ignore_errors=True)
        raise
    try:
        assert res.matrix is not None and res.matrix.all_ok, res.matrix.failures
        yield res.lab
    finally:
        for n in res.lab.plan.nodes:
            log = Path(n.log_path)
            if log.exists():
                sys.stderr.write(f"--- {n.name} ---\n{log.read_text()[-2000:]}\n")
        lab_down(params.run_dir, PREFIX, say=lambda _m: None)
        shutil.rmtree(run_dir, ignore_errors=True)
    assert not any(n.startswith(PREFIX) for n in run(["ip", "netns", "list"]).split())


# ---- what the lab shows --------------------------------------------------------------


def ns(lab: Lab, label: str) -> str:
    return lab.state.ns(label)


def block_of(pod: PodRecord) -> str:
    return str(ipaddress.ip_network(f"{pod.address}/26", strict=False))


def blocks(lab: Lab, node: NodePlan) -> set[str]:
    return {block_of(p) for p in lab.state.pods if p.node == node.name}


def gateways(lab: Lab, node: NodePlan, block: str) -> set[str]:
    """The next hops of ``block`` in the node's kernel (felix_lite's routes)."""
    out = run(["ip", "-n", ns(lab, node.ns), "-j", "route", "show", block, "proto", "213"])
    hops: set[str] = set()
    for r in json.loads(out or "[]"):
        hops |= {r["gateway"]} if "gateway" in r else set()
        hops |= {h["gateway"] for h in r.get("nexthops", []) if "gateway" in h}
    return hops


def node_status(lab: Lab, node: NodePlan) -> dict[str, dict[str, Any]]:
    code, body = node_get(lab, node, "/status", timeout=2)
    return {p["peer"]: p for p in json.loads(body)["peers"]} if code == 200 else {}


def node_metrics(lab: Lab, node: NodePlan) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    code, body = node_get(lab, node, "/metrics", timeout=2)
    assert code == 200, code
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for fam in text_string_to_metric_families(body.decode())
        for s in fam.samples
    }


def bird(lab: Lab, rack: int) -> SpeakerPlan:
    return next(s for s in lab.plan.speakers if s.ns == tor_label(rack, "a"))


def frr(lab: Lab, rack: int) -> FrrPlan:
    return next(f for f in lab.plan.frr if f.ns == tor_label(rack, "b"))


def birdc(sp: SpeakerPlan, *cmd: str) -> str:
    """birdc's answer (it exits 1 on "Network not found": an answer too)."""
    p = subprocess.run(
        ["birdc", "-s", sp.socket_path, *cmd], capture_output=True, text=True, timeout=30
    )
    assert p.stdout.startswith("BIRD "), f"birdc {cmd}: {p.stdout} {p.stderr}"
    return p.stdout


def bird_bfd(sp: SpeakerPlan) -> dict[str, tuple[str, str, str]]:
    """BIRD's BFD sessions: peer -> (state, since, interval)."""
    out = {}
    for line in birdc(sp, "show", "bfd", "sessions").splitlines():
        tok = line.split()
        if len(tok) >= 6 and tok[0].count(".") == 3:
            out[tok[0]] = (tok[2], tok[3], tok[-2])
    return out


def clock_s(since: str) -> float:
    """BIRD's "since" (hh:mm:ss.mmm, from its monotonic clock: one moment
    may read a millisecond apart from one call to the next)."""
    h, m, sec = since.split(":")
    return int(h) * 3600 + int(m) * 60 + float(sec)


def bird_has(sp: SpeakerPlan, prefix: str, via: str | None = None) -> bool:
    """Whether BIRD's RIB holds a route for exactly ``prefix`` (with
    ``via``: one through that next hop)."""
    text = birdc(sp, "show", "route", prefix)
    if via is not None:
        return f"via {via} on " in text
    return any(line.split()[:1] == [prefix] for line in text.splitlines())


def frr_has(fp: FrrPlan, prefix: str, via: str | None = None) -> bool:
    """As ``bird_has``, in FRR bgpd's RIB (``via``: learned from that peer)."""
    got = json.loads(vtysh(Path(fp.dir), "bgpd", f"show bgp ipv4 unicast {prefix} json") or "{}")
    paths = got.get("paths", [])
    return any(via is None or p.get("peer", {}).get("peerId") == via for p in paths)


def frr_bfd(fp: FrrPlan, peer: str) -> dict[str, Any]:
    return next((p for p in bfd_peers(Path(fp.dir)) if p.get("peer") == peer), {})


def frr_bfd_downs(fp: FrrPlan, peer: str) -> int:
    got = json.loads(vtysh(Path(fp.dir), "bfdd", "show bfd peers counters json") or "[]")
    return int(next(p["session-down"] for p in got if p.get("peer") == peer))


# ---- the lab healthy -----------------------------------------------------------------


def healthy_problems(lab: Lab) -> list[str]:
    """Why the lab is not (yet) what every test starts from; [] when it is."""
    out = []
    for n in lab.plan.nodes:
        tors = {tor_ip(n.rack, s) for s in "ab"}
        peers = node_status(lab, n)
        for t in tors:
            p = peers.get(t) or {}
            bfd = p.get("bfd") or {}
            if p.get("state") != "established" or bfd.get("state") != "up":
                out.append(f"{n.name} -> {t}: {p.get('state')}, BFD {bfd.get('state')}")
            elif bfd.get("detectTimeMs") != DETECT_MS:  # still on the slow start timers
                out.append(f"{n.name} -> {t}: detection {bfd.get('detectTimeMs')} ms")
        row = bird_bfd(bird(lab, n.rack)).get(n.ip)
        if row is None or (row[0], row[2]) != ("Up", "0.300"):
            out.append(f"BIRD r{n.rack} -> {n.name}: {row}")
        theirs = frr_bfd(frr(lab, n.rack), n.ip)
        if theirs.get("status") != "up" or theirs.get("remote-transmit-interval") != 300:
            out.append(f"FRR r{n.rack} -> {n.name}: {theirs.get('status')}")
        for m in lab.plan.nodes:
            for b in blocks(lab, m) if m != n else ():
                if gateways(lab, n, b) != tors:
                    out.append(f"{n.name}: {b} via {gateways(lab, n, b)}")
    return out


def wait_healthy(lab: Lab, timeout: float = 60) -> None:
    try:
        wait_for("a healthy lab", lambda: not healthy_problems(lab), timeout, 0.5)
    except TimeoutError:
        raise AssertionError(f"the lab did not heal: {healthy_problems(lab)}") from None


# ---- faults -------------------------------------------------------------------------


def blackhole(netns: str, *ifnames: str) -> None:
    """Drop every packet in and out of ``ifnames`` in ``netns`` (forwarded,
    to and from the namespace itself); the links stay up."""
    names = ", ".join(f'"{i}"' for i in ifnames)
    ruleset = (
        f"table inet {BH_TABLE} {{\n"
        "  chain pre { type filter hook prerouting priority -300;"
        f" iifname {{ {names} }} drop; }}\n"
        "  chain post { type filter hook postrouting priority 300;"
        f" oifname {{ {names} }} drop; }}\n"
        "}\n"
    )
    subprocess.run(
        ["ip", "netns", "exec", netns, "nft", "-f", "-"],
        input=ruleset,
        text=True,
        check=True,
        timeout=30,
    )


def heal(netns: str) -> None:
    run(["ip", "netns", "exec", netns, "nft", "delete", "table", "inet", BH_TABLE])


class Ping:
    """``ping -i 0.02`` from a pod to a pod, once a single ping gets through
    (so every loss counted is the fault's)."""

    def __init__(self, src: PodRecord, dst: PodRecord, count: int) -> None:
        wait_for(f"{src.label} reaches {dst.label}", lambda: ping_once(src.netns, dst.address), 10)
        self.count = count
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", src.netns, "ping", "-n", "-q", "-i", str(INTERVAL_MS / 1000),
             "-W", "1", "-c", str(count), dst.address],
            stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip

    def running(self) -> bool:
        return self.proc.poll() is None

    def lost(self) -> tuple[int, str]:
        out, _ = self.proc.communicate(timeout=self.count * INTERVAL_MS / 1000 + 60)
        m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
        assert m, out
        return int(m.group(1)) - int(m.group(2)), out[-300:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait()


def host_side(lab: Lab, pod: PodRecord) -> str:
    """The node's end of a routed pod's veth (its /32 route's device)."""
    node = lab.plan.node(pod.node)
    out = run(["ip", "-n", ns(lab, node.ns), "-j", "route", "show", f"{pod.address}/32"])
    return str(json.loads(out)[0]["dev"])


def flow_via(lab: Lab, side: str) -> tuple[PodRecord, PodRecord]:
    """A pod and a pod of the other rack whose flow leaves the first pod's
    node through its ToR ``side`` (the kernel's multipath hash decides;
    among the 32 cross-rack flows some take each side)."""
    for src in lab.state.pods:
        node = lab.plan.node(src.node)
        for dst in lab.state.pods:
            if lab.plan.node(dst.node).rack == node.rack:
                continue
            got = run(
                ["ip", "-n", ns(lab, node.ns), "-j", "route", "get", dst.address,
                 "from", src.address, "iif", host_side(lab, src)]
            )  # fmt: skip
            if json.loads(got)[0].get("gateway") == tor_ip(node.rack, side):
                return src, dst
    raise AssertionError(f"no cross-rack flow hashes to ToR {side}")


def first_true(preds: dict[str, Callable[[], bool]], timeout: float, t0: float) -> dict[str, float]:
    """For each of ``preds``, the seconds from ``t0`` until it first held
    (all polled in turn, as often as they answer)."""
    took: dict[str, float] = {}

    def all_held() -> bool:
        for what, pred in preds.items():
            if what not in took and pred():
                took[what] = time.monotonic() - t0
        return len(took) == len(preds)

    try:
        wait_for("the conditions", all_held, timeout, 0.01)
    except TimeoutError:
        raise AssertionError(f"within {timeout} s only {took} of {list(preds)}") from None
    return took


# ---- the tests ------------------------------------------------------------------------


def test_two_uplinks_ecmp_and_bfd_on_every_tor_session(lab: Lab) -> None:
    wait_healthy(lab)
    for n in lab.plan.nodes:
        where = ns(lab, n.ns)
        for uplink, side in zip(UPLINKS, "ab", strict=True):
            got = run(["ip", "-n", where, "-4", "-o", "addr", "show", "dev", uplink])
            assert f"{n.ip} peer {tor_ip(n.rack, side)}/32" in got, got
        assert "default" not in run(["ip", "-n", where, "route"])
        # the node's blocks on both of its ToRs (healthy: ECMP over both to
        # every other block, BFD Up on both ends with the fast timers)
        assert all(bird_has(bird(lab, n.rack), b) for b in blocks(lab, n))
        assert all(frr_has(frr(lab, n.rack), b) for b in blocks(lab, n))


@pytest.mark.parametrize("side", ["a", "b"], ids=["bird-tor", "frr-tor"])
def test_a_blackholed_uplink_moves_traffic_within_the_detection_time(lab: Lab, side: str) -> None:
    wait_healthy(lab)
    src, dst = flow_via(lab, side)
    node = lab.plan.node(src.node)
    tor = tor_label(node.rack, side)
    other = tor_ip(node.rack, "b" if side == "a" else "a")
    dst_block = block_of(dst)
    count = 150
    ping = Ping(src, dst, count)
    try:
        blackhole(ns(lab, tor), node_port(node))
        t0 = time.monotonic()
        moved = {"moved": lambda: gateways(lab, node, dst_block) == {other}}
        took = first_true(moved, 10, t0)["moved"]
        lost, tail = ping.lost()
    finally:
        ping.stop()
        heal(ns(lab, tor))
    bound = DETECT_MS // INTERVAL_MS + 1
    sys.stderr.write(
        f"uplink {node.name} -> {tor} blackholed: route moved after {took * 1000:.0f} ms, "
        f"{lost} of {count} pings lost (bound {bound})\n"
    )
    assert took <= DETECT_S + SLACK_S, f"{took:.3f} s"
    assert 0 < lost <= bound, tail  # some lost: the flow really took the blackholed uplink
    wait_healthy(lab)


def test_a_silent_node_leaves_both_tors_ribs_within_the_detection_time(lab: Lab) -> None:
    wait_healthy(lab)
    node = lab.plan.nodes[0]
    mine = sorted(blocks(lab, node))
    a, b = bird(lab, node.rack), frr(lab, node.rack)
    assert all(bird_has(a, x, via=node.ip) and frr_has(b, x, via=node.ip) for x in mine)
    blackhole(ns(lab, node.ns), *UPLINKS)
    t0 = time.monotonic()
    try:
        # each ToR drops the node's own paths (for a moment it may still
        # have one through the spine from the other ToR)
        took = first_true(
            {
                "bird": lambda: not any(bird_has(a, x, via=node.ip) for x in mine),
                "frr": lambda: not any(frr_has(b, x, via=node.ip) for x in mine),
            },
            15,
            t0,
        )
        took_bird, took_frr = took["bird"], took["frr"]
        wait_for(
            "no route to the node's blocks on either ToR",
            lambda: not any(bird_has(a, x) or frr_has(b, x) for x in mine),
            10,
        )
    finally:
        heal(ns(lab, node.ns))
    sys.stderr.write(
        f"{node.name} silent: its paths left BIRD's RIB after {took_bird * 1000:.0f} ms, "
        f"FRR's after {took_frr * 1000:.0f} ms\n"
    )
    assert took_bird <= DETECT_S + TOR_SLACK_S, f"BIRD {took_bird:.3f} s"
    assert took_frr <= DETECT_S + TOR_SLACK_S, f"FRR {took_frr:.3f} s"
    wait_healthy(lab)


def test_malformed_bfd_packets_are_dropped_counted_and_move_no_session(lab: Lab) -> None:
    wait_healthy(lab)
    node = lab.plan.nodes[0]
    fp, tor = frr(lab, node.rack), tor_ip(node.rack, "b")
    theirs = frr_bfd(fp, node.ip)
    # a Down from the right peer with the right discriminators: well formed,
    # it would take the session down; each variant below is malformed
    down = encode(ControlPacket(State.DOWN, 3, theirs["id"], theirs["remote-id"], 300_000, 300_000))

    def bad(offset: int, value: int, tail: bytes = b"") -> bytes:
        b = bytearray(down)
        b[offset] = value
        return bytes(b) + tail

    garbage = {
        "bad_version": bad(0, 2 << 5),
        "bad_length": bad(3, 40),  # beyond the payload
        "zero_multiplier": bad(2, 0),
        "auth_unexpected": bad(1, (State.DOWN << 6) | 0x04, b"\x01\x09\x01secret"),
    }
    key = ("meshroute_bfd_session_downs_total", frozenset({("peer", tor)}))
    before = node_metrics(lab, node)
    since = node_status(lab, node)[tor]["since"]
    frr_downs = frr_bfd_downs(fp, node.ip)

    def send() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, 255)
            s.bind((tor, 0))
            for payload in garbage.values():
                s.sendto(payload, (node.ip, 3784))

    call_in_netns(ns(lab, fp.ns), send)

    def dropped(m: dict[tuple[str, frozenset[tuple[str, str]]], float], reason: str) -> float:
        return m.get(("meshroute_bfd_packets_dropped_total", frozenset({("reason", reason)})), 0)

    def counted() -> bool:
        now = node_metrics(lab, node)
        return all(dropped(now, r) >= dropped(before, r) + 1 for r in garbage)

    wait_for("the drops counted in /metrics", counted, 10)
    after = node_metrics(lab, node)
    assert {r: dropped(after, r) - dropped(before, r) for r in garbage} == dict.fromkeys(garbage, 1)
    assert after[key] == before.get(key, 0)
    peer = node_status(lab, node)[tor]
    assert peer["bfd"]["state"] == "up" and peer["since"] == since
    assert frr_bfd(fp, node.ip)["status"] == "up" and frr_bfd_downs(fp, node.ip) == frr_downs


def test_kill_9_and_restart_of_a_node_loses_no_ping(lab: Lab) -> None:
    wait_healthy(lab)
    node = lab.plan.nodes[0]
    src = next(p for p in lab.state.pods if p.node == node.name)
    dst = next(p for p in lab.state.pods if lab.plan.node(p.node).rack != node.rack)
    ops = LabOps(lab, Path(lab.plan.run_dir) / "cni-bin")
    bird_since = bird_bfd(bird(lab, node.rack))[node.ip][1]
    frr_downs = frr_bfd_downs(frr(lab, node.rack), node.ip)
    # 40 s: the restart and both sessions' return took 9-24 s on a loaded
    # machine; a ping stopped early would count its last echo in flight lost
    count = 2000
    ping = Ping(src, dst, count)
    try:
        ops.restart_node(node, signal.SIGKILL)
        t0 = time.monotonic()
        wait_for(
            "the restarted node's sessions with both ToRs",
            lambda: all(
                (node_status(lab, node).get(tor_ip(node.rack, s)) or {}).get("state")
                == "established"
                for s in "ab"
            ),
            35,
        )
        back = time.monotonic() - t0
        assert ping.running(), "the ping ended before the node was back"
        lost, tail = ping.lost()
    finally:
        ping.stop()
    sys.stderr.write(f"{node.name} killed -9 and back in {back:.1f} s: {lost} pings lost\n")
    assert lost == 0, tail
    # BFD never went down at either ToR: the daemon outlived the node
    state, since, _ = bird_bfd(bird(lab, node.rack))[node.ip]
    assert state == "Up" and abs(clock_s(since) - clock_s(bird_since)) < 0.5
    assert frr_bfd_downs(frr(lab, node.rack), node.ip) == frr_downs
    wait_healthy(lab)
