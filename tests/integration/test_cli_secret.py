"""``meshroute secret``: set from stdin or a file, list by name only, delete;
bad names, values and files are one-line errors that never echo the value."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab.etcd import EtcdCluster
from tests.harness.cli import cli

pytestmark = [pytest.mark.etcd]


def test_set_list_delete(etcd_server: EtcdCluster, etcd_prefix: str, tmp_path: Path) -> None:
    r = cli(etcd_server, etcd_prefix, "secret", "set", "tor-md5", stdin="s3cret-x1\n")
    assert (r.returncode, r.stdout) == (0, "secret/tor-md5 created\n"), r.stderr
    f = tmp_path / "pw"
    f.write_text("s3cret-x2\n")
    r = cli(etcd_server, etcd_prefix, "secret", "set", "tor-md5", "-f", str(f))
    assert r.stdout == "secret/tor-md5 configured\n", r.stderr
    r = cli(etcd_server, etcd_prefix, "secret", "list")
    assert r.stdout == "tor-md5\n" and "s3cret" not in r.stdout
    assert cli(etcd_server, etcd_prefix, "secret", "delete", "tor-md5").returncode == 0
    r = cli(etcd_server, etcd_prefix, "secret", "delete", "tor-md5")
    assert (r.returncode, r.stderr) == (1, "meshroute: secret tor-md5 does not exist\n")


@pytest.mark.parametrize(
    ("args", "stdin", "error"),
    [
        (["../x"], "pw", "secret name '../x': letters, digits"),
        (["ok"], 'has"quote', "secret from stdin: only printable ASCII"),
        (["ok"], "x" * 10_000_000, "secret from stdin: longer than 80"),
        (["ok"], "\n", "secret from stdin: empty"),
        (["ok", "-f", "/nonexistent/pw"], None, "secret file /nonexistent/pw: cannot read"),
    ],
)
def test_bad_input(
    etcd_server: EtcdCluster, etcd_prefix: str, args: list[str], stdin: str | None, error: str
) -> None:
    r = cli(etcd_server, etcd_prefix, "secret", "set", *args, stdin=stdin)
    assert r.returncode == 1 and error in r.stderr, r.stderr
    assert len(r.stderr.splitlines()) == 1 and "Traceback" not in r.stderr
    if stdin and stdin.strip():
        assert stdin.strip()[:8] not in r.stderr  # never echoed
    r = cli(etcd_server, etcd_prefix, "secret", "list")
    assert r.stdout == ""
