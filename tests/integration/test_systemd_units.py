"""The shipped systemd units pass ``systemd-analyze verify`` (with ExecStart
pointed at this checkout's meshroute, since verify checks that it exists)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNITS = sorted((REPO / "configs" / "systemd").glob("*.service"))


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_unit_verifies(unit: Path, tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "meshroute"
    text = unit.read_text().replace("/usr/local/bin/meshroute", str(exe))
    assert str(exe) in text
    copy = tmp_path / unit.name
    copy.write_text(text)
    p = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "Unknown key" not in p.stderr and "Invalid" not in p.stderr, p.stderr


def test_node_unit_has_what_the_issue_asks() -> None:
    text = (REPO / "configs" / "systemd" / "meshroute-node.service").read_text()
    for line in (
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "After=network-online.target",
        "CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_BIND_SERVICE CAP_NET_RAW",
        # a crash or restart of the node must not end the BFD daemon
        "KillMode=process",
    ):
        assert line in text


def test_reflector_unit_leaves_bird_to_meshroute() -> None:
    text = (REPO / "configs" / "systemd" / "meshroute-reflector.service").read_text()
    for line in (
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "ExecStart=/usr/local/bin/meshroute reflector --config /etc/meshroute/reflector.yaml",
        # a crash of meshroute must not take BIRD (and every session) with it
        "KillMode=process",
    ):
        assert line in text
