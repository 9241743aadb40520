"""BIRD 2 config rendering for the lab: golden files (tests/fixtures/bird/*.conf;
set UPDATE_GOLDEN=1 to rewrite them), BIRD's own parser (``bird -p``) accepts
every router config of every topology, and view models BIRD would reject or
misread are refused before BIRD sees them."""

from __future__ import annotations

import os
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from bgpd.bird_config import (
    BgpNeighbor,
    BirdConfig,
    BirdConfigError,
    PrefixFilter,
    PrefixRange,
    render_bird,
)
from lab.dual_homed import plan_topology
from lab.topology import DUAL_STACK_TOPOLOGIES, TOPOLOGIES, LabParams, plan_lab

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "bird"
RUN = "/run/meshroute-lab"

FULL = BirdConfig(
    router_id="192.0.2.5",
    local_as=64512,
    filters=(
        PrefixFilter("pods", (PrefixRange("10.244.0.0/16", 26, 32),)),
        PrefixFilter("exact", (PrefixRange("192.0.2.0/26"), PrefixRange("192.0.2.64/26"))),
    ),
    neighbors=(
        BgpNeighbor(
            name="client1",
            address="192.0.2.10",
            peer_as=64512,
            local_address="192.0.2.5",
            import_filter="pods",
            export_filter="all",
            passive=True,
            password="s3cret pass",
            rr_client=True,
            hold_time=9,
            graceful_restart_time=30,
            connect_delay=1,
            connect_retry=3,
            error_wait=(1, 5),
        ),
        BgpNeighbor(
            name="rr2",
            address="192.0.2.69",
            peer_as=64512,
            local_address="192.0.2.5",
            import_filter="exact",
            export_filter="none",
            graceful_restart=False,
        ),
    ),
    direct_interfaces=("rack", "uplink"),
    kernel_learn=True,
    rr_cluster_id="244.0.0.1",
    originate=("10.244.7.0/26",),
    log_file="/run/meshroute-lab/rr1/bird.log",
)


def _plan_config(
    topology: str, ns: str, dual_stack: bool = False, transport: str = "IPv6Peers"
) -> BirdConfig:
    params = LabParams(
        topology=topology,  # type: ignore[arg-type]
        run_dir=RUN,
        bgp_password="lab-md5",
        dual_stack=dual_stack,
        ipv6_transport=transport,  # type: ignore[arg-type]
    )
    return next(s.bird for s in plan_lab(params).speakers if s.ns == ns)


CASES = {
    "full": FULL,
    "tor-r1-tor": _plan_config("tor", "r1-tor"),
    "tor-router": _plan_config("tor", "router"),
    "mesh-r2-tor": _plan_config("mesh", "r2-tor"),
    "dual-tor-r1-tor": _plan_config("tor", "r1-tor", dual_stack=True),
    "dual-mesh-router": _plan_config("mesh", "router", dual_stack=True),
    "dual-mp-tor-r1-tor": _plan_config("tor", "r1-tor", True, "MultiProtocol"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden(name: str) -> None:
    text = render_bird(CASES[name])
    path = FIXTURES / f"{name}.conf"
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text()


def _bird_parses(text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    # the log file named in the config must be creatable by the parser run
    text = text.replace(RUN, str(tmp_path))
    conf = tmp_path / "bird.conf"
    conf.write_text(text)
    return subprocess.run(["bird", "-p", "-c", str(conf)], capture_output=True, text=True)


@pytest.mark.parametrize(
    ("topology", "dual_stack", "transport"),
    [(t, False, "IPv6Peers") for t in TOPOLOGIES]
    + [(t, True, tr) for t in DUAL_STACK_TOPOLOGIES for tr in ("IPv6Peers", "MultiProtocol")],
)
def test_bird_accepts_every_router_of_every_topology(
    topology: str, dual_stack: bool, transport: str, tmp_path: Path
) -> None:
    params = LabParams(
        topology=topology,  # type: ignore[arg-type]
        racks=3,
        run_dir=RUN,
        bgp_password="x",
        dual_stack=dual_stack,
        ipv6_transport=transport,  # type: ignore[arg-type]
    )
    plan = plan_topology(params)
    assert plan.speakers
    for sp in plan.speakers:
        p = _bird_parses(render_bird(sp.bird), tmp_path)
        assert p.returncode == 0, f"{sp.ns}: {p.stderr}"


def test_bird_accepts_the_full_config_and_rejects_a_broken_one(tmp_path: Path) -> None:
    assert _bird_parses(render_bird(FULL), tmp_path).returncode == 0
    broken = render_bird(FULL).replace("rr client;", "rr clientt;")
    assert _bird_parses(broken, tmp_path).returncode != 0


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"password": 'a"b'}, "password"),
        ({"password": "x" * 81}, "password"),
        ({"import_filter": "nosuch"}, "nosuch"),
        ({"name": "bad-name"}, "bad-name"),
        ({"name": "1st"}, "1st"),
        ({"peer_as": 0}, "AS 0"),
        ({"hold_time": 2}, "hold time"),
        ({"error_wait": (5, 1)}, "error wait"),
    ],
)
def test_neighbors_bird_would_reject(change: dict, words: str) -> None:
    n = replace(FULL.neighbors[0], **change)
    with pytest.raises(BirdConfigError, match=words):
        render_bird(replace(FULL, neighbors=(n,)))


def test_duplicates_and_bad_ranges_are_refused() -> None:
    with pytest.raises(BirdConfigError, match="twice"):
        render_bird(replace(FULL, neighbors=(FULL.neighbors[0], FULL.neighbors[0])))
    with pytest.raises(BirdConfigError, match="unique"):
        render_bird(replace(FULL, filters=(FULL.filters[0], FULL.filters[0])))
    with pytest.raises(BirdConfigError, match="length range"):
        PrefixRange("10.244.0.0/16", 8, 32).render()
    with pytest.raises(BirdConfigError, match="length range"):
        PrefixRange("fd00:10::/64", 122, 129).render()
    v4_hop = replace(FULL.neighbors[0], channels=("ipv4", "ipv6"), next_hop_ipv6="192.0.2.1")
    with pytest.raises(BirdConfigError, match="not IPv6"):
        render_bird(replace(FULL, neighbors=(v4_hop,)))


def test_ipv6_ranges_reach_host_routes_and_a_filter_keeps_one_set_per_family() -> None:
    assert PrefixRange("fd00:10::/64", 122).render() == "fd00:10::/64{122,128}"
    assert PrefixRange("10.244.0.0/16", 26).render() == "10.244.0.0/16{26,32}"
    mixed = PrefixFilter(
        "pods",
        (
            PrefixRange("10.244.0.0/16", 26),
            PrefixRange("fd00:10::/64", 122),
            PrefixRange("192.0.2.0/26"),
        ),
    )
    text = render_bird(replace(FULL, filters=(mixed,), neighbors=()))
    assert "  if net ~ [ 10.244.0.0/16{26,32}, 192.0.2.0/26 ] then accept;\n" in text
    assert "  if net ~ [ fd00:10::/64{122,128} ] then accept;\n" in text
