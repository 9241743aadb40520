"""The Quadlet units (configs/systemd/*.container), checked as text: every
[Container] key is one podman 4.5 (the oldest Quadlet the units claim)
documents in podman-systemd.unit(5), the service stays Type=notify with a
watchdog, and the capabilities are the ones the images need. Quadlet's own
generator (Debian 13's) turns them into services and the smoke test runs
those (tests/e2e/test_images.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNITS = sorted((REPO / "configs" / "systemd").glob("*.container"))
# [Container] keys of podman 4.5 (the first release with PodmanArgs)
QUADLET_4_5 = set(
    [
        "AddCapability",
        "AddDevice",
        "Annotation",
        "ContainerName",
        "DropCapability",
        "Environment",
        "EnvironmentFile",
        "EnvironmentHost",
        "Exec",
        "ExposeHostPort",
        "Group",
        "HealthCmd",
        "HealthInterval",
        "HealthOnFailure",
        "HealthRetries",
        "HealthStartPeriod",
        "HealthStartupCmd",
        "HealthStartupInterval",
        "HealthStartupRetries",
        "HealthStartupSuccess",
        "HealthStartupTimeout",
        "HealthTimeout",
        "Image",
        "IP",
        "Label",
        "LogDriver",
        "Mount",
        "Network",
        "NoNewPrivileges",
        "Rootfs",
        "Notify",
        "PodmanArgs",
        "PublishPort",
        "ReadOnly",
        "RunInit",
        "SeccompProfile",
        "SecurityLabelDisable",
        "SecurityLabelFileType",
        "SecurityLabelLevel",
        "SecurityLabelType",
        "Timezone",
        "Tmpfs",
        "User",
        "UserNS",
        "VolatileTmp",
        "Volume",
    ]
)


def sections(path: Path) -> dict[str, list[tuple[str, str]]]:
    """systemd's syntax: repeated keys allowed, so no configparser."""
    out: dict[str, list[tuple[str, str]]] = {}
    current = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1]
            out.setdefault(current, [])
            continue
        key, sep, value = line.partition("=")
        assert sep and current, f"{path.name}: {raw!r}"
        out[current].append((key.strip(), value.strip()))
    return out


def test_both_images_have_a_unit() -> None:
    assert [u.name for u in UNITS] == ["meshroute-node.container", "meshroute-reflector.container"]


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_unit_uses_only_quadlet_keys_and_stays_notify(unit: Path) -> None:
    s = sections(unit)
    assert set(s) == {"Unit", "Container", "Service", "Install"}
    container = dict(s["Container"])
    assert {k for k, _ in s["Container"]} <= QUADLET_4_5
    assert container["Notify"] == "true"
    assert container["PodmanArgs"] == "--env=WATCHDOG_USEC"
    assert container["Network"] == "host"
    assert container["DropCapability"] == "all"
    assert dict(s["Service"])["WatchdogSec"]
    kind = "node" if "node" in unit.name else "reflector"
    assert container["Image"] == f"localhost/meshroute-{kind}:latest"
    assert container["Exec"] == f"meshroute {kind} --config /etc/meshroute/{kind}.yaml"
    caps = set(container["AddCapability"].split())
    want = {"CAP_NET_BIND_SERVICE"} | (
        {"CAP_NET_ADMIN", "CAP_NET_RAW"} if kind == "node" else set()
    )
    assert caps == want
