"""Churn with a full table: flaps and a peer going down, a ``meshroute
node`` against BIRD 2 doing the same in the same run.

``.venv/bin/python -m bench.churn --prefixes 100000 --json`` builds four
network namespaces (removed in ``finally``):

- ``feeda``, ``feedb``: two BIRDs, peers A and B of each receiver (two
  BIRDs, because one BIRD cannot hold two sessions to one neighbour
  address): A announces half of the N /26s plus one more block, the
  flapping one (a static protocol of its own); B the other half;
- ``node``: ``meshroute node`` with both peers as BGPPeers (passive; B
  reaches it over a second link, multihop);
- ``recv``: BIRD importing from both and exporting to its kernel table.

For each receiver, with all N + 1 routes in its kernel, a watcher in its
namespace (``bench/route_watch.py``) stamps each BGP UPDATE from peer A as it
reaches the receiver's interface and each kernel route notification:

- ``flap_to_kernel_ms_p50`` / ``_p99``: the flapping block is withdrawn and
  announced again ``--flaps`` times (``birdc disable/enable flap``); each
  change is timed from peer A's UPDATE reaching the receiver until the
  kernel's notification of the route's deletion (or addition): what the
  receiver adds. Both directions are samples;
- ``flap_birdc_to_kernel_ms_p50`` / ``_p99``: the same changes clocked from
  before ``birdc`` until that notification: the feeder's and ``birdc``'s
  time included (tens of ms on this machine, for either receiver);
- ``peer_down_to_kernel_s``: peer B's session is shut down (``birdc
  disable``: a Cease NOTIFICATION, so no graceful restart keeps its routes)
  until the kernel has notified the deletion of all N/2 of its routes (then
  checked by reading the table once; read every 20 ms instead if
  notifications were lost);
- ``peer_down_cpu_s``: the CPU seconds (user + system, from /proc) the
  receiver used over that same span: for meshroute the node, ExaBGP and its
  API relay, for BIRD the receiving BIRD. Less at the mercy of a loaded
  machine than the wall time (a process waiting for a core uses none), at
  the kernel's 10 ms tick; it includes the kernel's work done in the
  receiver's own system calls (the route deletes);
- ``loadavg_1m``: the machine's one-minute load average before and after.

``bird_*`` are BIRD's figures, ``*_ratio`` meshroute's over BIRD's.
Medians of ``--repeat`` runs, alternating which receiver goes first; the
last line is one JSON object.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from bench.bgp_ingest import REPO, Bird, NodeRun, kernel_count
from bench.procstat import cpu_s, descendants
from bench.report import alternating, print_result, require_root
from bench.route_watch_client import RouteWatch
from lab.etcd import start_etcd
from lab.netns import Netns, NetnsFactory
from lab.node_rig import wait_for

NODE_PROTO = "213"
BIRD_PROTO = "bird"
PROTO_NUMBER = {NODE_PROTO: 213, BIRD_PROTO: 12}
FEED_AS, NODE_AS, RECV_AS = 65001, 64512, 65002
# links: feeda-node 192.0.2.0/24 (the node's own address, and the peer
# NodeRun waits for), feedb-node 203.0.113.0/24, feeda-recv 198.51.100.0/24,
# feedb-recv 100.64.0.0/24
FEED_A, NODE_ADDR = "192.0.2.1", "192.0.2.11"
FEED_B, NODE_B_LINK = "203.0.113.1", "203.0.113.11"
RECV_A, RECV_ADDR = "198.51.100.1", "198.51.100.2"
RECV_B, RECV_B_ADDR = "100.64.0.1", "100.64.0.2"
FLAP = "10.255.255.192/26"
POLL_S = 0.005
RESOURCES = f"""
apiVersion: meshroute.io/v1
kind: IPPool
metadata: {{name: bench}}
spec: {{cidr: 10.0.0.0/8, blockSize: 26}}
---
apiVersion: meshroute.io/v1
kind: BGPConfiguration
metadata: {{name: default}}
spec: {{asNumber: {NODE_AS}}}
---
apiVersion: meshroute.io/v1
kind: BGPPeer
metadata: {{name: peer-a}}
spec: {{peerIP: {FEED_A}, asNumber: {FEED_AS}, passive: true}}
---
apiVersion: meshroute.io/v1
kind: BGPPeer
metadata: {{name: peer-b}}
spec: {{peerIP: {FEED_B}, asNumber: {FEED_AS}, passive: true}}
"""


def halves(n: int) -> tuple[list[str], list[str]]:
    if n >= 2**18:
        raise SystemExit("at most 262143 prefixes (the last /26 is the flapping one)")
    every = [f"10.{i >> 10}.{(i >> 2) & 255}.{(i & 3) * 64}/26" for i in range(n)]
    return every[: n // 2], every[n // 2 :]


def feeder_conf(name: str, prefixes: list[str], flap: bool) -> str:
    """One feeder: its half (and the flapping block for A) to the node and to
    the receiving BIRD, both sessions disabled until a run enables them."""
    node_local, recv_local, recv_addr = (
        (FEED_A, RECV_A, RECV_ADDR) if name == "a" else (FEED_B, RECV_B, RECV_B_ADDR)
    )
    routes = "\n".join(f"  route {p} blackhole;" for p in prefixes)
    multihop = "" if name == "a" else "  multihop 2;\n"
    common = "  connect delay time 0;\n  disabled;\n  ipv4 { import none; export all; };\n"
    conf = (
        f"router id {node_local};\nprotocol device {{}}\n"
        f"protocol static half {{\n  ipv4;\n{routes}\n}}\n"
        f"protocol bgp tonode {{\n  local {node_local} as {FEED_AS};\n"
        f"  neighbor {NODE_ADDR} as {NODE_AS};\n{multihop}{common}}}\n"
        f"protocol bgp tobird {{\n  local {recv_local} as {FEED_AS};\n"
        f"  neighbor {recv_addr} as {RECV_AS};\n{common}}}\n"
    )
    if flap:
        conf += f"protocol static flap {{\n  ipv4;\n  route {FLAP} blackhole;\n}}\n"
    return conf


def receiver_conf() -> str:
    def bgp(name: str, local: str, neighbor: str) -> str:
        return (
            f"protocol bgp {name} {{\n  local {local} as {RECV_AS};\n"
            f"  neighbor {neighbor} as {FEED_AS};\n  passive on;\n"
            "  ipv4 { import all; export none; };\n}\n"
        )

    return (
        f"router id {RECV_ADDR};\nprotocol device {{}}\n"
        "protocol kernel k4 { ipv4 { import none; export all; }; }\n"
        + bgp("froma", RECV_ADDR, RECV_A)
        + bgp("fromb", RECV_B_ADDR, RECV_B)
    )


def has_all(feeder: Bird, want: int) -> bool:
    return f"{want} of {want} routes" in feeder.birdc("show route count")


def until(check: Callable[[], bool], what: str, timeout: float, poll: float) -> float:
    """Seconds until ``check`` holds (the end of the poll that saw it)."""
    t0 = time.perf_counter()
    while True:
        if check():
            return time.perf_counter() - t0
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError(what)
        time.sleep(poll)


def churn(
    feeders: tuple[Bird, Bird], ns: Netns, proto: str, protocol: str, n: int, flaps: int,
    timeout: float, peer_a: str, pids: Callable[[], list[int]],
) -> dict[str, Any]:  # fmt: skip
    """Enable both feeders' ``protocol`` towards one receiver; with the full
    table in its kernel, flap A's extra block, then take B down. ``pids``:
    the receiver's processes, whose CPU the peer down is charged."""
    a, b = feeders
    for f in feeders:
        f.birdc(f"enable {protocol}")
    until(lambda: kernel_count(ns, proto) >= n + 1, f"{ns.name}: full table", timeout, 0.5)
    b_routes = n - n // 2
    with RouteWatch(ns, "eth0", peer_a, FLAP, PROTO_NUMBER[proto], b_routes) as watch:
        wire_ms: list[float] = []
        birdc_ms: list[float] = []
        for _ in range(flaps):
            for cmd, event in (("disable flap", "del"), ("enable flap", "new")):
                t0 = time.monotonic()
                a.birdc(cmd)
                t = watch.next(event, t0, 60)
                birdc_ms.append(1000 * (t - t0))
                update = watch.first("update", t0, t)
                wire_ms.append(float("nan") if update is None else 1000 * (t - update))
        watch.start_counting()
        receiver = pids()
        cpu0 = cpu_s(receiver)
        t0 = time.monotonic()
        b.birdc(f"disable {protocol}")
        left = n // 2 + 1  # peer A's half plus the flap block
        gone = watch.next_or_lost("gone", t0, timeout)
        down_cpu = cpu_s(receiver) - cpu0
        if gone is None:  # notifications lost: read the table instead
            until(lambda: kernel_count(ns, proto) <= left, f"{ns.name}: peer B gone", timeout, 0.02)
            gone = time.monotonic()
        down_s = gone - t0
        if kernel_count(ns, proto) > left:
            raise RuntimeError(f"{ns.name}: peer B's routes reported gone but still there")
    a.birdc(f"disable {protocol}")
    return {
        "flap_ms": wire_ms,
        "flap_birdc_ms": birdc_ms,
        "peer_down_s": down_s,
        "peer_down_cpu_s": down_cpu,
    }


def percentile(xs: list[float], q: float) -> float:
    """Of the samples that were measured (a flap whose UPDATE the watcher
    missed has none)."""
    s = sorted(x for x in xs if x == x)
    if not s:
        raise RuntimeError("no sample measured: the watcher saw none of the UPDATEs")
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def bench(n: int, flaps: int, repeat: int, timeout: float) -> dict[str, Any]:
    factory = NetnsFactory("mrchurn")
    runs: dict[str, list[dict[str, Any]]] = {"meshroute": [], "bird": []}
    load = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory(prefix="mrchurn-") as tmp:
        work = Path(tmp)
        etcd = start_etcd(work / "etcd")
        feeders: list[Bird] = []
        try:
            env = {**os.environ, "MESHROUTE_ETCD": etcd.endpoint, "MESHROUTE_PREFIX": "/bench"}
            applied = subprocess.run(
                [sys.executable, "-m", "meshroute.cli", "apply", "-f", "-"],
                input=RESOURCES,
                env=env,
                capture_output=True,
                text=True,
                cwd=REPO,
            )
            if applied.returncode != 0:
                raise RuntimeError(applied.stderr)
            feeda, feedb = factory.new("feeda"), factory.new("feedb")
            node_ns, recv = factory.new("node"), factory.new("recv")
            links = (
                (feeda, FEED_A, node_ns, "eth0", NODE_ADDR),
                (feedb, FEED_B, node_ns, "eth1", NODE_B_LINK),
                (feeda, RECV_A, recv, "eth0", RECV_ADDR),
                (feedb, RECV_B, recv, "eth1", RECV_B_ADDR),
            )
            for a, a_addr, b, b_if, b_addr in links:
                a_if = f"to{b.name[-4:]}"
                a.ip("link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", b.name)
                a.ip("addr", "add", f"{a_addr}/24", "dev", a_if)
                b.ip("addr", "add", f"{b_addr}/24", "dev", b_if)
                a.ip("link", "set", a_if, "up")
                b.ip("link", "set", b_if, "up")
            # B reaches the node's own address (its BGP address) through eth1
            feedb.ip("route", "add", f"{NODE_ADDR}/32", "via", NODE_B_LINK)
            half_a, half_b = halves(n)
            feeders.append(Bird(feeda, work / "feeda", feeder_conf("a", half_a, flap=True)))
            feeders.append(Bird(feedb, work / "feedb", feeder_conf("b", half_b, flap=False)))
            for f, want in zip(feeders, (len(half_a) + 1, len(half_b)), strict=True):
                wait_for("a feeder's static routes", partial(has_all, f, want), 300)
            pair = (feeders[0], feeders[1])

            def run_bird(i: int) -> None:
                receiver = Bird(recv, work / f"recv{i}", receiver_conf())
                try:
                    runs["bird"].append(
                        churn(pair, recv, BIRD_PROTO, "tobird", n, flaps, timeout, RECV_A,
                              lambda: [receiver.proc.pid])
                    )  # fmt: skip
                finally:
                    for f in pair:
                        f.birdc("disable tobird")
                    receiver.stop()
                    recv.ip("route", "flush", "proto", BIRD_PROTO, check=False)

            def run_node(i: int) -> None:
                # one work dir: a node that did not stop in time leaves its ExaBGP
                # behind, and the next one ends it by its recorded PID
                node = NodeRun.start_in(node_ns, work / "node", etcd.endpoint, "/bench")
                try:
                    node.wait_started()

                    def node_pids() -> list[int]:
                        assert node.proc is not None
                        exabgp = node.exabgp_pid()
                        return [node.proc.pid, exabgp, *descendants(exabgp)]

                    runs["meshroute"].append(
                        churn(pair, node_ns, NODE_PROTO, "tonode", n, flaps, timeout, FEED_A,
                              node_pids)
                    )  # fmt: skip
                finally:
                    for f in pair:
                        f.birdc("disable tonode")
                    node.stop()
                    node_ns.ip("route", "flush", "proto", NODE_PROTO, check=False)

            for i in range(repeat):
                for run in alternating(i, (run_bird, run_node)):
                    run(i)
            load.append(os.getloadavg()[0])
        finally:
            for f in feeders:
                f.stop()
            factory.cleanup()
            etcd.stop()

    def figures(side: str) -> dict[str, float]:
        rs = runs[side]

        def pct(key: str, q: float) -> float:
            return round(statistics.median(percentile(r[key], q) for r in rs), 2)

        return {
            "flap_to_kernel_ms_p50": pct("flap_ms", 0.5),
            "flap_to_kernel_ms_p99": pct("flap_ms", 0.99),
            "flap_birdc_to_kernel_ms_p50": pct("flap_birdc_ms", 0.5),
            "flap_birdc_to_kernel_ms_p99": pct("flap_birdc_ms", 0.99),
            "peer_down_to_kernel_s": round(statistics.median(r["peer_down_s"] for r in rs), 3),
            "peer_down_cpu_s": round(statistics.median(r["peer_down_cpu_s"] for r in rs), 2),
        }

    mine, bird = figures("meshroute"), figures("bird")
    result: dict[str, Any] = {"prefixes": n, "flaps": flaps, **mine}
    result.update({f"bird_{k}": v for k, v in bird.items()})
    result["peer_down_ratio"] = round(
        mine["peer_down_to_kernel_s"] / bird["peer_down_to_kernel_s"], 2
    )
    # BIRD's CPU may be under the 10 ms tick: no ratio to nothing
    bird_cpu = bird["peer_down_cpu_s"]
    result["peer_down_cpu_ratio"] = (
        round(mine["peer_down_cpu_s"] / bird_cpu, 2) if bird_cpu >= 0.01 else None
    )
    result["goals"] = {
        "flap_p50_le_20ms": mine["flap_to_kernel_ms_p50"] <= 20,
        "flap_p99_le_50ms": mine["flap_to_kernel_ms_p99"] <= 50,
        "peer_down_le_1.5x_bird": result["peer_down_ratio"] <= 1.5,
    }
    result["repeat"] = repeat
    result["loadavg_1m"] = [round(x, 2) for x in load]
    result["samples"] = {
        side: [
            {
                "flap_ms": [round(x, 2) if x == x else None for x in r["flap_ms"]],
                "flap_birdc_ms": [round(x, 1) for x in r["flap_birdc_ms"]],
                "peer_down_s": round(r["peer_down_s"], 3),
                "peer_down_cpu_s": round(r["peer_down_cpu_s"], 2),
            }
            for r in rs
        ]
        for side, rs in runs.items()
    }
    result["anchor"] = "BIRD 2 fed by the same two peers (protocol kernel, export all), same run"
    return result


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--prefixes", type=int, default=100_000)
    ap.add_argument("--flaps", type=int, default=50)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=600, help="per wait, seconds")
    ap.add_argument("--json", action="store_true", help="print only the JSON result")
    args = ap.parse_args(argv)
    require_root("bench.churn")
    result = bench(args.prefixes, args.flaps, args.repeat, args.timeout)
    print_result(result, args.json)


if __name__ == "__main__":
    main()
