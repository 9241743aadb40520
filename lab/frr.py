"""FRR as a router of the lab (the dual-homed topology's second ToR of each
rack) and of the interop tests: its configuration rendered from a small
typed view (pure), the command line of each daemon (``zebra``, ``bfdd``,
``bgpd``; one private directory per router holding its integrated
``frr.conf``, pid files, vty and zebra sockets and logs, so any number run
side by side and none is the system service), and what ``vtysh`` tells of
a running one (BGP neighbours and table, BFD peers), parsed.
Starting the daemons is the caller's: the lab records them by PID
(``lab.build``), the tests own them as child processes."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FRR_LIBEXEC = Path("/usr/lib/frr")
# the daemons drop to this user (root is refused: not in the frrvty group),
# so their directory must be theirs and reachable through its parents
FRR_USER = "frr"
DAEMONS = ("zebra", "bfdd", "bgpd")  # zebra first: the others connect to it


@dataclass(frozen=True)
class FrrNeighbor:
    address: str
    remote_as: int
    prefix_list: str  # the name of the ip prefix-list applied in and out
    passive: bool = False
    bfd_profile: str | None = None
    password: str | None = None
    # the interface the neighbour is on, where several carry our address
    # (unnumbered style): without it bgpd ties the neighbour, and its BFD
    # session, to the first interface holding the session's local address
    interface: str | None = None


@dataclass(frozen=True)
class FrrBfdProfile:
    name: str
    receive_ms: int
    transmit_ms: int
    multiplier: int


@dataclass(frozen=True)
class FrrRouter:
    """What ``render_frr`` makes into ``frr.conf``: one BGP instance with
    eBGP neighbours, each filtered in and out by a prefix list (name ->
    lines ``permit CIDR [ge N le M]``), GR helper on, BFD profiles."""

    hostname: str
    router_id: str
    local_as: int
    neighbors: tuple[FrrNeighbor, ...]
    prefix_lists: tuple[tuple[str, tuple[str, ...]], ...]
    bfd_profiles: tuple[FrrBfdProfile, ...] = ()


def render_frr(r: FrrRouter) -> str:
    lines = ["frr defaults traditional", f"hostname {r.hostname}", "!"]
    for name, entries in r.prefix_lists:
        for seq, entry in enumerate(entries, 1):
            lines.append(f"ip prefix-list {name} seq {seq * 10} {entry}")
        lines += [f"route-map {name} permit 10", f" match ip address prefix-list {name}", "!"]
    if r.bfd_profiles:
        lines.append("bfd")
        for p in r.bfd_profiles:
            lines += [
                f" profile {p.name}",
                f"  receive-interval {p.receive_ms}",
                f"  transmit-interval {p.transmit_ms}",
                f"  detect-multiplier {p.multiplier}",
                " !",
            ]
        lines.append("!")
    lines += [
        f"router bgp {r.local_as}",
        f" bgp router-id {r.router_id}",
        " no bgp ebgp-requires-policy",
        " no bgp network import-check",
        # a graceful-restart helper: a restarting node keeps its routes
        " bgp graceful-restart",
    ]
    for n in r.neighbors:
        a = n.address
        lines += [f" neighbor {a} remote-as {n.remote_as}", f" neighbor {a} timers connect 1"]
        if n.passive:
            lines.append(f" neighbor {a} passive")
        if n.bfd_profile is not None:
            lines.append(f" neighbor {a} bfd profile {n.bfd_profile}")
        if n.password is not None:
            lines.append(f" neighbor {a} password {n.password}")
        if n.interface is not None:
            lines.append(f" neighbor {a} update-source {n.interface}")
    lines.append(" address-family ipv4 unicast")
    for n in r.neighbors:
        lines += [
            f"  neighbor {n.address} route-map {n.prefix_list} in",
            f"  neighbor {n.address} route-map {n.prefix_list} out",
        ]
    lines += [" exit-address-family", "!"]
    return "\n".join(lines) + "\n"


def daemon_argv(daemon: str, workdir: Path, user: str = FRR_USER) -> list[str]:
    """One FRR daemon reading ``workdir/frr.conf``, its sockets, pid file
    and log in ``workdir``, in the foreground (the caller starts it inside
    the router's namespace)."""
    argv = [
        str(FRR_LIBEXEC / daemon),
        "-f",
        str(workdir / "frr.conf"),
        "-i",
        str(workdir / f"{daemon}.pid"),
        "--vty_socket",
        str(workdir),
        "-z",
        str(workdir / "zserv.api"),
        "-u",
        user,
        "-g",
        user,
        "--log",
        f"file:{workdir / (daemon + '.log')}",
        "--log-level",
        "debug",
        "-P",
        "0",
    ]
    if daemon == "bfdd":
        argv += ["--bfdctl", str(workdir / "bfdd.sock")]
    if daemon == "bgpd":
        argv += ["-p", "179", "-l", "0.0.0.0"]
    return argv


def unreachable_parent(workdir: Path) -> Path | None:
    """The first parent of ``workdir`` that other users (FRR's) cannot
    enter, or None."""
    for p in reversed(workdir.resolve().parents):
        if not p.stat().st_mode & 0o001:
            return p
    return None


def vty_ready(workdir: Path, daemon: str) -> bool:
    return (workdir / f"{daemon}.vty").exists()


def vtysh(workdir: Path, daemon: str, *commands: str, check: bool = False) -> str:
    argv = ["vtysh", "--vty_socket", str(workdir), "-d", daemon]
    for c in commands:
        argv += ["-c", c]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if check and p.returncode != 0:
        raise RuntimeError(f"vtysh {commands}: {p.stdout.strip()} {p.stderr.strip()}")
    return p.stdout


def _json(text: str) -> Any:
    try:
        return json.loads(text or "null")
    except ValueError:
        return None


def bgp_neighbors(workdir: Path) -> dict[str, dict[str, Any]]:
    """bgpd's neighbours by address (``show bgp neighbors json``)."""
    got = _json(vtysh(workdir, "bgpd", "show bgp neighbors json"))
    if not isinstance(got, dict):
        return {}
    return {a: n for a, n in got.items() if isinstance(n, dict)}


def bgp_routes(workdir: Path) -> set[str]:
    """Prefixes in bgpd's IPv4 table."""
    got = _json(vtysh(workdir, "bgpd", "show bgp ipv4 unicast json"))
    return set(got.get("routes", {})) if isinstance(got, dict) else set()


def bfd_peers(workdir: Path) -> list[dict[str, Any]]:
    got = _json(vtysh(workdir, "bfdd", "show bfd peers json"))
    return [p for p in got if isinstance(p, dict)] if isinstance(got, list) else []
