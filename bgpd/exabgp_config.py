"""ExaBGP 5's configuration as a typed view model: validation with errors that
name the peer and the field, rendering to config text, and the environment
ExaBGP takes its process-wide settings from (listen address and port, user,
logging). Pure: nothing here starts or reads anything."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from netaddr import IPAddress

MAX_MD5_LEN = 80  # TCP_MD5SIG_MAXKEYLEN in the Linux kernel
MAX_HOLD_TIME = 65535
MIN_NONZERO_HOLD_TIME = 3
MAX_GR_TIME = 4095  # 12-bit field of the graceful-restart capability
MAX_AS = 4294967295
MAX_TTL_HOPS = 254
OPEN_WAIT_S = 15

# Anything ExaBGP's tokeniser treats as syntax, outside quotes; the api
# process line is split on whitespace by ExaBGP itself.
_UNSAFE_RUN = re.compile(r"[\s;{}\[\]#\"',]")
_PROCESS_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")


class ConfigError(ValueError):
    """A value ExaBGP cannot take; the message names the peer and the field."""


@dataclass(frozen=True)
class NeighborConfig:
    address: IPAddress
    peer_as: int
    local_address: IPAddress | None = None
    # TCP-MD5; printable ASCII, no quote or backslash; never in a repr or message
    password: str | None = field(default=None, repr=False)
    # GTSM (RFC 5082) as Calico's ttlSecurity: the peer is at most this many
    # hops away. Rendered as outgoing-ttl 255 and incoming-ttl 256 - hops.
    ttl_security: int | None = None
    hold_time: int = 90
    graceful_restart: int | None = 120  # None: capability not sent
    passive: bool = False
    ipv4: bool = True
    ipv6: bool = False
    connect_port: int | None = None  # None: 179
    description: str = ""


@dataclass(frozen=True)
class ExabgpConfig:
    router_id: IPAddress
    local_as: int
    neighbors: tuple[NeighborConfig, ...]
    api_run: tuple[str, ...]  # argv of the API process (bgpd.relay)
    process_name: str = "meshroute"
    # None: no listener at all (every session outgoing); else address and port
    listen: tuple[IPAddress, int] | None = None
    listen_v6: IPAddress | None = None  # also listen here (same port) for IPv6 peers
    manual_eor: bool = True
    adj_rib_in: bool = False


def _peer(n: NeighborConfig) -> str:
    return f"neighbor {n.address}"


def validate(cfg: ExabgpConfig) -> None:
    """Raise ConfigError for the first value ExaBGP would refuse or misread."""
    if cfg.router_id.version != 4:
        raise ConfigError(f"router id: {cfg.router_id} is not an IPv4 address")
    if not 1 <= cfg.local_as <= MAX_AS:
        raise ConfigError(f"local AS: {cfg.local_as} is not in 1..{MAX_AS}")
    if not _PROCESS_NAME.match(cfg.process_name):
        raise ConfigError(f"api process name: {cfg.process_name!r} is not a plain word")
    if not cfg.api_run:
        raise ConfigError("api process: empty command")
    for arg in cfg.api_run:
        if not arg or _UNSAFE_RUN.search(arg):
            raise ConfigError(
                f"api process: argument {arg!r} is empty or holds whitespace or "
                "ExaBGP syntax characters"
            )
    if cfg.listen is not None:
        _addr, port = cfg.listen
        if not 1 <= port <= 65535:
            raise ConfigError(f"listen port: {port} is not in 1..65535")
    if cfg.listen_v6 is not None and (cfg.listen is None or cfg.listen_v6.version != 6):
        raise ConfigError(
            f"listen IPv6 address: {cfg.listen_v6} needs an IPv4 listener and must be IPv6"
        )
    seen: set[IPAddress] = set()
    for n in cfg.neighbors:
        if n.address in seen:
            raise ConfigError(f"{_peer(n)}: configured twice")
        seen.add(n.address)
        _validate_neighbor(n)


def _validate_neighbor(n: NeighborConfig) -> None:
    p = _peer(n)
    if not 1 <= n.peer_as <= MAX_AS:
        raise ConfigError(f"{p}: peer AS: {n.peer_as} is not in 1..{MAX_AS}")
    if n.local_address is not None and n.local_address.version != n.address.version:
        raise ConfigError(
            f"{p}: local address: {n.local_address} is not of the peer's address family"
        )
    if n.password is not None:
        _validate_password(p, n.password)
    if n.ttl_security is not None and not 1 <= n.ttl_security <= MAX_TTL_HOPS:
        raise ConfigError(f"{p}: ttl security: {n.ttl_security} hops is not in 1..{MAX_TTL_HOPS}")
    if n.hold_time != 0 and not MIN_NONZERO_HOLD_TIME <= n.hold_time <= MAX_HOLD_TIME:
        raise ConfigError(
            f"{p}: hold time: {n.hold_time} must be 0 or in "
            f"{MIN_NONZERO_HOLD_TIME}..{MAX_HOLD_TIME} seconds"
        )
    if n.graceful_restart is not None and not 0 <= n.graceful_restart <= MAX_GR_TIME:
        raise ConfigError(
            f"{p}: graceful restart time: {n.graceful_restart} is not in 0..{MAX_GR_TIME} seconds"
        )
    if not (n.ipv4 or n.ipv6):
        raise ConfigError(f"{p}: families: neither ipv4 nor ipv6 is enabled")
    if n.connect_port is not None and not 1 <= n.connect_port <= 65535:
        raise ConfigError(f"{p}: connect port: {n.connect_port} is not in 1..65535")
    if any(c in n.description for c in '"\\\n\r'):
        raise ConfigError(f"{p}: description: quotes, backslashes and newlines are not allowed")


def _validate_password(p: str, pw: str) -> None:
    if not pw:
        raise ConfigError(f"{p}: password: empty (leave it unset for no TCP-MD5)")
    if len(pw.encode("utf-8")) > MAX_MD5_LEN:
        raise ConfigError(f"{p}: password: longer than {MAX_MD5_LEN} bytes (the kernel's limit)")
    for i, c in enumerate(pw):
        if not (" " <= c <= "~"):
            raise ConfigError(
                f"{p}: password: only printable ASCII is accepted (character {i + 1} is not); "
                "ExaBGP encodes the key as ASCII"
            )
        if c in '"\\':
            raise ConfigError(
                f"{p}: password: character {i + 1} (a quote or backslash) cannot be written"
                " in ExaBGP's configuration syntax"
            )


def _q(s: str) -> str:
    return f'"{s}"'


def render(cfg: ExabgpConfig) -> str:
    """The config text for ``exabgp server``. Validates first."""
    validate(cfg)
    out = [
        "# generated by meshroute (bgpd.exabgp_config); do not edit",
        f"process {cfg.process_name} {{",
        f"    run {' '.join(cfg.api_run)};",
        "    encoder json;",
        "}",
    ]
    for n in cfg.neighbors:
        out.append("")
        out += _render_neighbor(cfg, n)
    return "\n".join(out) + "\n"


def _render_neighbor(cfg: ExabgpConfig, n: NeighborConfig) -> list[str]:
    b = [f"neighbor {n.address} {{"]
    if n.description:
        b.append(f"    description {_q(n.description)};")
    b.append(f"    router-id {cfg.router_id};")
    if n.local_address is not None:
        b.append(f"    local-address {n.local_address};")
    b += [
        f"    local-as {cfg.local_as};",
        f"    peer-as {n.peer_as};",
        f"    hold-time {n.hold_time};",
        f"    passive {'true' if n.passive else 'false'};",
    ]
    if n.connect_port is not None:
        b.append(f"    connect {n.connect_port};")
    if n.password is not None:
        # Without md5-base64 false, ExaBGP reads an all-hex password as
        # unpadded base64 when it decodes, and the keys no longer match.
        b += [f"    md5-password {_q(n.password)};", "    md5-base64 false;"]
    if n.ttl_security is not None:
        b += ["    outgoing-ttl 255;", f"    incoming-ttl {256 - n.ttl_security};"]
    b += [
        f"    manual-eor {'true' if cfg.manual_eor else 'false'};",
        f"    adj-rib-in {'true' if cfg.adj_rib_in else 'false'};",
        "    capability {",
    ]
    if n.graceful_restart is not None:
        b.append(f"        graceful-restart {n.graceful_restart};")
    b += ["        route-refresh;", "    }", "    family {"]
    if n.ipv4:
        b.append("        ipv4 unicast;")
    if n.ipv6:
        b.append("        ipv6 unicast;")
    b += [
        "    }",
        "    api {",
        f"        processes [ {cfg.process_name} ];",
        "        neighbor-changes;",
        "        receive { parsed; update; notification; open; }",
        "    }",
        "}",
    ]
    return b


def render_env(
    cfg: ExabgpConfig, *, log_level: str = "INFO", base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Process-wide settings ExaBGP 5 reads from its environment."""
    env = dict(base or {})
    env.update(
        {
            "exabgp_daemon_user": "root",
            "exabgp_daemon_daemonize": "false",
            # the CLI pipes live in a shared /run/exabgp/; several instances
            # on one host would fight over them
            "exabgp_api_cli": "false",
            "exabgp_api_ack": "true",
            # prefixes as "10.0.0.0/26" rather than {"nlri": "10.0.0.0/26"}:
            # half the JSON, and a string a prefix instead of an object
            "exabgp_api_compact": "true",
            "exabgp_log_destination": "stdout",
            "exabgp_log_level": log_level,
            "exabgp_tcp_bind": _bind(cfg),
            # A session stuck in OPEN exchange (its TTL or TCP-MD5 no longer
            # matching the peer's, changed while it connected) ignores
            # reloads until this runs out (default 60 s)
            "exabgp_bgp_openwait": str(OPEN_WAIT_S),
        }
    )
    if cfg.listen is not None:
        env["exabgp_tcp_port"] = str(cfg.listen[1])
    return env


def _bind(cfg: ExabgpConfig) -> str:
    if cfg.listen is None:
        return ""
    return " ".join(str(a) for a in (cfg.listen[0], cfg.listen_v6) if a is not None)
