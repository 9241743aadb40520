"""The lab's rr topology with real ``meshroute node`` processes and the pair
of ``meshroute reflector`` processes: a pod-to-pod ping across racks (through
reflected routes, VXLAN) keeps every reply while one reflector's BIRD is
killed -9 (meshroute restarts it), then while that ``meshroute reflector``
is killed -9 (BIRD keeps reflecting) and started again (it adopts BIRD)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab.build import record_process, spawn_in_netns, start_meshroute_node
from lab.pods import pod_endpoints
from lab.status import bird_protocols
from lab.topology import LabParams
from lab.up import lab_down, lab_up

pytestmark = [pytest.mark.netns, pytest.mark.etcd, pytest.mark.slow, pytest.mark.timeout(300)]
PREFIX = f"mrlabt{os.getpid()}x"


def _wait(cond: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s: {what}")


def _all_up(sock: str, n: int) -> bool:
    try:
        protos = [p for p in bird_protocols(sock) if p.proto == "BGP"]
    except (RuntimeError, OSError, subprocess.TimeoutExpired):
        return False
    return len(protos) == n and all(p.established for p in protos)


def _bird_pid(bird_dir: str) -> int:
    return int(Path(bird_dir, "bird.pid").read_text().strip())


def _ping(netns: str, dst: str, count: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["ip", "netns", "exec", netns, "ping", "-n", "-q", "-i", "0.05", "-W", "1",
         "-c", str(count), dst],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip


def _received(p: subprocess.Popen[str]) -> tuple[int, int, str]:
    out = p.communicate(timeout=120)[0]
    m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    assert m, out
    return int(m.group(1)), int(m.group(2)), out


def test_pod_ping_survives_kill_9_of_bird_and_of_the_reflector(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    params = LabParams(
        topology="rr", racks=2, nodes_per_rack=1, pods_per_node=1, run_dir=str(tmp_path / "lab")
    )
    res = lab_up(
        params, start_meshroute_node, prefix=PREFIX, say=lambda _m: None, converge_timeout=30
    )
    try:
        lab = res.lab
        assert res.matrix is not None and res.matrix.all_ok, res.matrix
        rr1, rr2 = lab.plan.reflectors
        # each reflector: 2 clients + its partner
        _wait(lambda: _all_up(rr1.socket_path, 3) and _all_up(rr2.socket_path, 3), 30, "rr up")
        a, b = pod_endpoints(lab)[0], pod_endpoints(lab)[-1]
        assert a.netns != b.netns

        ping = _ping(a.netns, b.address, 160)
        time.sleep(1)
        old = _bird_pid(rr1.bird_dir)
        os.kill(old, signal.SIGKILL)
        _wait(
            lambda: _bird_pid(rr1.bird_dir) != old and _all_up(rr1.socket_path, 3),
            40,
            "rr1's BIRD restarted by meshroute, its sessions back",
        )
        sent, got, out = _received(ping)
        assert sent == got == 160, out

        ping = _ping(a.netns, b.address, 100)
        time.sleep(1)
        rec = next(r for r in lab.state.processes if r.role == "reflector" and r.label == rr1.ns)
        bird = _bird_pid(rr1.bird_dir)
        os.kill(rec.pid, signal.SIGKILL)
        time.sleep(2)
        assert _all_up(rr1.socket_path, 3)  # BIRD reflects on without meshroute
        argv = [sys.executable, "-m", "meshroute.cli", "reflector", "--config", rr1.config_path]
        p = spawn_in_netns(None, argv, rr1.log_path)
        lab.record(record_process("reflector", rr1.ns, p.pid, p.argv))
        _wait(lambda: "adopting BIRD" in Path(rr1.log_path).read_text(), 20, "rr1 back")
        sent, got, out = _received(ping)
        assert sent == got == 100, out
        assert _bird_pid(rr1.bird_dir) == bird and _all_up(rr1.socket_path, 3)
    finally:
        lab_down(params.run_dir, PREFIX, say=lambda _m: None)
