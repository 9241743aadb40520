"""Real BGP peers for interop tests and the lab: BIRD 2, GoBGP and FRR
started inside a network namespace the caller created, configured from small
typed specs (or, for FRR, a config file as an operator writes it), queried
through their own CLIs (birdc, gobgp, vtysh), stopped by PID.

Nothing here creates namespaces or links; pass a ``Netns`` from
``lab.netns``.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from lab.netns import Netns
from tests.harness.frr import FrrDaemons


def wait_for(cond: Callable[[], bool], timeout: float, what: str, step: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(step)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


# ---- BIRD 2 ------------------------------------------------------------------


@dataclass(frozen=True)
class BirdNeighbor:
    name: str  # BIRD protocol name, e.g. "exa"
    address: str
    peer_as: int
    local_address: str | None = None
    password: str | None = None
    passive: bool = False
    ipv6: bool = False  # the channel family: ipv6 when True else ipv4
    hold_time: int = 90
    graceful_restart: bool = True
    rr_client: bool = False
    extra: str = ""  # raw lines added inside the protocol block


@dataclass(frozen=True)
class BirdSpec:
    router_id: str
    local_as: int
    neighbors: tuple[BirdNeighbor, ...]
    static4: tuple[str, ...] = ()  # prefixes BIRD originates (blackhole statics)
    static6: tuple[str, ...] = ()
    kernel: bool = False  # export learned routes to the namespace's kernel table
    merge_paths: bool = False  # ... equal BGP paths as one multipath (ECMP) route
    extra: str = ""  # raw top-level lines (e.g. a ``protocol bfd`` block)


def bird_conf(spec: BirdSpec) -> str:
    lines = [
        f"router id {spec.router_id};",
        "protocol device {}",
    ]
    if spec.static4:
        lines.append("protocol static s4 { ipv4;")
        lines += [f"  route {p} blackhole;" for p in spec.static4]
        lines.append("}")
    if spec.static6:
        lines.append("protocol static s6 { ipv6;")
        lines += [f"  route {p} blackhole;" for p in spec.static6]
        lines.append("}")
    if spec.kernel:
        merge = " merge paths on;" if spec.merge_paths else ""
        lines.append(f"protocol kernel k4 {{ ipv4 {{ export all; }};{merge} }}")
    for n in spec.neighbors:
        fam = "ipv6" if n.ipv6 else "ipv4"
        body = [
            f"protocol bgp {n.name} {{",
            f"  local as {spec.local_as};",
            f"  neighbor {n.address} as {n.peer_as};",
            f"  hold time {n.hold_time};",
            f"  graceful restart {'on' if n.graceful_restart else 'off'};",
            "  connect retry time 1;",
            "  error wait time 1, 5;",
        ]
        if n.local_address:
            body.append(f"  source address {n.local_address};")
        if n.password is not None:
            body.append(f'  password "{n.password}";')
        if n.passive:
            body.append("  passive on;")
        if n.rr_client:
            body.append("  rr client;")
        body.append(f"  {fam} {{ import all; export all; next hop self; }};")
        if n.extra:
            body.append(n.extra)
        body.append("}")
        lines += body
    if spec.extra:
        lines.append(spec.extra)
    return "\n".join(lines) + "\n"


@dataclass
class Bird:
    ns: Netns
    workdir: Path
    spec: BirdSpec | str  # a spec, or a whole bird.conf as an operator writes it
    proc: subprocess.Popen[bytes] | None = None

    @property
    def conf(self) -> Path:
        return self.workdir / "bird.conf"

    @property
    def sock(self) -> Path:
        return self.workdir / "bird.ctl"

    def start(self) -> Bird:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.conf.write_text(self.spec if isinstance(self.spec, str) else bird_conf(self.spec))
        with open(self.workdir / "bird.log", "wb") as log:
            self.proc = self.ns.popen(
                ["bird", "-c", str(self.conf), "-s", str(self.sock), "-f"],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for(lambda: self.sock.exists(), 10, "BIRD control socket")
        return self

    def reconfigure(self, spec: BirdSpec) -> None:
        self.spec = spec
        self.conf.write_text(bird_conf(spec))
        self.birdc("configure")

    def birdc(self, cmd: str) -> str:
        p = subprocess.run(
            ["birdc", "-s", str(self.sock), *cmd.split()],
            capture_output=True,
            text=True,
            timeout=30,
        )
        return p.stdout

    def established(self, name: str) -> bool:
        return "Established" in self.birdc(f"show protocols {name}")

    def wait_established(self, name: str, timeout: float = 30) -> None:
        wait_for(lambda: self.established(name), timeout, f"BIRD protocol {name} Established")

    def routes_from(self, name: str) -> set[str]:
        """Prefixes in BIRD's tables learned over protocol ``name``."""
        out = self.birdc(f"show route protocol {name}")
        found = set()
        for line in out.splitlines():
            tok = line.split()
            if tok and "/" in tok[0] and tok[0][0].isalnum():
                found.add(tok[0])
        return found

    def count_from(self, name: str) -> int:
        out = self.birdc(f"show route count protocol {name}")
        for line in out.splitlines():
            tok = line.split()
            if len(tok) >= 2 and tok[1] == "of" and tok[0].isdigit():
                return int(tok[0])
        return 0

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_bird(ns: Netns, workdir: Path, spec: BirdSpec | str) -> Bird:
    return Bird(ns, workdir, spec).start()


# ---- GoBGP -------------------------------------------------------------------


@dataclass(frozen=True)
class GobgpNeighbor:
    address: str
    peer_as: int
    password: str | None = None
    passive: bool = False
    graceful_restart: bool = True


@dataclass(frozen=True)
class GobgpSpec:
    router_id: str
    local_as: int
    neighbors: tuple[GobgpNeighbor, ...]
    listen_port: int = 179
    api_port: int = 50051  # inside the namespace: its own loopback


def gobgp_conf(spec: GobgpSpec) -> str:
    lines = [
        "[global.config]",
        f"  as = {spec.local_as}",
        f'  router-id = "{spec.router_id}"',
        f"  port = {spec.listen_port}",
    ]
    for n in spec.neighbors:
        lines += [
            "[[neighbors]]",
            "  [neighbors.config]",
            f'    neighbor-address = "{n.address}"',
            f"    peer-as = {n.peer_as}",
        ]
        if n.password is not None:
            lines.append(f'    auth-password = "{n.password}"')
        lines += ["  [neighbors.timers.config]", "    connect-retry = 1"]
        if n.passive:
            lines += ["  [neighbors.transport.config]", "    passive-mode = true"]
        if n.graceful_restart:
            lines += [
                "  [neighbors.graceful-restart.config]",
                "    enabled = true",
                "    restart-time = 120",
            ]
        fams = ["ipv4-unicast", "ipv6-unicast"]
        for f in fams:
            lines += [
                "  [[neighbors.afi-safis]]",
                "    [neighbors.afi-safis.config]",
                f'      afi-safi-name = "{f}"',
            ]
            if n.graceful_restart:
                lines += [
                    "    [neighbors.afi-safis.mp-graceful-restart.config]",
                    "      enabled = true",
                ]
    return "\n".join(lines) + "\n"


@dataclass
class Gobgp:
    ns: Netns
    workdir: Path
    spec: GobgpSpec
    proc: subprocess.Popen[bytes] | None = None

    @property
    def conf(self) -> Path:
        return self.workdir / "gobgpd.toml"

    def start(self) -> Gobgp:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.conf.write_text(gobgp_conf(self.spec))
        argv = ["gobgpd", "-f", str(self.conf), "--api-hosts", f"127.0.0.1:{self.spec.api_port}"]
        with open(self.workdir / "gobgpd.log", "wb") as log:
            self.proc = self.ns.popen(
                [*argv, "--pprof-disable", "-p"], stdout=log, stderr=subprocess.STDOUT
            )
        wait_for(lambda: self._cli_ok(), 15, "gobgpd API")
        return self

    def _cli_ok(self) -> bool:
        try:
            self.cli("global")
        except RuntimeError:
            return False
        return True

    def cli(self, *args: str) -> str:
        p = subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                self.ns.name,
                "gobgp",
                "-u",
                "127.0.0.1",
                "-p",
                str(self.spec.api_port),
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if p.returncode != 0:
            raise RuntimeError(f"gobgp {' '.join(args)}: {p.stderr.strip()}")
        return p.stdout

    def neighbor_state(self, address: str) -> str:
        try:
            data = json.loads(self.cli("neighbor", address, "-j"))
        except (RuntimeError, ValueError):
            return ""
        return str(data.get("state", {}).get("session_state", ""))

    def established(self, address: str) -> bool:
        # gobgp -j reports the FSM state as a number (6) or a name, by version
        return self.neighbor_state(address) in ("6", "established", "ESTABLISHED")

    def wait_established(self, address: str, timeout: float = 30) -> None:
        wait_for(lambda: self.established(address), timeout, f"GoBGP neighbor {address}")

    def rib(self, family: str = "ipv4") -> set[str]:
        out = self.cli("global", "rib", "-a", family, "-j")
        try:
            data = json.loads(out) if out.strip() else {}
        except ValueError:
            return set()
        return set(data)

    def add_route(self, prefix: str, *, family: str = "ipv4", extra: Sequence[str] = ()) -> None:
        self.cli("global", "rib", "add", prefix, "-a", family, *extra)

    def del_route(self, prefix: str, *, family: str = "ipv4") -> None:
        self.cli("global", "rib", "del", prefix, "-a", family)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_gobgp(ns: Netns, workdir: Path, spec: GobgpSpec) -> Gobgp:
    return Gobgp(ns, workdir, spec).start()


# ---- FRR ---------------------------------------------------------------------


@dataclass(frozen=True)
class FrrNeighbor:
    address: str
    peer_as: int
    password: str | None = None
    passive: bool = False
    ttl_security: int | None = None  # GTSM hops; None: eBGP sends TTL 1
    hold_time: int = 90
    extra: tuple[str, ...] = ()  # more "neighbor ADDRESS ..." settings, ADDRESS left out


@dataclass(frozen=True)
class FrrSpec:
    router_id: str
    local_as: int
    neighbors: tuple[FrrNeighbor, ...]
    networks: tuple[str, ...] = ()  # prefixes FRR originates (no import check)
    preamble: tuple[str, ...] = ()  # lines before "router bgp" (route-maps, prefix-lists)


def frr_conf(spec: FrrSpec) -> str:
    lines = ["frr defaults traditional", "hostname frr", *spec.preamble]
    lines += [
        f"router bgp {spec.local_as}",
        f" bgp router-id {spec.router_id}",
        " no bgp ebgp-requires-policy",
        " no bgp network import-check",
        " bgp graceful-restart",
    ]
    for n in spec.neighbors:
        a = n.address
        lines += [
            f" neighbor {a} remote-as {n.peer_as}",
            f" neighbor {a} timers {max(1, n.hold_time // 3)} {n.hold_time}",
            f" neighbor {a} timers connect 1",
        ]
        if n.password is not None:
            lines.append(f" neighbor {a} password {n.password}")
        if n.passive:
            lines.append(f" neighbor {a} passive")
        if n.ttl_security is not None:
            lines.append(f" neighbor {a} ttl-security hops {n.ttl_security}")
        lines += [f" neighbor {a} {x}" for x in n.extra]
    if spec.networks:
        lines.append(" address-family ipv4 unicast")
        lines += [f"  network {p}" for p in spec.networks]
        lines.append(" exit-address-family")
    return "\n".join(lines) + "\n"


def start_frr(ns: Netns, spec_or_config: FrrSpec | str) -> FrrDaemons:
    """zebra and bgpd in ``ns``, with this bgpd configuration."""
    config = spec_or_config if isinstance(spec_or_config, str) else frr_conf(spec_or_config)
    return FrrDaemons(ns, config, ("zebra", "bgpd")).start()


# ---- addressing ------------------------------------------------------------


def link(a: Netns, a_if: str, a_addr: str, b: Netns, b_if: str, b_addr: str) -> None:
    """A veth between two of our namespaces with one address (with prefix
    length) on each end."""
    a.ip("link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", b.name)
    for ns, ifname, addr in ((a, a_if, a_addr), (b, b_if, b_addr)):
        # without nodad IPv6 addresses stay "tentative" for ~1 s and bind() fails meanwhile
        ns.ip("addr", "add", addr, "dev", ifname, *(("nodad",) if ":" in addr else ()))
        ns.ip("link", "set", ifname, "up")
