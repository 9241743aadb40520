"""Small things an operator trips on: a pipe closed early, global flags
before the subcommand, the CNI installer as a command, "1 address"."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ipam.quoting import counted
from lab.etcd import EtcdCluster
from tests.harness.cli import REPO
from tests.harness.cni import VENV_BIN, cni_env

pytestmark = pytest.mark.etcd


def test_show_into_a_pipe_closed_early_exits_quietly(
    etcd_server: EtcdCluster, etcd_prefix: str
) -> None:
    """``meshroute ipam show | head``, with the reader gone before the first
    write (its end of the pipe closed before the command starts)."""
    env = {**os.environ, "MESHROUTE_ETCD": etcd_server.endpoint, "MESHROUTE_PREFIX": etcd_prefix}
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        r = subprocess.run(
            [sys.executable, "-m", "meshroute.cli", "ipam", "show"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            env=env,
            cwd=REPO,
            text=True,
            timeout=60,
        )
    finally:
        os.close(write_end)
    assert r.stderr == "", r.stderr
    assert r.returncode == 141  # as a tool killed by SIGPIPE


def test_global_flags_work_before_and_after_the_subcommand(
    etcd_server: EtcdCluster, etcd_prefix: str
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHROUTE_")}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "meshroute.cli", *args],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )

    flags = ("--etcd", etcd_server.endpoint, "--prefix", etcd_prefix)
    assert run(*flags, "apply", "-f", "-", "--help").returncode == 0
    before = run(*flags, "get", "pools", "-o", "json")
    assert before.returncode == 0 and before.stdout.strip() == "[]", before.stderr
    after = run("get", "pools", "-o", "json", *flags)
    assert after.returncode == 0 and after.stdout.strip() == "[]", after.stderr
    # the one after the subcommand wins
    both = run("--etcd", "127.0.0.1:1", "get", "pools", "--etcd", etcd_server.endpoint)
    assert both.returncode == 0, both.stderr
    wrong = run("--etcd", "127.0.0.1:1", "get", "pools")
    assert wrong.returncode == 1 and "127.0.0.1:1" in wrong.stderr


def test_cni_installer_is_a_console_script(tmp_path: Path) -> None:
    script = VENV_BIN / "meshroute-cni-install"
    assert script.exists(), "pip install -e . (scripts/bootstrap) installs it"
    r = subprocess.run([str(script), str(tmp_path)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    launchers = [tmp_path / "meshroute-cni-ipam", tmp_path / "meshroute-cni"]
    assert r.stdout.split() == [str(p) for p in launchers]
    for launcher in launchers:
        v = subprocess.run(
            [str(launcher)],
            input=b"",
            env=cni_env("VERSION", None, None, None),
            capture_output=True,
        )
        assert v.returncode == 0 and b"supportedVersions" in v.stdout, launcher
    usage = subprocess.run([str(script)], capture_output=True, text=True, timeout=30)
    assert usage.returncode == 2 and "usage: meshroute-cni-install DIR" in usage.stderr


def test_counts_agree_with_their_nouns() -> None:
    assert counted(1, "address") == "1 address"
    assert counted(2, "address") == "2 addresses"
    assert counted(0, "finding") == "0 findings"
    assert counted(1, "borrowed address") == "1 borrowed address"
