"""ExaBGP config rendering: golden files (tests/fixtures/exabgp/*.conf; set
UPDATE_GOLDEN=1 to rewrite them), ExaBGP's own parser accepts them, and
values ExaBGP cannot take fail with errors naming the peer and the field."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from netaddr import IPAddress

from bgpd.exabgp_config import (
    ConfigError,
    ExabgpConfig,
    NeighborConfig,
    render,
    render_env,
    validate,
)

FIX = Path(__file__).parent.parent / "fixtures" / "exabgp"
RUN = ("/usr/bin/python3", "-m", "bgpd.relay", "--socket", "/run/meshroute/exabgp.sock")

MESH = ExabgpConfig(
    router_id=IPAddress("192.0.2.1"),
    local_as=64512,
    api_run=RUN,
    neighbors=(
        NeighborConfig(IPAddress("192.0.2.2"), 64512, IPAddress("192.0.2.1")),
        NeighborConfig(
            IPAddress("192.0.2.3"), 64512, IPAddress("192.0.2.1"), passive=True, hold_time=30
        ),
    ),
)
FULL = ExabgpConfig(
    router_id=IPAddress("192.0.2.1"),
    local_as=4200000001,
    api_run=RUN,
    listen=(IPAddress("192.0.2.1"), 179),
    adj_rib_in=True,
    neighbors=(
        NeighborConfig(
            IPAddress("198.51.100.1"),
            65001,
            IPAddress("198.51.100.2"),
            password="s3cret pass; {x} #1",
            ttl_security=1,
            hold_time=9,
            graceful_restart=300,
            description="tor-a",
        ),
        NeighborConfig(
            IPAddress("2001:db8::1"),
            65001,
            IPAddress("2001:db8::2"),
            ipv4=False,
            ipv6=True,
            graceful_restart=None,
            password="deadbeef",
            connect_port=1179,
        ),
    ),
)
EMPTY = ExabgpConfig(router_id=IPAddress("192.0.2.1"), local_as=64512, api_run=RUN, neighbors=())


@pytest.mark.parametrize("name,cfg", [("mesh", MESH), ("full", FULL), ("empty", EMPTY)])
def test_golden(name: str, cfg: ExabgpConfig) -> None:
    path = FIX / f"{name}.conf"
    text = render(cfg)
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text()


@pytest.mark.parametrize("name", ["mesh", "full", "empty"])
def test_exabgp_parses_the_golden_files(name: str, tmp_path: Path) -> None:
    exabgp = Path(sys.executable).parent / "exabgp"
    p = subprocess.run(
        [str(exabgp), "validate", "-n", str(FIX / f"{name}.conf")],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "exabgp_log_destination": "stdout"},
    )
    assert p.returncode == 0, p.stdout + p.stderr


def test_exabgp_rejects_a_broken_file(tmp_path: Path) -> None:
    """The check above can fail: ExaBGP's validator refuses a bad value."""
    bad = render(MESH).replace("hold-time 90", "hold-time 2")
    (tmp_path / "bad.conf").write_text(bad)
    p = subprocess.run(
        [str(Path(sys.executable).parent / "exabgp"), "validate", "-n", str(tmp_path / "bad.conf")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode != 0


def nb(**kw: object) -> ExabgpConfig:
    n = replace(MESH.neighbors[0], **kw)  # type: ignore[arg-type]
    return replace(MESH, neighbors=(n,))


@pytest.mark.parametrize(
    "cfg,words",
    [
        (nb(password='has"quote'), ["192.0.2.2", "password", "character 4", "quote"]),
        (nb(password="back\\slash"), ["192.0.2.2", "password"]),
        (nb(password="x" * 81), ["192.0.2.2", "password", "80"]),
        (nb(password=""), ["192.0.2.2", "password", "empty"]),
        (nb(password="pässword"), ["192.0.2.2", "password", "ASCII"]),
        (nb(password="tab\there"), ["192.0.2.2", "password", "ASCII"]),
        (nb(hold_time=2), ["192.0.2.2", "hold time"]),
        (nb(hold_time=70000), ["192.0.2.2", "hold time"]),
        (nb(graceful_restart=5000), ["192.0.2.2", "graceful restart"]),
        (nb(ttl_security=0), ["192.0.2.2", "ttl security"]),
        (nb(ttl_security=255), ["192.0.2.2", "ttl security"]),
        (nb(peer_as=0), ["192.0.2.2", "peer AS"]),
        (nb(ipv4=False), ["192.0.2.2", "families"]),
        (nb(local_address=IPAddress("2001:db8::1")), ["192.0.2.2", "local address"]),
        (nb(description='a "b"'), ["192.0.2.2", "description"]),
        (nb(connect_port=0), ["192.0.2.2", "connect port"]),
        (replace(MESH, router_id=IPAddress("2001:db8::1")), ["router id"]),
        (replace(MESH, local_as=2**32), ["local AS"]),
        (replace(MESH, api_run=("/usr/bin/python 3",)), ["api process"]),
        (replace(MESH, api_run=()), ["api process"]),
        (replace(MESH, process_name="a b"), ["process name"]),
        (replace(MESH, listen=(IPAddress("192.0.2.1"), 0)), ["listen port"]),
        (
            replace(MESH, neighbors=(MESH.neighbors[0], MESH.neighbors[0])),
            ["192.0.2.2", "twice"],
        ),
    ],
)
def test_values_exabgp_cannot_take(cfg: ExabgpConfig, words: list[str]) -> None:
    with pytest.raises(ConfigError) as ei:
        validate(cfg)
    for w in words:
        assert w in str(ei.value)
    for n in cfg.neighbors:
        assert not n.password or n.password not in str(ei.value)  # never quoted
    with pytest.raises(ConfigError):
        render(cfg)


def test_edges_that_are_fine() -> None:
    validate(nb(password="x" * 80, hold_time=0, graceful_restart=0, ttl_security=254))
    validate(nb(password=" ~!#$%&'()*+,-./:;<=>?@[]^_`{|}"))


def test_env_listener_or_none() -> None:
    assert render_env(MESH)["exabgp_tcp_bind"] == ""
    env = render_env(FULL, base={"PATH": "/bin"})
    assert env["exabgp_tcp_bind"] == "192.0.2.1" and env["exabgp_tcp_port"] == "179"
    assert env["exabgp_api_cli"] == "false" and env["exabgp_daemon_user"] == "root"
    assert env["PATH"] == "/bin"
