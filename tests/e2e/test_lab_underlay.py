"""The lab's underlay, built for real without nodes: namespaces, the rack
bridges, the router, BIRD on every router, etcd in the management
namespace. Nodes reach each other across the router only through routes
BIRD learned; teardown, and the crash sweep, leave nothing behind."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.build import Lab, build_underlay, down_after_crash, teardown
from lab.netns import call_in_netns, run
from lab.pods import node_endpoints, ping_matrix
from lab.state import ProcessRecord, load_state, still_ours
from lab.status import bird_protocols
from lab.topology import LabParams, plan_lab

pytestmark = [pytest.mark.netns, pytest.mark.slow]

# "mrlab" is the real lab's; one prefix per test process so that concurrent
# runs never sweep each other's namespaces
PREFIX = f"mrlabt{os.getpid()}x"


def _our_namespaces() -> list[str]:
    return [
        line.split()[0]
        for line in run(["ip", "netns", "list"], check=False).splitlines()
        if line.startswith(PREFIX)
    ]


def _wait(cond: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s: {what}")


@pytest.fixture
def lab_factory(tmp_path: Path) -> Iterator[object]:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    built: list[Lab] = []

    def make(topology: str, placement: str = "root") -> Lab:
        params = LabParams(
            topology=topology,  # type: ignore[arg-type]
            run_dir=str(tmp_path / topology),
            node_placement=placement,  # type: ignore[arg-type]
        )
        plan = plan_lab(params)
        lab = build_underlay(plan, prefix=PREFIX)
        built.append(lab)
        return lab

    yield make
    for lab in built:
        if load_state(lab.plan.run_dir) is not None:
            teardown(lab.state)


def _fabric_sessions(lab: Lab) -> dict[tuple[str, str], bool]:
    out = {}
    bird = [(sp.ns, sp.socket_path) for sp in lab.plan.speakers]
    bird += [(r.ns, r.socket_path) for r in lab.plan.reflectors]  # meshroute reflector's BIRD
    for ns, sock in bird:
        for pr in bird_protocols(sock):
            if pr.proto == "BGP" and not pr.name.startswith("node_"):
                out[(ns, pr.name)] = pr.established
    return out


def _etcd_health(endpoint: str) -> bytes:
    with urllib.request.urlopen(f"http://{endpoint}/health", timeout=2) as r:
        return r.read()


@pytest.mark.parametrize(
    ("topology", "placement"), [("tor", "root"), ("mesh", "netns"), ("rr", "root")]
)
def test_underlay_routes_across_racks_and_tears_down(
    lab_factory, topology: str, placement: str
) -> None:
    lab: Lab = lab_factory(topology, placement)  # type: ignore[operator]
    procs = list(lab.state.processes)
    roles = {"etcd", "bird"} | ({"reflector"} if topology == "rr" else set())
    assert {p.role for p in procs} == roles
    assert len(_our_namespaces()) == len(lab.plan.namespaces)

    expected = {("router", "tor1"), ("router", "tor2"), ("r1-tor", "spine"), ("r2-tor", "spine")}
    if topology == "rr":
        # the meshroute reflectors found each other in etcd by their cluster id
        rr1, rr2 = lab.plan.reflectors
        expected |= {
            ("rr1", f"rr_{rr2.ip.replace('.', '_')}"),
            ("rr2", f"rr_{rr1.ip.replace('.', '_')}"),
        }
    _wait(lambda: all(_fabric_sessions(lab).get(k) for k in expected), 15, "fabric sessions")
    assert set(_fabric_sessions(lab)) == expected

    # the ToR learned the other rack's subnet from the router, through BIRD
    routes = lab.netns("r1-tor").ip("route", "show", "proto", "bird")
    assert "192.0.2.64/26 via 198.51.100.1" in routes

    m = ping_matrix(node_endpoints(lab))
    assert m.all_ok, m.failures

    # etcd answers where the node processes will run: the root namespace,
    # or inside a node namespace over the management network
    if placement == "root":
        assert lab.etcd_endpoint.startswith("127.0.0.1:")
        assert b'"true"' in _etcd_health(lab.etcd_endpoint)
    else:
        node_ns = lab.state.ns(lab.plan.nodes[-1].ns)
        assert b'"true"' in call_in_netns(node_ns, lambda: _etcd_health(lab.etcd_endpoint))

    teardown(lab.state)
    assert _our_namespaces() == []
    assert not any(still_ours(p) for p in procs)
    assert load_state(lab.plan.run_dir) is None


def test_the_cross_rack_underlay_is_what_bird_learned(lab_factory) -> None:
    """Take the session between rack 2's ToR and the router down (an
    administrative stop sends a Cease, so graceful restart does not keep the
    routes): rack 1 loses rack 2, and gets it back when it comes up again.
    So the ping test above cannot pass on a static route."""
    lab: Lab = lab_factory("mesh")  # type: ignore[operator]
    _wait(lambda: all(_fabric_sessions(lab).values()), 15, "fabric sessions")
    tor2 = next(sp for sp in lab.plan.speakers if sp.ns == "r2-tor")
    r1_tor = lab.netns("r1-tor")
    a, b = node_endpoints(lab)[0], node_endpoints(lab)[-1]

    run(["birdc", "-s", tor2.socket_path, "disable", "spine"])
    _wait(lambda: "192.0.2.64/26" not in r1_tor.ip("route"), 10, "route withdrawn")
    assert ping_matrix([a, b]).failures

    run(["birdc", "-s", tor2.socket_path, "enable", "spine"])
    r2_tor = lab.netns("r2-tor")
    _wait(lambda: "192.0.2.64/26" in r1_tor.ip("route"), 15, "route back")
    _wait(lambda: "192.0.2.0/26" in r2_tor.ip("route"), 15, "return route back")
    assert ping_matrix([a, b]).all_ok


BUILDER = """
import sys, time
from lab.build import build_underlay
from lab.topology import LabParams, plan_lab
build_underlay(plan_lab(LabParams(topology="tor", run_dir=sys.argv[1])), prefix=sys.argv[2])
print("up", flush=True)
time.sleep(600)
"""


def test_down_after_crash_without_a_state_file_removes_everything(tmp_path: Path) -> None:
    """The builder dies by SIGKILL after the lab is up and the state file is
    lost as well: the sweep still ends every daemon and namespace."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    run_dir = tmp_path / "crash"
    builder = subprocess.Popen(
        [sys.executable, "-c", BUILDER, str(run_dir), PREFIX],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert builder.stdout is not None
        assert builder.stdout.readline().strip() == "up"
        state = load_state(run_dir)
        assert state is not None
        procs: list[ProcessRecord] = state.processes
        assert procs and all(still_ours(p) for p in procs)
        builder.kill()
        builder.wait()
        assert all(still_ours(p) for p in procs)  # the daemons outlive their builder
        (run_dir / "state.json").unlink()
        swept = down_after_crash(run_dir, prefix=PREFIX)
        assert len(swept) == len(state.namespaces)
        assert _our_namespaces() == []
        _wait(lambda: not any(still_ours(p) for p in procs), 5, "daemons ended")
    finally:
        if builder.poll() is None:
            builder.kill()
            builder.wait()
        if builder.stdout is not None:
            builder.stdout.close()
        down_after_crash(run_dir, prefix=PREFIX)


def test_down_after_crash_uses_the_state_file_and_kills_only_our_pids(tmp_path: Path) -> None:
    """With the state file, the recorded PIDs are ended; a recorded PID that
    now belongs to another process (start time differs) is left alone."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    plan = plan_lab(LabParams(topology="mesh", racks=1, nodes_per_rack=1, run_dir=str(tmp_path)))
    lab = build_underlay(plan, prefix=PREFIX)
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        fake = ProcessRecord("bird", "router", bystander.pid, 1, ("sleep", "60"))
        lab.state.processes.append(fake)
        lab.state.save()
        procs = [p for p in lab.state.processes if p is not fake]
        down_after_crash(tmp_path, prefix=PREFIX)
        assert _our_namespaces() == []
        assert not any(still_ours(p) for p in procs)
        assert bystander.poll() is None  # not ours: the start time did not match
    finally:
        bystander.kill()
        bystander.wait()
