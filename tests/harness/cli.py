"""Running the ``meshroute`` CLI as an operator would: a fresh process,
etcd and the cluster prefix from the environment."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from lab.etcd import EtcdCluster

REPO = Path(__file__).resolve().parents[2]


def cli(
    server: EtcdCluster | str, prefix: str, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``meshroute ARGS`` against ``server`` (a cluster or host:port)."""
    endpoint = server if isinstance(server, str) else server.endpoint
    env = {**os.environ, "MESHROUTE_ETCD": endpoint, "MESHROUTE_PREFIX": prefix}
    return subprocess.run(
        [sys.executable, "-m", "meshroute.cli", *args],
        input=stdin,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
