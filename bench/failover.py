"""Failover: from a blackholed path to the routes leaving the kernel, with
meshroute's BFD, BIRD's BFD on the same profile (the anchor) and BGP's
shortest hold time (the other anchor), measured in one run the same way.

``.venv/bin/python -m bench.failover --json`` builds namespaces (removed in
``finally``) on one bridge::

    [node]   meshroute node 192.0.2.11 (AS 64512) --+
    [anchor] BIRD as a node 192.0.2.12 (AS 64513) --+-- br0 -- [tor] BIRD 192.0.2.21
                                                              (AS 65020, announces
                                                               10.244.200.0/26)

Each sample drops everything between the ToR and one of the two (nftables
in the ToR's namespace, the link stays up), starts the clock when ``nft``
returns and stops it at the first poll (every 10 ms) that finds no route to
the ToR's block in that namespace's kernel; then heals and waits for the
route to return. meshroute and the anchor alternate which goes first.

Keys: ``detect_ms_p50_300x3``, ``detect_ms_p99_300x3``, ``detect_ms_p99_50x3``
(meshroute, profiles 300 ms x 3 and 50 ms x 3), ``bird_bfd_detect_ms_p50_300x3``,
``bird_bfd_detect_ms_p99_300x3``, ``bird_bfd_detect_ms_p99_50x3`` (BIRD's BFD,
same profiles), ``hold_timer_detect_ms`` (BIRD without BFD, hold time 3 s,
the least BIRD accepts), ``cpu_pct_100_sessions`` (the BFD daemon's CPU, in
percent of one core, running 100 sessions at 50 ms against BIRD, over
``--cpu-seconds``) with ``bird_cpu_pct_100_sessions`` (the BIRD on the other
end, for reference), ``cpu_us_per_packet`` and ``bird_cpu_us_per_packet``
(those CPU seconds over the packets the daemon sent and received, less
sensitive to a loaded machine), ``cpu_sys_pct_100_sessions`` (the kernel's
part of the daemon's), ``packets_per_s``; ``floor_cpu_us_per_packet``,
``floor_sys_us_per_packet`` and ``floor_cpu_pct_100_sessions``: one end of
the same sockets and rates without BFD, from Python, one system call per
packet (``bench.bfd_floor``), run right after in the same namespaces;
``floor_mmsg_cpu_us_per_packet`` and ``floor_mmsg_cpu_pct_100_sessions``:
the same with ``sendmmsg``/``recvmmsg``, one call per wakeup;
``floor_idle_cpu_pct``: its 5 ms timer alone, no packets;
``sessions_up_before`` and ``sessions_up_after`` say how many of the 100 were
Up around it. p99 of few samples is their maximum.
``--only failover|cpu`` runs one half. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from netaddr import IPAddress

from bench import bfd_floor
from bench.bgp_ingest import Bird
from bench.procstat import cpu_s, cpu_split_s
from bench.report import alternating, print_result, require_root
from bgpd.bfd.client import BfdClient
from bgpd.bfd.packet import State
from bgpd.bfd.session import Timers
from bgpd.bfd.speaker import PeerSpec
from lab.etcd import start_etcd
from lab.netns import Netns, NetnsFactory, veth
from lab.node_rig import node_in, wait_for

REPO = Path(__file__).resolve().parents[1]
NODE, ANCHOR, TOR = "192.0.2.11", "192.0.2.12", "192.0.2.21"
NODE_AS, ANCHOR_AS, TOR_AS = 64512, 64513, 65020
BLOCK = "10.244.200.0/26"
POLL_S = 0.01


def tor_conf(ms: int) -> str:
    bfd = f"bfd {{ min rx interval {ms} ms; min tx interval {ms} ms; multiplier 3; }};"
    common = "  connect delay time 0;\n  connect retry time 1;\n  error wait time 1,2;\n"
    return (
        f"router id {TOR};\nprotocol device {{}}\nprotocol bfd {{}}\n"
        f"protocol static s4 {{ ipv4; route {BLOCK} blackhole; }}\n"
        f"protocol bgp node {{\n  local {TOR} as {TOR_AS};\n  neighbor {NODE} as {NODE_AS};\n"
        f"{common}  {bfd}\n  ipv4 {{ import none; export all; }};\n}}\n"
        f"protocol bgp anchor {{\n  local {TOR} as {TOR_AS};\n"
        f"  neighbor {ANCHOR} as {ANCHOR_AS};\n{common}  hold time 3;\n  {bfd}\n"
        "  ipv4 { import none; export all; };\n}\n"
    )


def anchor_conf(ms: int | None) -> str:
    """BIRD in the node's place; ``ms`` None: no BFD, hold time 3 s."""
    bfd = (
        f"  bfd {{ min rx interval {ms} ms; min tx interval {ms} ms; multiplier 3; }};\n"
        if ms
        else ""
    )
    return (
        f"router id {ANCHOR};\nprotocol device {{}}\nprotocol bfd {{}}\n"
        "protocol kernel k4 { ipv4 { import none; export all; }; }\n"
        f"protocol bgp tor {{\n  local {ANCHOR} as {ANCHOR_AS};\n"
        f"  neighbor {TOR} as {TOR_AS};\n  hold time 3;\n  connect delay time 0;\n"
        f"  connect retry time 1;\n  error wait time 1,2;\n{bfd}"
        "  ipv4 { import all; export none; };\n}\n"
    )


def resources(ms: int) -> str:
    return f"""apiVersion: meshroute.io/v1
kind: IPPool
metadata: {{name: pods}}
spec: {{cidr: 10.244.0.0/16}}
---
apiVersion: meshroute.io/v1
kind: BFDProfile
metadata: {{name: bench}}
spec: {{receiveInterval: {ms}, transmitInterval: {ms}, detectMultiplier: 3}}
---
apiVersion: meshroute.io/v1
kind: BGPPeer
metadata: {{name: tor}}
spec: {{peerIP: {TOR}, asNumber: {TOR_AS}, bfdProfile: bench}}
"""


def has_route(ns: Netns) -> bool:
    out = subprocess.run(
        ["ip", "-n", ns.name, "route", "show", BLOCK], capture_output=True, timeout=30
    ).stdout
    return bool(out.strip())


def blackhole(tor: Netns, addr: str) -> None:
    tor.sh(
        "nft add table inet bench && "
        "nft add chain inet bench in '{ type filter hook input priority 0; }' && "
        "nft add chain inet bench out '{ type filter hook output priority 0; }' && "
        f"nft add rule inet bench in ip saddr {addr} drop && "
        f"nft add rule inet bench out ip daddr {addr} drop"
    )


def heal(tor: Netns) -> None:
    tor.sh("nft delete table inet bench", check=False)


def detect_ms(tor: Netns, victim: Netns, addr: str) -> float:
    wait_for("the route before the blackhole", lambda: has_route(victim), 60)
    time.sleep(1.5)  # BFD past its Poll Sequence to the fast timers
    blackhole(tor, addr)
    t0 = time.perf_counter()
    try:
        while has_route(victim):
            if time.perf_counter() - t0 > 30:
                raise TimeoutError(f"route to {BLOCK} still in {victim.name} after 30 s")
            time.sleep(POLL_S)
        return (time.perf_counter() - t0) * 1000
    finally:
        heal(tor)


def p99(xs: list[float]) -> float:
    return max(xs) if len(xs) < 100 else statistics.quantiles(xs, n=100)[98]


def cli(env: dict[str, str], *args: str, stdin: str | None = None) -> None:
    p = subprocess.run(
        [sys.executable, "-m", "meshroute.cli", *args],
        input=stdin,
        env=env,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    if p.returncode != 0:
        raise RuntimeError(p.stderr)


def failover(repeat: int, tmp: Path, netns: NetnsFactory) -> dict[str, Any]:
    etcd = start_etcd(tmp / "etcd")
    out: dict[str, Any] = {}
    try:
        sw = netns.new("sw")
        sw.ip("link", "add", "br0", "type", "bridge")
        sw.ip("link", "set", "br0", "up")
        nss = {}
        for label, addr in (("node", NODE), ("anchor", ANCHOR), ("tor", TOR)):
            ns = netns.new(label)
            veth(sw, f"p-{label}", ns, "eth0")
            sw.ip("link", "set", f"p-{label}", "master", "br0")
            ns.ip("addr", "add", f"{addr}/24", "dev", "eth0")
            nss[label] = ns
        env = {**os.environ, "MESHROUTE_ETCD": etcd.endpoint, "MESHROUTE_PREFIX": "/bench"}
        node = node_in(nss["node"], "bench-node", NODE, 24, etcd, "/bench", tmp / "node")
        tor = Bird(nss["tor"], tmp / "tor", tor_conf(300))
        anchor = Bird(nss["anchor"], tmp / "anchor", anchor_conf(300))
        node.start()
        try:
            node.wait_ready(60)
            for ms in (300, 50):
                cli(env, "apply", "-f", "-", stdin=resources(ms))
                for b, conf in ((tor, tor_conf(ms)), (anchor, anchor_conf(ms))):
                    (b.sock.parent / "bird.conf").write_text(conf)
                    b.birdc("configure")
                ours: list[float] = []
                theirs: list[float] = []
                for i in range(repeat):
                    sides = [(ours, nss["node"], NODE), (theirs, nss["anchor"], ANCHOR)]
                    for samples, victim, addr in alternating(i, sides):
                        samples.append(detect_ms(nss["tor"], victim, addr))
                key = f"{ms}x3"
                out[f"detect_ms_p50_{key}"] = round(statistics.median(ours), 1)
                out[f"detect_ms_p99_{key}"] = round(p99(ours), 1)
                out[f"bird_bfd_detect_ms_p50_{key}"] = round(statistics.median(theirs), 1)
                out[f"bird_bfd_detect_ms_p99_{key}"] = round(p99(theirs), 1)
                out[f"samples_{key}"] = {"meshroute": ours, "bird": theirs}
            (anchor.sock.parent / "bird.conf").write_text(anchor_conf(None))
            anchor.birdc("configure")
            hold = [
                detect_ms(nss["tor"], nss["anchor"], ANCHOR) for _ in range(max(1, repeat // 3))
            ]
            out["hold_timer_detect_ms"] = round(statistics.median(hold), 1)
            out["samples_hold_timer"] = hold
        finally:
            node.stop()
            tor.stop()
            anchor.stop()
    finally:
        etcd.stop()
    return out


def cpu_100_sessions(seconds: float, tmp: Path, netns: NetnsFactory) -> dict[str, float]:
    """Our BFD daemon with 100 single-hop sessions at 50 ms to one BIRD:
    100 address pairs on one link (both key sessions by address)."""
    a, b, pairs = bfd_floor.address_pairs(netns)
    neighbors = "\n".join(f"  neighbor {o} local {t};" for o, t in pairs)
    conf = (
        "router id 198.18.1.1;\nprotocol device {}\nprotocol bfd {\n"
        '  interface "*" { min rx interval 50 ms; min tx interval 50 ms; multiplier 3; };\n'
        f"{neighbors}\n}}\n"
    )
    bird = Bird(b, tmp / "bfd-bird", conf)

    async def run() -> dict[str, float]:
        client = BfdClient(tmp / "bfd-daemon", wrap=("ip", "netns", "exec", a.name))
        await client.start()
        try:
            tm = Timers(50_000, 50_000, 3)
            client.set_sessions([PeerSpec(IPAddress(t), tm, local=IPAddress(o)) for o, t in pairs])
            # On a loaded machine a few sessions may flap and never be Up all
            # at once: measure anyway and say how many were Up.
            deadline = time.monotonic() + 60
            while sum(s.state is State.UP for s in client.status()) < len(pairs):
                if time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
            await asyncio.sleep(2)  # past every Poll Sequence
            ups_before = sum(s.state is State.UP for s in client.status())
            pid = int((tmp / "bfd-daemon" / "bfd.pid").read_text())
            packets0 = await fresh_packets(client)
            (user0, sys0), bird0 = cpu_split_s([pid]), cpu_s([bird.proc.pid])
            t0 = time.perf_counter()
            await asyncio.sleep(seconds)
            packets = await fresh_packets(client) - packets0
            (user, system), theirs = cpu_split_s([pid]), cpu_s([bird.proc.pid]) - bird0
            user, system = user - user0, system - sys0
            ours = user + system
            wall = time.perf_counter() - t0
            ups = sum(s.state is State.UP for s in client.status())
            return {
                "cpu_pct_100_sessions": round(100 * ours / wall, 2),
                "bird_cpu_pct_100_sessions": round(100 * theirs / wall, 2),
                "cpu_sys_pct_100_sessions": round(100 * system / wall, 2),
                "cpu_us_per_packet": round(1e6 * ours / max(packets, 1), 2),
                "bird_cpu_us_per_packet": round(1e6 * theirs / max(packets, 1), 2),
                "packets_per_s": round(packets / wall),
                "sessions_up_before": ups_before,
                "sessions_up_after": ups,
            }
        finally:
            await client.terminate()

    try:
        out = asyncio.run(run())
    finally:
        bird.stop()
    floors = {
        way: asyncio.run(bfd_floor.measure(a.name, b.name, pairs, seconds, way))
        for way in bfd_floor.WAYS
    }
    floor = floors["per_packet"]
    out["floor_cpu_us_per_packet"] = round(floor.us_per_packet, 2)
    out["floor_sys_us_per_packet"] = round(floor.sys_us_per_packet, 2)
    out["floor_cpu_pct_100_sessions"] = round(floor.cpu_pct, 2)
    out["floor_mmsg_cpu_us_per_packet"] = round(floors["mmsg"].us_per_packet, 2)
    out["floor_mmsg_cpu_pct_100_sessions"] = round(floors["mmsg"].cpu_pct, 2)
    out["floor_idle_cpu_pct"] = round(floors["idle"].cpu_pct, 2)
    return out


async def fresh_packets(client: BfdClient) -> int:
    """Packets sent and received by the daemon's sessions, as of the next
    snapshot it sends (one a second), read the moment it comes."""
    seen = client.sessions
    for _ in range(1000):  # 5 s
        if client.sessions is not seen:
            return sum(s.sent + s.received for s in client.status())
        await asyncio.sleep(0.005)
    raise TimeoutError("no snapshot from the BFD daemon in 5 s")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--repeat", type=int, default=10, help="samples per side and profile")
    ap.add_argument("--cpu-seconds", type=float, default=10.0)
    ap.add_argument(
        "--only", choices=("failover", "cpu"), help="run one half (detection or CPU) alone"
    )
    ap.add_argument("--json", action="store_true", help="print only the JSON result")
    args = ap.parse_args(argv)
    require_root("bench.failover")
    netns = NetnsFactory()
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-failover-") as d:
        tmp = Path(d)
        try:
            if args.only != "cpu":
                result.update(failover(args.repeat, tmp, netns))
            if args.only != "failover":
                result.update(cpu_100_sessions(args.cpu_seconds, tmp, netns))
        finally:
            netns.cleanup()
    print_result(result, args.json)


if __name__ == "__main__":
    main()
