"""``meshroute lab up|status|down`` as an operator types it: a fresh
``meshroute`` process that hands its arguments to the lab's own command line
(``python -m lab``), with real ``meshroute node`` processes; dual stack by
default (two ping matrices), IPv4 only with ``--ipv4-only``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lab.kernel import kernel_has_module
from lab.netns import run
from lab.topology import NO_IPIP

pytestmark = [pytest.mark.netns, pytest.mark.etcd, pytest.mark.slow]
# "mrlab" is the real lab's; one prefix per test process so that concurrent
# runs never sweep each other's namespaces
PREFIX = f"mrlabt{os.getpid()}x"


def _meshroute(*argv: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshroute.cli", *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_lab_up_keep_status_down(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    run_dir = str(tmp_path / "lab")
    common = ("--run-dir", run_dir, "--prefix", PREFIX)
    try:
        up = _meshroute(
            "lab", "up", "--topology", "tor", "--racks", "1", "--nodes-per-rack", "1",
            "--keep", *common,
        )  # fmt: skip
        assert up.returncode == 0, up.stdout + up.stderr
        assert "every pod reached every pod on IPv4 and IPv6" in up.stdout
        assert "2/4" not in up.stdout and up.stdout.count("4/4 pairs answered") == 2
        assert "pod to pod over IPv6 (ping -6" in up.stdout
        assert "r1-tor" in up.stdout and "spine_v6" in up.stdout and "Established" in up.stdout
        assert (tmp_path / "lab" / "state.json").exists()

        status = _meshroute("lab", "status", *common)
        assert status.returncode == 0, status.stdout + status.stderr
        assert status.stdout.count("4/4 pairs answered") == 2 and "IPAM" in status.stdout
        assert "fd00:10:244:" in status.stdout  # the IPv6 pod routes
    finally:
        down = _meshroute("lab", "down", *common)
        assert down.returncode == 0, down.stdout + down.stderr
    assert not (tmp_path / "lab" / "state.json").exists()
    assert not any(n.startswith(PREFIX) for n in run(["ip", "netns", "list"]).split())


def test_bad_parameters_and_no_lab(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    bad = _meshroute("lab", "up", "--racks", "9", "--run-dir", str(tmp_path))
    assert bad.returncode == 1 and "racks" in bad.stderr and "Traceback" not in bad.stderr
    both = _meshroute("lab", "up", "--dual-stack", "--ipv4-only", "--run-dir", str(tmp_path))
    assert both.returncode == 2 and "not allowed with" in both.stderr, both.stderr
    none = _meshroute("lab", "status", "--run-dir", str(tmp_path))
    assert none.returncode == 1 and "no lab" in none.stderr and "Traceback" not in none.stderr


def test_meshroute_lab_and_python_m_lab_are_one_command_line() -> None:
    via_meshroute = _meshroute("lab", "up", "--help", timeout=30)
    direct = subprocess.run(
        [sys.executable, "-m", "lab", "up", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert via_meshroute.returncode == 0 and direct.returncode == 0
    assert "--topology" in via_meshroute.stdout and "--node-starter" not in via_meshroute.stdout
    assert via_meshroute.stdout.startswith("usage: meshroute lab up")
    assert direct.stdout.startswith("usage: python -m lab up")
    assert "--converge-seconds" in via_meshroute.stdout and "--converge-seconds" in direct.stdout
    demo = _meshroute("demo", "--help", timeout=30)
    assert demo.returncode == 0 and demo.stdout.startswith("usage: meshroute demo")
    assert "--topology" in demo.stdout
    assert "--ipv4-only" in demo.stdout and "--ipv4-only" in via_meshroute.stdout


def test_encap_auto_takes_ipip_where_the_kernel_has_it_else_says_vxlan(tmp_path: Path) -> None:
    """The design's IPIP CrossSubnet when the kernel has ipip; this
    development kernel has none, so the lab says it falls back to VXLAN.
    Either way pods ping across racks."""
    has_ipip = kernel_has_module("ipip")
    common = ("--run-dir", str(tmp_path / "lab"), "--prefix", PREFIX)
    if not has_ipip:
        refused = _meshroute("lab", "up", "--encap", "ipip", *common)
        assert refused.returncode == 1 and "no ipip module" in refused.stderr, refused.stderr
        assert "Traceback" not in refused.stderr
    up = _meshroute(
        "lab", "up", "--topology", "mesh", "--racks", "2", "--nodes-per-rack", "1",
        "--pods-per-node", "1", "--encap", "auto", "--ipv4-only", *common,
    )  # fmt: skip
    assert up.returncode == 0, up.stdout + up.stderr
    said = "IPIP CrossSubnet across racks" if has_ipip else NO_IPIP
    assert f"==> {said}\n" in up.stdout, up.stdout
    assert "==> every pod reached every pod\n" in up.stdout  # IPv4 only: one matrix
    assert "ping -6" not in up.stdout and "fd00:" not in up.stdout
    assert not any(n.startswith(PREFIX) for n in run(["ip", "netns", "list"]).split())
