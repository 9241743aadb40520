"""BGP ingest, end to end: a feeder BIRD announces N /26s to a real
``meshroute node`` until all N are in the node's kernel, against BIRD
receiving the same from the same feeder into its kernel table.

``.venv/bin/python -m bench.bgp_ingest --prefixes 100000 --json`` builds,
in one run, three network namespaces (removed in ``finally``):

- ``feed``: BIRD originating N /26s of 10.0.0.0/8 (static blackholes in its
  config) over eBGP (AS 65001, graceful restart on) to two neighbours, both
  protocols ``disabled`` until a measurement starts;
- ``node``: ``meshroute node`` (etcd on root loopback, ``netns:`` so ExaBGP
  and the routes live in the namespace), peering with the feeder through a
  global BGPPeer (passive; IPPool 10.0.0.0/8, blocks /26);
- ``recv``: BIRD (AS 65002, passive) importing everything from the feeder and
  exporting it to the kernel (``protocol kernel``, ``export all``).

Each sample starts its clock at ``birdc enable`` of the feeder's protocol
(the session may come up from then on) and stops it at the first poll that
counts N routes of the receiver's protocol in its namespace's kernel table
(``ip route show proto 213`` for the node, ``proto bird`` for BIRD; the
poll's end time is taken):

- ``meshroute_s``: until the node installed all N (a fresh node per sample:
  new process, new ExaBGP, empty kernel table);
- ``bird_s``: until the receiving BIRD installed all N (a fresh BIRD per
  sample): the anchor;
- ``ratio``: ``meshroute_s / bird_s``;
- ``meshroute_after_up_s`` / ``bird_after_up_s`` / ``ratio_after_up``: the
  same, clocked from the session's establishment (the feeder's log, in ms):
  without BIRD's connect delay (at least ~1 s even at ``connect delay time
  0``), which both include and which flatters ``ratio``;
- ``meshroute_cpu_s`` / ``bird_cpu_s`` / ``cpu_ratio``: CPU seconds (user +
  system) the receiving side spent meanwhile (node + ExaBGP + its relay;
  the receiving BIRD): steadier than wall time on a shared machine;
  ``meshroute_node_cpu_s`` and ``meshroute_exabgp_cpu_s`` (ExaBGP and its
  relay) are its two parts, ``node_cpu_ratio`` the node's alone over BIRD's;
  ``feeder_cpu_s`` the feeder's while feeding BIRD, ``meshroute_cpu_parts_s``
  the node's split (node, exabgp, relay; feeder while feeding the node);
- ``meshroute_rib_s``: from the session's establishment until the node's
  ``/status`` counts N paths accepted from the feeder (ExaBGP's decoding, the
  relay, the RIB); the rest of ``meshroute_after_up_s`` is the End-of-RIB,
  felix_lite (planning the full table) and the reconciler's netlink writes;
- ``meshroute_one_more_ms`` / ``bird_one_more_ms``: with the N installed,
  the feeder announces one more /26 (``birdc enable extra``, a static
  protocol of its own); until the receiver's kernel routes it: the cost of
  one change with a full table;
- ``exabgp_floor_s`` / ``exabgp_floor_after_up_s``: ExaBGP alone with the
  node's configuration and a no-op API reader, clocked the same way until it
  wrote the End-of-RIB line (``bench.exabgp_floor``); ``exabgp_floor_cpu_s``
  its CPU. ``meshroute_own_s`` is ``meshroute_s`` minus that floor (medians),
  ``own_ratio`` that over ``bird_s``: the goal when ExaBGP is the floor;
- ``loadavg_1m``: the machine's one-minute load average before and after;
- ``node_rss_mb``: VmRSS of every process the node runs, summed, read after
  the ingest: the node, its ExaBGP (pid from ``<workDir>/exabgp.pid``),
  ExaBGP's children (the API relay) and the node's other descendants (its
  BFD daemon, when one runs); ``node_rss_parts_mb`` by part, and
  ``node_rss_start_mb`` / ``node_rss_start_parts_mb`` the same before the
  session (no route): what the processes cost before any route.
  ``bird_rss_mb`` the receiving BIRD's, for reference.

The three are measured one after the other, never together (two cores),
alternating which goes first. Medians over ``--repeat`` samples, with the
samples. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from netaddr import IPAddress

from bench.exabgp_floor import exabgp_floor
from bench.procstat import cpu_s, descendants, rss_mb
from bench.report import alternating, print_result, require_root
from lab.etcd import start_etcd
from lab.netns import Netns, NetnsFactory
from lab.node_rig import NodeUnderTest, node_in, wait_for

REPO = Path(__file__).resolve().parents[1]
NODE_PROTO = 213
BIRD_PROTO = "bird"
FEED_AS, NODE_AS, RECV_AS = 65001, 64512, 65002
FEED_NODE, NODE_ADDR = "192.0.2.1", "192.0.2.11"
FEED_RECV, RECV_ADDR = "198.51.100.1", "198.51.100.2"
POLL_S = 0.02
# One more prefix, announced (``birdc enable extra``) with the N in place.
EXTRA = "10.255.255.192"
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
metadata: {{name: feeder}}
spec: {{peerIP: {FEED_NODE}, asNumber: {FEED_AS}, passive: true}}
"""


def prefixes(n: int) -> list[str]:
    """n distinct /26s in 10.0.0.0/8."""
    if n >= 2**18:
        raise SystemExit("at most 262143 prefixes (the last /26 is the extra one)")
    return [f"10.{i >> 10}.{(i >> 2) & 255}.{(i & 3) * 64}/26" for i in range(n)]


def feeder_conf(n: int) -> str:
    statics = "\n".join(f"  route {p} blackhole;" for p in prefixes(n))
    # the "session established" trace (ms stamps) is what after_up_s clocks from
    common = (
        "  connect delay time 0;\n  graceful restart on;\n  disabled;\n"
        "  debug { states, events };\n"
    )
    return (
        f"router id {FEED_NODE};\nlog stderr all;\nprotocol device {{}}\n"
        f"protocol static s4 {{\n  ipv4;\n{statics}\n}}\n"
        f"protocol static extra {{\n  ipv4;\n  disabled;\n  route {EXTRA}/26 blackhole;\n}}\n"
        f"protocol bgp tonode {{\n  local {FEED_NODE} as {FEED_AS};\n"
        f"  neighbor {NODE_ADDR} as {NODE_AS};\n{common}"
        "  ipv4 { import none; export all; };\n}\n"
        f"protocol bgp tobird {{\n  local {FEED_RECV} as {FEED_AS};\n"
        f"  neighbor {RECV_ADDR} as {RECV_AS};\n{common}"
        "  ipv4 { import none; export all; };\n}\n"
    )


def receiver_conf() -> str:
    return (
        f"router id {RECV_ADDR};\nprotocol device {{}}\n"
        "protocol kernel k4 { ipv4 { import none; export all; }; }\n"
        f"protocol bgp fromfeed {{\n  local {RECV_ADDR} as {RECV_AS};\n"
        f"  neighbor {FEED_RECV} as {FEED_AS};\n  passive on;\n  graceful restart on;\n"
        "  ipv4 { import all; export none; };\n}\n"
    )


class Bird:
    """One BIRD in a namespace, driven through birdc, ended by its PID."""

    def __init__(self, ns: Netns, workdir: Path, conf: str) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.log = workdir / "bird.log"
        self.sock = workdir / "bird.ctl"
        (workdir / "bird.conf").write_text(conf)
        with open(self.log, "wb") as log:
            self.proc = ns.popen(
                ["bird", "-f", "-c", str(workdir / "bird.conf"), "-s", str(self.sock)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for("BIRD's control socket", lambda: self.birdc("show status").find("up") >= 0, 120)

    def established_at(self, protocol: str, after: float) -> float | None:
        """Wall-clock time of the first "session established" of
        ``protocol`` in BIRD's log (millisecond stamps) at or after ``after``."""
        mark = f"{protocol}: BGP session established"
        for line in self.log.read_text(errors="replace").splitlines():
            if mark in line:
                stamp = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S.%f").timestamp()
                if stamp >= after - 0.002:
                    return stamp
        return None

    def birdc(self, cmd: str) -> str:
        if not self.sock.exists():
            return ""
        p = subprocess.run(
            ["birdc", "-s", str(self.sock), *cmd.split()], capture_output=True, text=True
        )
        return p.stdout

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def kernel_count(ns: Netns, proto: str) -> int:
    out = subprocess.run(
        ["ip", "-n", ns.name, "-4", "route", "show", "proto", proto],
        capture_output=True,
        timeout=120,
    ).stdout
    return out.count(b"\n")


@dataclass
class Ingest:
    seconds: float  # enable -> all N in the kernel
    cpu_s: dict[str, float]  # CPU seconds meanwhile, per group of processes
    received_s: float | None = None  # enable -> all N accepted by the node's RIB
    up_s: float | None = None  # enable -> session established (the feeder's log)

    @property
    def after_up_s(self) -> float | None:
        return None if self.up_s is None else self.seconds - self.up_s

    @property
    def received_after_up_s(self) -> float | None:
        if self.up_s is None or self.received_s is None:
            return None
        return self.received_s - self.up_s


def time_until_installed(
    feeder: Bird,
    protocol: str,
    ns: Netns,
    proto: str,
    n: int,
    timeout: float,
    pids: dict[str, Callable[[], list[int]]],
    accepted: Callable[[], int] | None = None,
) -> Ingest:
    c0 = {k: cpu_s(f()) for k, f in pids.items()}
    received = None
    wall0 = time.time()
    t0 = time.perf_counter()
    feeder.birdc(f"enable {protocol}")
    deadline = t0 + timeout
    while True:
        if accepted is not None and received is None and accepted() >= n:
            received = time.perf_counter() - t0
        got = kernel_count(ns, proto)
        t = time.perf_counter()
        if got >= n:
            cpu = {k: cpu_s(f()) - c0[k] for k, f in pids.items()}
            up = feeder.established_at(protocol, wall0)
            return Ingest(t - t0, cpu, received, None if up is None else up - wall0)
        if t > deadline:
            raise TimeoutError(f"{ns.name}: {got} of {n} routes after {timeout:.0f} s")
        time.sleep(POLL_S)


def one_more(feeder: Bird, ns: Netns, timeout: float = 120) -> float:
    """With the N installed: the feeder announces one more prefix; seconds
    until the receiver's kernel routes it (``ip route get``: one FIB lookup,
    cheap to poll; nothing else covers it there). Withdrawn again after."""
    target = str(IPAddress(EXTRA) + 1)
    t0 = time.perf_counter()
    feeder.birdc("enable extra")
    try:
        while True:
            p = subprocess.run(
                ["ip", "-n", ns.name, "route", "get", target], capture_output=True, timeout=30
            )
            t = time.perf_counter()
            if p.returncode == 0:
                return t - t0
            if t - t0 > timeout:
                raise TimeoutError(f"{ns.name}: no route to {target} after {timeout:.0f} s")
            time.sleep(0.005)
    finally:
        feeder.birdc("disable extra")


class NodeRun(NodeUnderTest):
    """One ``meshroute node`` process with a fresh work dir (routed mode)."""

    @classmethod
    def start_in(cls, ns: Netns, work: Path, etcd: str, prefix: str) -> NodeRun:
        n = node_in(
            ns,
            "bench-node",
            NODE_ADDR,
            24,
            etcd,
            prefix,
            work,
            ipam={"socket": str(work / "ipam.sock")},
        )
        run = cls(n.name, n.ns, n.address, n.work, n.http, n.socket)
        run.start()
        return run

    def listening(self) -> bool:
        out = self.ns.sh("ss -Hltn 'sport = :179'", check=False)
        return bool(out.strip())

    def wait_started(self) -> None:
        def up() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"node exited: {self.logs()}")
            return any(p["peer"] == FEED_NODE for p in self.status().get("peers", ()))

        wait_for("the node's peer configuration", up, 60)
        wait_for("ExaBGP listening", self.listening, 60)

    def accepted(self) -> int:
        peers = self.status().get("peers", ())
        return sum(int(p.get("accepted", 0)) for p in peers if p["peer"] == FEED_NODE)

    def pids(self) -> dict[str, Callable[[], list[int]]]:
        assert self.proc is not None
        pid = self.proc.pid
        return {
            "node": lambda: [pid],
            "exabgp": lambda: [self.exabgp_pid()],
            "relay": lambda: descendants(self.exabgp_pid()),
        }

    def rss(self) -> dict[str, float]:
        """VmRSS by part; the parts cover the node's whole process tree."""
        assert self.proc is not None
        exa = self.exabgp_pid()
        relay = descendants(exa)
        others = [p for p in descendants(self.proc.pid) if p != exa and p not in relay]
        return {
            "node": rss_mb(self.proc.pid),
            "exabgp": rss_mb(exa),
            "exabgp_children": sum(rss_mb(p) for p in relay),
            "node_children": sum(rss_mb(p) for p in others),
        }


def nan_if_none(x: float | None) -> float:
    return float("nan") if x is None else x


def median(xs: list[float]) -> float | None:
    """None when a sample is missing (e.g. a log line not found)."""
    if any(x != x for x in xs):
        return None
    return round(statistics.median(xs), 3)


def bench(n: int, repeat: int, timeout: float, profile: str | None) -> dict[str, Any]:
    factory = NetnsFactory("mrbench")
    samples: dict[str, list[float]] = {
        k: []
        for k in (
            "meshroute_s",
            "bird_s",
            "node_rss_mb",
            "node_rss_start_mb",
            "bird_rss_mb",
            "meshroute_cpu_s",
            "meshroute_node_cpu_s",
            "meshroute_exabgp_cpu_s",
            "bird_cpu_s",
            "meshroute_rib_s",
            "feeder_cpu_s",
            "meshroute_after_up_s",
            "bird_after_up_s",
            "meshroute_one_more_ms",
            "bird_one_more_ms",
            "exabgp_floor_s",
            "exabgp_floor_after_up_s",
            "exabgp_floor_cpu_s",
        )
    }
    node_conf: list[str] = []  # the node's ExaBGP configuration, for the floor
    load = [os.getloadavg()[0]]
    parts: list[dict[str, float]] = []
    start_parts: list[dict[str, float]] = []
    cpu_parts: dict[str, list[float]] = {k: [] for k in ("node", "exabgp", "relay", "feeder")}
    with tempfile.TemporaryDirectory(prefix="mrbench-") as tmp:
        work = Path(tmp)
        etcd = start_etcd(work / "etcd")
        feeder: Bird | None = None
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
            feed, node_ns, recv = factory.new("feed"), factory.new("node"), factory.new("recv")
            for a, a_addr, b, b_addr in (
                (feed, FEED_NODE, node_ns, NODE_ADDR),
                (feed, FEED_RECV, recv, RECV_ADDR),
            ):
                a_if, b_if = f"to{b.name[-4:]}", "eth0"
                a.ip("link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", b.name)
                a.ip("addr", "add", f"{a_addr}/24", "dev", a_if)
                b.ip("addr", "add", f"{b_addr}/24", "dev", b_if)
                a.ip("link", "set", a_if, "up")
                b.ip("link", "set", b_if, "up")
            feeder = Bird(feed, work / "feed", feeder_conf(n))
            wait_for(
                "the feeder's static routes",
                lambda: (
                    f"{n} of {n} routes" in feeder.birdc("show route count") if feeder else False
                ),
                300,
            )

            def run_bird(i: int) -> None:
                assert feeder is not None
                receiver = Bird(recv, work / f"recv{i}", receiver_conf())
                try:
                    pids = {"bird": [receiver.proc.pid].copy, "feeder": [feeder.proc.pid].copy}
                    got = time_until_installed(feeder, "tobird", recv, BIRD_PROTO, n, timeout, pids)
                    samples["bird_s"].append(got.seconds)
                    samples["bird_after_up_s"].append(nan_if_none(got.after_up_s))
                    samples["bird_cpu_s"].append(got.cpu_s["bird"])
                    samples["feeder_cpu_s"].append(got.cpu_s["feeder"])
                    samples["bird_rss_mb"].append(rss_mb(receiver.proc.pid))
                    samples["bird_one_more_ms"].append(1000 * one_more(feeder, recv))
                finally:
                    feeder.birdc("disable tobird")
                    receiver.stop()
                    recv.ip("route", "flush", "proto", BIRD_PROTO, check=False)

            def run_node(i: int) -> None:
                assert feeder is not None
                node = NodeRun.start_in(node_ns, work / f"node{i}", etcd.endpoint, "/bench")
                spy = None
                try:
                    node.wait_started()
                    if not node_conf:
                        node_conf.append((node.bgp_dir / "exabgp.conf").read_text())
                    time.sleep(1)  # let the start-up work settle before the clock starts
                    start = node.rss()
                    start_parts.append(start)
                    samples["node_rss_start_mb"].append(sum(start.values()))
                    if profile and node.proc is not None:
                        spy = subprocess.Popen(
                            [
                                str(Path(sys.executable).parent / "py-spy"),
                                "record",
                                "-p",
                                str(node.proc.pid),
                                "-o",
                                f"{profile}.{i}.txt",
                                "-f",
                                "raw",
                                "-r",
                                "50",
                            ],
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL,
                        )
                        time.sleep(1)
                    got = time_until_installed(
                        feeder,
                        "tonode",
                        node_ns,
                        str(NODE_PROTO),
                        n,
                        timeout,
                        {**node.pids(), "feeder": [feeder.proc.pid].copy},
                        node.accepted,
                    )
                    samples["meshroute_s"].append(got.seconds)
                    samples["meshroute_after_up_s"].append(nan_if_none(got.after_up_s))
                    cpu = got.cpu_s
                    samples["meshroute_cpu_s"].append(cpu["node"] + cpu["exabgp"] + cpu["relay"])
                    samples["meshroute_node_cpu_s"].append(cpu["node"])
                    samples["meshroute_exabgp_cpu_s"].append(cpu["exabgp"] + cpu["relay"])
                    for k in ("node", "exabgp", "relay", "feeder"):
                        cpu_parts[k].append(cpu[k])
                    samples["meshroute_rib_s"].append(nan_if_none(got.received_after_up_s))
                    time.sleep(1)  # RSS once the ingest is over, not mid-flight
                    part = node.rss()
                    parts.append(part)
                    samples["node_rss_mb"].append(sum(part.values()))
                    samples["meshroute_one_more_ms"].append(1000 * one_more(feeder, node_ns))
                finally:
                    if spy is not None and spy.poll() is None:
                        spy.send_signal(signal.SIGINT)
                        spy.wait(60)
                    feeder.birdc("disable tonode")
                    node.stop()
                    node_ns.ip("route", "flush", "proto", str(NODE_PROTO), check=False)

            def run_floor(i: int) -> None:
                assert feeder is not None
                conf, listen = node_conf[0], (NODE_ADDR, 179)
                got = exabgp_floor(
                    feeder, "tonode", node_ns, conf, listen, work / f"floor{i}", timeout
                )
                samples["exabgp_floor_s"].append(got.seconds)
                samples["exabgp_floor_after_up_s"].append(nan_if_none(got.after_up_s))
                samples["exabgp_floor_cpu_s"].append(got.cpu_s)

            for i in range(repeat):
                # the floor takes the configuration of the first node run, which precedes it
                for run in alternating(i, (run_bird, run_node, run_floor)):
                    run(i)
            load.append(os.getloadavg()[0])
        finally:
            if feeder is not None:
                feeder.stop()
            factory.cleanup()
            etcd.stop()
    med = {k: median(v) for k, v in samples.items()}

    def ratio(a: str, b: str) -> float | None:
        x, y = med[a], med[b]
        return None if x is None or not y else round(x / y, 2)

    rss = med["node_rss_mb"]
    floor, whole = med["exabgp_floor_s"], med["meshroute_s"]
    own = None if floor is None or whole is None else round(whole - floor, 3)
    own_ratio = None if own is None or not med["bird_s"] else round(own / med["bird_s"], 2)
    return {
        "prefixes": n,
        **med,
        "ratio": ratio("meshroute_s", "bird_s"),
        "ratio_after_up": ratio("meshroute_after_up_s", "bird_after_up_s"),
        "cpu_ratio": ratio("meshroute_cpu_s", "bird_cpu_s"),
        "node_cpu_ratio": ratio("meshroute_node_cpu_s", "bird_cpu_s"),
        "meshroute_own_s": own,
        "own_ratio": own_ratio,
        "meshroute_cpu_parts_s": {k: median(v) for k, v in cpu_parts.items()},
        "node_rss_parts_mb": {k: median([p[k] for p in parts]) for k in parts[0]},
        "node_rss_start_parts_mb": {k: median([p[k] for p in start_parts]) for k in parts[0]},
        "goals": {
            "ratio_le_2": (ratio("meshroute_s", "bird_s") or 99) <= 2.0,
            "node_rss_le_250mb_at_100k": rss <= 250 if rss and n >= 100_000 else None,
            "node_rss_le_100mb_at_10k": rss <= 100 if rss and n <= 10_000 else None,
            "own_share_le_1x_bird": None if own_ratio is None else own_ratio <= 1.0,
        },
        "loadavg_1m": [round(x, 2) for x in load],
        "repeat": repeat,
        "samples": {k: [None if x != x else round(x, 3) for x in v] for k, v in samples.items()},
        "anchor": "the same feeder to BIRD 2 (protocol kernel, export all) in the same run",
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--prefixes", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=600, help="per sample, seconds")
    ap.add_argument("--profile", help="py-spy raw profiles of the node to PATH.<i>.txt")
    ap.add_argument("--json", action="store_true", help="print only the JSON result")
    args = ap.parse_args(argv)
    require_root("bench.bgp_ingest")
    if args.profile and not (Path(sys.executable).parent / "py-spy").exists():
        raise SystemExit("--profile needs py-spy in the venv: .venv/bin/pip install py-spy")
    result = bench(args.prefixes, args.repeat, args.timeout, args.profile)
    print_result(result, args.json)


if __name__ == "__main__":
    main()
