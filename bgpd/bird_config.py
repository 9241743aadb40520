"""BIRD 2 configuration, rendered from a typed frozen view model: the
reflector role (``meshroute reflector``) and the lab's routers (top-of-rack,
the router that joins the racks). Plain values only: no meshroute import.

The view model says what a router does; ``render_bird`` is the only place
that knows BIRD's syntax. Rendering is pure and deterministic (golden-file
tested); ``bird -p -c FILE`` validates the result before BIRD runs it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from netaddr import IPAddress, IPNetwork


class BirdConfigError(ValueError):
    """A view model BIRD would reject or misread."""


@dataclass(frozen=True)
class PrefixRange:
    """``cidr`` and every more specific prefix of length ``low..high``
    (BIRD's ``10.244.0.0/16{26,32}``); without a range, the prefix itself.
    ``high`` defaults to a host route of the prefix's family (/32, /128)."""

    cidr: str
    low: int | None = None
    high: int | None = None

    def render(self) -> str:
        net = IPNetwork(self.cidr)
        if self.low is None and self.high is None:
            return str(net.cidr)
        top = 32 if net.version == 4 else 128
        low = self.low if self.low is not None else net.prefixlen
        high = self.high if self.high is not None else top
        if not net.prefixlen <= low <= high <= top:
            raise BirdConfigError(f"{self.cidr}{{{low},{high}}}: bad length range")
        return f"{net.cidr}{{{low},{high}}}"


@dataclass(frozen=True)
class PrefixFilter:
    """A named BIRD filter accepting only routes inside ``accept``
    (every other route is rejected)."""

    name: str
    accept: tuple[PrefixRange, ...]


@dataclass(frozen=True)
class BfdOptions:
    """BFD on a BGP session (BIRD's per-neighbour ``bfd { ... }``); single-
    or multihop follows the session's own hop mode."""

    min_rx_ms: int = 300
    min_tx_ms: int = 300
    multiplier: int = 3
    passive: bool = False


@dataclass(frozen=True)
class BgpNeighbor:
    name: str  # the BIRD protocol name
    address: str
    peer_as: int
    local_address: str
    import_filter: str  # a PrefixFilter name, or "all" / "none" / "bgp" (BGP-learned only)
    export_filter: str
    passive: bool = False
    password: str | None = field(default=None, repr=False)  # TCP-MD5
    rr_client: bool = False
    hold_time: int = 90
    graceful_restart: bool = True
    graceful_restart_time: int = 120
    # BIRD waits 5 s before connecting, 120 s between attempts and 60-300 s
    # after an error; a lab whose peers restart on purpose wants seconds
    connect_delay: int | None = None
    connect_retry: int | None = None
    error_wait: tuple[int, int] | None = None
    # GTSM (RFC 5082): the peer is at most this many hops away
    ttl_security: int | None = None
    # at most this many prefixes from the peer: "block" drops the excess,
    # "restart" closes the session (and reopens it after error wait)
    import_limit: int | None = None
    import_limit_action: str = "block"
    port: int | None = None  # the BGP port on both ends, when not 179
    bfd: BfdOptions | None = None
    # address families the session carries, each a BIRD channel with the
    # same filters and limit: "ipv4", "ipv6", or both (MP-BGP)
    channels: tuple[str, ...] = ("ipv4",)
    # the IPv6 next hop this router sets on IPv6 routes it sends over an
    # IPv4 session (BIRD's "next hop address"): it has no IPv6 session address
    next_hop_ipv6: str | None = None


@dataclass(frozen=True)
class BirdConfig:
    router_id: str
    local_as: int
    neighbors: tuple[BgpNeighbor, ...]
    filters: tuple[PrefixFilter, ...] = ()
    # connected networks of these interfaces become routes (to export them)
    direct_interfaces: tuple[str, ...] = ()
    # export BGP-learned routes to the namespace's kernel table: a router
    # that forwards pod traffic needs them there
    kernel_export_bgp: bool = False
    # import the kernel's own routes (default route, connected subnets) so a
    # reflector can resolve the next hops of iBGP routes it does not install
    kernel_learn: bool = False
    rr_cluster_id: str | None = None  # for the neighbors marked rr_client
    # the direct and kernel protocols above cover IPv6 too
    ipv6: bool = False
    # prefixes this router originates (blackhole statics, for export only)
    originate: tuple[str, ...] = ()
    log_file: str | None = None
    # "since" columns of ``show protocols`` as "YYYY-MM-DD hh:mm:ss": parseable
    iso_times: bool = False
    header: str = "rendered by bgpd.bird_config; edits are overwritten"


_NAME_OK = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")


def _name(kind: str, name: str) -> str:
    if not name or not set(name) <= _NAME_OK or name[0].isdigit():
        raise BirdConfigError(f"{kind} name {name!r}: letters, digits and _ only")
    return name


def _asn(v: int) -> int:
    if not 1 <= v <= 4294967295:
        raise BirdConfigError(f"AS {v} out of range")
    return v


def _filter_ref(v: str, known: set[str]) -> str:
    if v in ("all", "none"):
        return v
    if v == "bgp":
        return "where source = RTS_BGP"
    if v not in known:
        raise BirdConfigError(f"filter {v!r} is not defined")
    return f"filter {v}"


PASSWORD_RULE = "printable, at most 80 characters, no double quote or backslash"


def password_problem(v: str) -> str | None:
    """Why BIRD cannot take ``v`` as a TCP-MD5 password, or None."""
    if not v.isprintable() or '"' in v or "\\" in v or len(v) > 80:
        return f"BIRD takes passwords {PASSWORD_RULE}"
    return None


def _password(v: str) -> str:
    if password_problem(v) is not None:
        raise BirdConfigError(f"password: {PASSWORD_RULE}")
    return v


def _render_filter(f: PrefixFilter) -> list[str]:
    """One prefix set per address family: BIRD refuses a set that mixes them."""
    out = [f"filter {_name('filter', f.name)} {{"]
    for version in (4, 6):
        ranges = ", ".join(p.render() for p in f.accept if IPNetwork(p.cidr).version == version)
        if ranges:
            out.append(f"  if net ~ [ {ranges} ] then accept;")
    return [*out, "  reject;", "}"]


def _render_neighbor(n: BgpNeighbor, cfg: BirdConfig, filters: set[str]) -> list[str]:
    IPAddress(n.address)
    IPAddress(n.local_address)
    if n.hold_time != 0 and not 3 <= n.hold_time <= 65535:
        raise BirdConfigError(f"{n.name}: hold time {n.hold_time} must be 0 or 3..65535")
    port = ""
    if n.port is not None:
        if not 1 <= n.port <= 65535:
            raise BirdConfigError(f"{n.name}: port {n.port} out of range")
        port = f" port {n.port}"
    out = [
        f"protocol bgp {_name('protocol', n.name)} {{",
        f"  local {n.local_address}{port} as {_asn(cfg.local_as)};",
        f"  neighbor {n.address}{port} as {_asn(n.peer_as)};",
        f"  hold time {n.hold_time};",
    ]
    if n.passive:
        out.append("  passive on;")
    if n.password is not None:
        out.append(f'  password "{_password(n.password)}";')
    if n.rr_client:
        out.append("  rr client;")
        if cfg.rr_cluster_id is not None:
            out.append(f"  rr cluster id {IPAddress(cfg.rr_cluster_id)};")
    if n.connect_delay is not None:
        out.append(f"  connect delay time {n.connect_delay};")
    if n.connect_retry is not None:
        out.append(f"  connect retry time {n.connect_retry};")
    if n.error_wait is not None:
        low, high = n.error_wait
        if not 0 < low <= high:
            raise BirdConfigError(f"{n.name}: error wait {low},{high}: need 0 < low <= high")
        out.append(f"  error wait time {low},{high};")
    if n.ttl_security is not None:
        if not 1 <= n.ttl_security <= 254:
            raise BirdConfigError(f"{n.name}: ttl security {n.ttl_security} must be 1..254 hops")
        out.append("  ttl security on;")
        if n.ttl_security > 1:
            out.append(f"  multihop {n.ttl_security};")
    if n.bfd is not None:
        out.append(_render_bfd(n.name, n.bfd))
    if n.graceful_restart:
        out += ["  graceful restart on;", f"  graceful restart time {n.graceful_restart_time};"]
    else:
        out.append("  graceful restart off;")
    if not n.channels or not set(n.channels) <= {"ipv4", "ipv6"}:
        raise BirdConfigError(f"{n.name}: channels {n.channels}: ipv4, ipv6 or both")
    for channel in n.channels:
        out += [
            f"  {channel} {{",
            f"    import {_filter_ref(n.import_filter, filters)};",
            f"    export {_filter_ref(n.export_filter, filters)};",
        ]
        if n.import_limit is not None:
            if n.import_limit < 1 or n.import_limit_action not in ("block", "restart"):
                raise BirdConfigError(f"{n.name}: import limit needs N >= 1, action block|restart")
            out.append(f"    import limit {n.import_limit} action {n.import_limit_action};")
        if channel == "ipv6" and n.next_hop_ipv6 is not None:
            hop = IPAddress(n.next_hop_ipv6)
            if hop.version != 6:
                raise BirdConfigError(f"{n.name}: IPv6 next hop {hop} is not IPv6")
            out.append(f"    next hop address {hop};")
        out.append("  };")
    out.append("}")
    return out


def _render_bfd(name: str, b: BfdOptions) -> str:
    if not (1 <= b.min_rx_ms <= 60000 and 1 <= b.min_tx_ms <= 60000 and 1 <= b.multiplier <= 255):
        raise BirdConfigError(f"{name}: BFD intervals 1..60000 ms, multiplier 1..255")
    return (
        f"  bfd {{ min rx interval {b.min_rx_ms} ms; min tx interval {b.min_tx_ms} ms;"
        f" multiplier {b.multiplier}; passive {'on' if b.passive else 'off'}; }};"
    )


def render_bird(cfg: BirdConfig) -> str:
    """BIRD 2 configuration text for ``cfg`` (raises BirdConfigError)."""
    IPAddress(cfg.router_id)
    lines = [f"# {cfg.header}"]
    if cfg.log_file is not None:
        lines.append(f'log "{cfg.log_file}" all;')
    if cfg.iso_times:
        lines.append("timeformat protocol iso long;")
    lines += [f"router id {IPAddress(cfg.router_id)};", "", "protocol device {", "}"]
    if any(n.bfd is not None for n in cfg.neighbors):
        lines += ["", "protocol bfd {", "}"]
    families = ("ipv4", "ipv6") if cfg.ipv6 else ("ipv4",)
    if cfg.direct_interfaces:
        names = ", ".join(f'"{i}"' for i in cfg.direct_interfaces)
        lines += ["", "protocol direct {", *(f"  {f};" for f in families)]
        lines += [f"  interface {names};", "}"]
    if cfg.kernel_export_bgp or cfg.kernel_learn:
        export = "where source = RTS_BGP" if cfg.kernel_export_bgp else "none"
        for family in families:  # a kernel protocol has one channel
            lines += ["", "protocol kernel {"]
            if cfg.kernel_learn:
                lines.append("  learn;")
            lines += [
                f"  {family} {{",
                f"    import {'all' if cfg.kernel_learn else 'none'};",
                f"    export {export};",
                "  };",
                "}",
            ]
    if cfg.originate:
        lines += ["", "protocol static {", "  ipv4;"]
        lines += [f"  route {IPNetwork(p).cidr} blackhole;" for p in cfg.originate]
        lines.append("}")
    filter_names = {f.name for f in cfg.filters}
    if len(filter_names) != len(cfg.filters):
        raise BirdConfigError("filter names must be unique")
    for f in cfg.filters:
        lines += ["", *_render_filter(f)]
    seen: set[str] = set()
    for n in cfg.neighbors:
        if n.name in seen:
            raise BirdConfigError(f"protocol {n.name!r} defined twice")
        seen.add(n.name)
        lines += ["", *_render_neighbor(n, cfg, filter_names)]
    return "\n".join(lines) + "\n"
