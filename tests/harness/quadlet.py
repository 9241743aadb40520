"""Podman Quadlet's generator on our ``.container`` units, and the systemd
service it makes, read the way systemd reads it: the ``[Service]`` keys in
order, command lines with their specifiers (``%t``, ``%N``, ``%n``)
expanded for a given runtime directory.

Quadlet comes from Debian 13's podman package (``scripts/fetch-quadlet``,
run by ``scripts/bootstrap``): Debian 12's podman 4.3 has none."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

from lab.node_rig import REPO

QUADLET = REPO / ".venv" / "libexec" / "quadlet"
_SECTION = re.compile(r"^---(?P<name>[^-].*)---$", re.M)


@dataclass(frozen=True)
class GeneratedService:
    name: str  # e.g. meshroute-reflector.service
    text: str
    service: dict[str, tuple[str, ...]]  # [Service] key -> its values, in order

    def value(self, key: str) -> str:
        (v,) = self.service[key]
        return v

    def commands(self, key: str, runtime_dir: Path) -> list[list[str]]:
        """The command lines of ``key`` (ExecStart, ExecStop, ...) as argv,
        specifiers expanded as systemd's system manager would with
        ``runtime_dir`` as %t; a leading '-' (failure ignored) dropped."""
        unit = self.name.removesuffix(".service")
        table = {"%%": "%", "%t": str(runtime_dir), "%N": unit, "%n": self.name}
        out = []
        for line in self.service.get(key, ()):
            expanded = re.sub(r"%[%tNn]", lambda m: table[m.group(0)], line)
            out.append(shlex.split(expanded.removeprefix("-")))
        return out

    def environment(self) -> dict[str, str]:
        env = {}
        for line in self.service.get("Environment", ()):
            key, _, value = line.partition("=")
            env[key] = value.replace("%n", self.name)
        return env


def parse_service(name: str, text: str) -> GeneratedService:
    service: dict[str, list[str]] = {}
    section = ""
    for line in text.splitlines():
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
        elif section == "Service" and "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            service.setdefault(key, []).append(value)
    return GeneratedService(name, text, {k: tuple(v) for k, v in service.items()})


def generate(units_dir: Path) -> dict[str, GeneratedService]:
    """The services Quadlet makes of the units in ``units_dir``
    (``quadlet -dryrun``: printed, nothing installed)."""
    p = subprocess.run(
        [str(QUADLET), "-dryrun"],
        env={**os.environ, "QUADLET_UNIT_DIRS": str(units_dir)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, f"quadlet refused the units:\n{p.stderr}"
    parts = _SECTION.split(p.stdout)
    # [text before the first, name, body, name, body, ...]
    return {
        name: parse_service(name, body) for name, body in zip(parts[1::2], parts[2::2], strict=True)
    }
