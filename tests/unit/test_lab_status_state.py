"""Pure parts of the lab's status and state: birdc's protocol table (as
captured from BIRD 2.0.12), route kinds from ``ip -j route``, the state file
round trip, and PID identity (start time + command line) on real processes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from lab.pods import Endpoint, PingMatrix, format_matrix, ping_matrix
from lab.state import (
    LabState,
    PodRecord,
    ProcessRecord,
    end_processes,
    load_state,
    processes_under,
    record_process,
    still_ours,
)
from lab.status import classify_route, format_routes, parse_protocols, unrouted_pods

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "bird"


def test_parse_show_protocols() -> None:
    rows = parse_protocols((FIXTURES / "show-protocols.txt").read_text())
    by = {r.name: r for r in rows}
    assert set(by) == {"device1", "direct1", "kernel1", "spine", "node_r1_n1", "node_r1_n2"}
    assert by["spine"].established and by["spine"].state == "up"
    assert not by["node_r1_n1"].established and by["node_r1_n1"].info == "Passive"
    assert not by["kernel1"].established  # not BGP


def test_parse_show_protocols_with_a_date_and_an_error() -> None:
    text = (
        "BIRD 2.0.12 ready.\n"
        "Name       Proto      Table      State  Since         Info\n"
        "tor1       BGP        ---        start  2026-11-25 23:59:01  Active        "
        "Socket: Connection refused\n"
    )
    (row,) = parse_protocols(text)
    assert row.state == "start" and row.info.startswith("Active") and not row.established


def test_route_kinds() -> None:
    routes = [
        {"type": "blackhole", "dst": "10.244.0.0/26", "protocol": "213"},
        {"dst": "10.244.0.64/26", "gateway": "192.0.2.11", "dev": "eth0"},
        {
            "dst": "10.244.0.128/26",
            "gateway": "10.244.1.0",
            "dev": "vxlan.mesh",
            "flags": ["onlink"],
        },
        {"dst": "10.244.0.192/26", "gateway": "192.0.2.74", "dev": "tunl0", "flags": ["onlink"]},
        {"dst": "10.244.1.0/26", "nexthops": [{"gateway": "192.0.2.1"}, {"gateway": "192.0.2.2"}]},
    ]
    kinds = [classify_route(r).kind for r in routes]
    assert kinds == ["blackhole", "direct", "vxlan", "ipip", "direct"]
    assert classify_route(routes[4]).via == "192.0.2.1,192.0.2.2"
    text = format_routes({"rack1-node1": [classify_route(r) for r in routes]})
    assert text.splitlines()[0] == "rack1-node1: 2 direct, 1 vxlan, 1 ipip, 1 blackhole"


def test_unrouted_pods_are_the_other_nodes_pods_no_route_covers() -> None:
    pods = [
        PodRecord("a1", "node-a", "ns1", "c1", "10.244.0.1", "fd00::1"),
        PodRecord("b1", "node-b", "ns2", "c2", "10.244.0.65", "fd00::41"),
        PodRecord("b2", "node-b", "ns3", "c3", "10.244.0.130", ""),
    ]
    routes = {
        # a: b's IPv4 block, not b2's, nor b1's IPv6 address
        "node-a": ["10.244.0.64/26", "fd00::/122"],
        # b: a default route covers a's pods of both families
        "node-b": ["default"],
    }
    assert unrouted_pods(routes, pods) == [("node-a", "fd00::41"), ("node-a", "10.244.0.130")]
    assert unrouted_pods({"node-a": ["10.244.0.0/16", "fd00::/64"]}, pods) == []


def test_ping_matrix_retries_once_and_formats() -> None:
    calls: list[tuple[str, str]] = []

    def fake(ns: str, addr: str, _t: int) -> bool:
        calls.append((ns, addr))
        # b never answers a; everything else answers, a->a only the second time
        if (ns, addr) == ("nsa", "10.0.0.2"):
            return False
        return not (ns == "nsa" and addr == "10.0.0.1" and calls.count((ns, addr)) == 1)

    eps = [Endpoint("a", "nsa", "10.0.0.1"), Endpoint("b", "nsb", "10.0.0.2")]
    m = ping_matrix(eps, ping=fake, workers=1)
    assert m.failures == [("a", "b")]
    assert calls.count(("nsa", "10.0.0.2")) == 2  # retried once, then given up
    text = format_matrix(m)
    assert "FAIL" in text and text.endswith("3/4 pairs answered")
    assert PingMatrix(("a",), frozenset({("a", "a")})).all_ok


def test_state_round_trip(tmp_path: Path) -> None:
    s = LabState(str(tmp_path), "mrlab", "tor", {"router": "mrlab1-0-router"})
    s.processes.append(ProcessRecord("bird", "router", 123, 456, ("bird", "-f")))
    s.pods.append(PodRecord("r1-n1-p1", "rack1-node1", "mrlab1-9-r1-n1-p1", "c1", "10.244.0.2"))
    s.etcd_endpoint = "127.0.0.1:2379"
    s.save()
    assert load_state(tmp_path) == s
    assert load_state(tmp_path / "nothing") is None


def test_pid_identity_on_real_processes(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    argv = [sys.executable, "-c", "import time; time.sleep(60)", str(marker)]
    p = subprocess.Popen(argv)
    try:
        rec = record_process("node", "r1-n1", p.pid, argv)
        assert still_ours(rec)
        # the same PID with another start time is someone else's process
        assert not still_ours(ProcessRecord("node", "x", p.pid, rec.start_time + 1, rec.argv))
        # another command line: not ours either
        assert not still_ours(ProcessRecord("node", "x", p.pid, rec.start_time, ("sleep", "9")))
        # the lab's run dir in its command line: found after a crash
        assert [r.pid for r in processes_under(tmp_path)] == [p.pid]
        assert end_processes([rec], grace=5) == [p.pid]
        assert p.wait(5) is not None
        assert not still_ours(rec)
        assert end_processes([rec]) == []  # gone: nothing to signal
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_record_strips_ip_netns_exec() -> None:
    p = subprocess.Popen(["sleep", "30"])
    try:
        rec = record_process("bird", "router", p.pid, ["ip", "netns", "exec", "ns1", "sleep", "30"])
        assert rec.argv == ("sleep", "30") and still_ours(rec)
    finally:
        p.kill()
        p.wait()
