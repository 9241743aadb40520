"""``meshroute lab up|status|down`` through its argument parser, with the
stand-in node starter (IPAM only) until ``meshroute node`` is plugged in."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest

from meshroute import cmd_lab
from meshroute.lab.netns import run

pytestmark = [pytest.mark.netns, pytest.mark.slow]
# "mrlab" is the real lab's; one prefix per test process so that concurrent
# runs never sweep each other's namespaces
PREFIX = f"mrlabt{os.getpid()}x"
STARTER = "tests.e2e.test_lab_pods:ipam_only"


def _main(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="meshroute")
    cmd_lab.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return int(args.func(args))


def test_lab_up_keep_status_down(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    run_dir = str(tmp_path / "lab")
    common = ("--run-dir", run_dir, "--prefix", PREFIX)
    try:
        rc = _main(
            "lab", "up", "--topology", "tor", "--racks", "1", "--nodes-per-rack", "1",
            "--keep", "--converge-seconds", "0", "--node-starter", STARTER, *common,
        )  # fmt: skip
        out = capsys.readouterr().out
        assert rc == 0, out
        assert "every pod reached every pod" in out and "2/4" not in out
        assert "r1-tor" in out and "spine" in out and "Established" in out
        assert (tmp_path / "lab" / "state.json").exists()

        assert _main("lab", "status", *common) == 0
        out = capsys.readouterr().out
        assert "4/4 pairs answered" in out and "IPAM" in out
    finally:
        assert _main("lab", "down", *common) == 0
    assert not (tmp_path / "lab" / "state.json").exists()
    assert not any(n.startswith(PREFIX) for n in run(["ip", "netns", "list"]).split())


def test_bad_parameters_and_no_lab(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    from meshroute.errors import UserError

    with pytest.raises(UserError, match="racks"):
        _main("lab", "up", "--racks", "9", "--run-dir", str(tmp_path))
    with pytest.raises(UserError, match="no lab"):
        _main("lab", "status", "--run-dir", str(tmp_path))
