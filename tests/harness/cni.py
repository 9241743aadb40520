"""Running the ``meshroute-cni-ipam`` plugin as the runtime does: a fresh
process with ``CNI_*`` in its environment and the network config on stdin."""

from __future__ import annotations

import asyncio
import json
import os
import selectors
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

VENV_BIN = Path(sys.executable).parent
PLUGIN_NAME = "meshroute-cni-ipam"


def start_ipam_service(
    argv: Sequence[str], ready_within: float = 15, cwd: Path | None = None
) -> subprocess.Popen[str]:
    """Start an IPAM service (``meshroute ipam serve`` and the like) with its
    output piped; return it once it printed its ready line."""
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd)
    assert p.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(p.stdout, selectors.EVENT_READ)
        assert sel.select(timeout=ready_within), "ipam serve printed nothing"
    line = p.stdout.readline()
    assert "ready" in line, (line, p.stderr.read() if p.stderr and p.poll() is not None else "")
    return p


def plugin_argv() -> list[str]:
    """The installed console script (what a runtime finds in CNI_PATH)."""
    script = VENV_BIN / PLUGIN_NAME
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "ipam.cni_plugin"]


def netconf(socket_path: str | os.PathLike[str], version: str = "1.0.0", **ipam: Any) -> dict:
    return {
        "cniVersion": version,
        "name": "meshroute-test",
        "ipam": {"type": PLUGIN_NAME, "socket": str(socket_path), **ipam},
    }


def cni_env(
    command: str,
    container_id: str | None = "c1",
    ifname: str | None = "eth0",
    netns: str | None = "/var/run/netns/none",
    **extra: str,
) -> dict[str, str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CNI_COMMAND": command}
    for k, v in (("CNI_CONTAINERID", container_id), ("CNI_IFNAME", ifname), ("CNI_NETNS", netns)):
        if v is not None:
            env[k] = v
    env["CNI_PATH"] = str(VENV_BIN)
    env.update(extra)
    return env


@dataclass(frozen=True)
class PluginRun:
    rc: int
    out: dict[str, Any] | None
    raw: bytes
    stderr: bytes
    seconds: float


def _parse(out: bytes) -> dict[str, Any] | None:
    try:
        v = json.loads(out) if out.strip() else None
    except ValueError:
        return None
    return v if isinstance(v, dict) else None


def run_plugin(env: Mapping[str, str], stdin: bytes | dict, timeout: float = 20) -> PluginRun:
    data = stdin if isinstance(stdin, bytes) else json.dumps(stdin).encode()
    t = time.monotonic()
    p = subprocess.run(
        plugin_argv(), input=data, env=dict(env), capture_output=True, timeout=timeout
    )
    return PluginRun(p.returncode, _parse(p.stdout), p.stdout, p.stderr, time.monotonic() - t)


async def run_plugin_async(env: Mapping[str, str], stdin: bytes | dict) -> PluginRun:
    """For tests whose service runs on the same event loop."""
    data = stdin if isinstance(stdin, bytes) else json.dumps(stdin).encode()
    t = time.monotonic()
    p = await asyncio.create_subprocess_exec(
        *plugin_argv(),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=dict(env),
    )
    async with asyncio.timeout(20):
        out, err = await p.communicate(data)
    return PluginRun(p.returncode or 0, _parse(out), out, err, time.monotonic() - t)
