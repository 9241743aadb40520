"""Under ``CI=true`` a skip fails the run (the hook in ``tests/conftest.py``);
elsewhere a skip stays a skip. Checked on a throwaway test file run by a
fresh pytest with this suite's conftest as a plugin."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # two fresh pytest processes
REPO = Path(__file__).resolve().parents[2]
PROBE = """
import pytest

def test_passes():
    pass

def test_skips_inside():
    pytest.skip("a tool is missing")

@pytest.mark.skipif(True, reason="a stale guard")
def test_skipped_by_marker():
    pass

@pytest.mark.xfail(reason="expected to fail", strict=True)
def test_expected_failure():
    assert False
"""


def _run(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_probe.py").write_text(PROBE)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run(
        [
            *(sys.executable, "-m", "pytest", "-q", "-rA"),
            *("-p", "no:cacheprovider", "-p", "tests.conftest", "test_probe.py"),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_under_ci_every_skip_fails_the_run(tmp_path: Path) -> None:
    r = _run(tmp_path, "true")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "test_skips_inside - skipped under CI=true" in r.stdout, r.stdout
    assert "test_skipped_by_marker - skipped under CI=true" in r.stdout, r.stdout
    assert "XFAIL" in r.stdout and "1 passed" in r.stdout, r.stdout


def test_outside_ci_a_skip_is_a_skip(tmp_path: Path) -> None:
    r = _run(tmp_path, None)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 passed, 2 skipped, 1 xfailed" in r.stdout, r.stdout
