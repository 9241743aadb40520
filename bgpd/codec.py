"""The ExaBGP 5 API codec, both directions, pure.

Decoding: one line ExaBGP writes to its API process (``encoder json``,
``receive { parsed; update; notification; open; }``, ``neighbor-changes``,
acks on, NLRI either compact, ``"10.0.0.0/26"``, or not,
``{"nlri": "10.0.0.0/26"}``) becomes one typed event from ``bgpd.model``. A line that is not
understood becomes ``MalformedLine`` with the reason; decoding never raises.

Encoding: typed commands become ExaBGP API text, one command a line;
``encode_bulk`` groups announcements with equal attributes into
``announce attributes ... nlri P1 P2 ...`` lines. ``parse_command`` reads the
single-route text back (for round-trip tests and logs).

Formats were captured from ExaBGP 5.0.15 talking to BIRD 2 and GoBGP; see
tests/fixtures/exabgp/ and tests/interop/capture_exabgp.py.
"""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterable, Sequence
from typing import Any

from netaddr import AddrFormatError, IPAddress, IPNetwork

from bgpd.model import (
    AckEvent,
    Announce,
    Command,
    EorEvent,
    Event,
    ExabgpNotice,
    MalformedLine,
    NotificationEvent,
    OpenEvent,
    Origin,
    PathAttrs,
    RouteRefresh,
    SendEor,
    SessionState,
    StateEvent,
    Teardown,
    UpdateEvent,
    Withdraw,
)

FAMILIES = ("ipv4 unicast", "ipv6 unicast")
BULK_CHUNK = 500  # prefixes per "announce attributes ... nlri" line

_STATES = {
    "up": SessionState.ESTABLISHED,
    "down": SessionState.DOWN,
    "connected": SessionState.CONNECT,
}
_ORIGINS = {"igp": Origin.IGP, "egp": Origin.EGP, "incomplete": Origin.INCOMPLETE}
_MAX_LOGGED = 300  # characters of a bad line kept in MalformedLine
# plain-text answers ExaBGP writes before acking these API commands
_EXABGP_TEXT = frozenset({"reload in progress", "restart in progress", "shutdown in progress"})


class _Bad(Exception):
    """Internal: the line is not what we expect; the message is the reason."""


# ---- decoding ----------------------------------------------------------------


def decode_line(line: str | bytes) -> Event:
    """One ExaBGP output line -> one event. Never raises."""
    try:
        text = line.decode("utf-8") if isinstance(line, bytes) else line
    except UnicodeDecodeError:
        return MalformedLine(repr(line[:_MAX_LOGGED]), "not UTF-8")
    s = text.strip()
    if s == "done":
        return AckEvent(True)
    if s == "error" or s.startswith("error "):
        return AckEvent(False, s[5:].strip())
    if s in _EXABGP_TEXT:
        return ExabgpNotice(s)
    try:
        msg = json.loads(s)
    except (ValueError, RecursionError):
        return MalformedLine(s[:_MAX_LOGGED], "not JSON and not an ack")
    try:
        return _decode_message(msg)
    except _Bad as e:
        return MalformedLine(s[:_MAX_LOGGED], str(e))
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, AddrFormatError) as e:
        return MalformedLine(s[:_MAX_LOGGED], f"{type(e).__name__}: {e}")


def _obj(v: Any, what: str) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise _Bad(f"{what} is not an object")
    return v


def _int(v: Any, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise _Bad(f"{what} is not an integer")
    return v


def _addr(v: Any, what: str) -> IPAddress:
    if not isinstance(v, str):
        raise _Bad(f"{what} is not an address string")
    try:
        return IPAddress(v)
    except (AddrFormatError, ValueError, TypeError) as e:
        raise _Bad(f"{what}: bad address {v!r}") from e


def _net(v: Any, what: str) -> IPNetwork:
    if not isinstance(v, str) or "/" not in v:
        raise _Bad(f"{what}: bad prefix {v!r}")
    addr, _, plen = v.partition("/")
    if ":" not in addr and plen.isdigit() and len(plen) <= 2:
        # the IPv4 fast path: a full table arrives here 100k times, and
        # netaddr's string parsing (plus .cidr) was most of the decode time
        try:
            ip = int.from_bytes(socket.inet_pton(socket.AF_INET, addr), "big")
        except OSError as e:
            raise _Bad(f"{what}: bad prefix {v!r}") from e
        n = int(plen)
        if n > 32:
            raise _Bad(f"{what}: bad prefix {v!r}")
        mask = (0xFFFFFFFF << (32 - n)) & 0xFFFFFFFF
        return IPNetwork((ip & mask, n), version=4)
    try:
        net = IPNetwork(v)
    except (AddrFormatError, ValueError, TypeError) as e:
        raise _Bad(f"{what}: bad prefix {v!r}") from e
    return net.cidr


def _decode_message(msg: Any) -> Event:
    m = _obj(msg, "message")
    kind = m.get("type")
    if kind == "notification" and not isinstance(m.get("neighbor"), dict):
        text = m.get("notification")
        if not isinstance(text, str):
            raise _Bad(f"ExaBGP notification {text!r}")
        return ExabgpNotice(text[:_MAX_LOGGED])  # e.g. "shutdown"
    nb = _obj(m.get("neighbor"), "neighbor")
    peer = _addr(_obj(nb.get("address"), "neighbor.address").get("peer"), "peer address")
    asn = nb.get("asn")
    peer_as = asn.get("peer") if isinstance(asn, dict) else None
    if kind == "state":
        state = _STATES.get(nb.get("state"))  # type: ignore[arg-type]
        if state is None:
            raise _Bad(f"unknown state {nb.get('state')!r}")
        pa = peer_as if isinstance(peer_as, int) and not isinstance(peer_as, bool) else None
        reason = nb.get("reason", "")
        return StateEvent(peer, pa, state, reason if isinstance(reason, str) else str(reason))
    if kind == "open":
        o = _obj(nb.get("open"), "open")
        direction = nb.get("direction")
        if direction not in ("receive", "send"):
            raise _Bad(f"open direction {direction!r}")
        # the OPEN's own "asn" is AS_TRANS for 4-byte ASes; the neighbour's is real
        their_as = o.get("asn") if direction == "receive" else None
        if isinstance(asn, dict):
            their_as = asn.get("peer") if direction == "receive" else asn.get("local")
        return OpenEvent(
            peer,
            _int(their_as, "open asn"),
            _addr(o.get("router_id"), "open router_id"),
            direction,
        )
    if kind == "notification":
        n = _obj(nb.get("notification"), "notification")
        data = n.get("data", "")
        return NotificationEvent(
            peer,
            _int(n.get("code"), "notification code"),
            _int(n.get("subcode"), "notification subcode"),
            data if isinstance(data, str) else str(data),
        )
    if kind == "update":
        body = _obj(nb.get("message"), "message")
        if "eor" in body:
            eor = _obj(body["eor"], "eor")
            afi, safi = eor.get("afi"), eor.get("safi")
            if not isinstance(afi, str) or not isinstance(safi, str):
                raise _Bad("eor without afi/safi")
            return EorEvent(peer, f"{afi} {safi}")
        upd = _obj(body.get("update"), "update")
        return _decode_update(peer, _int(peer_as, "peer asn"), upd)
    raise _Bad(f"unhandled message type {kind!r}")


def _decode_as_path(v: Any) -> tuple[int, ...]:
    if v is None:
        return ()
    if isinstance(v, list):  # ExaBGP 4 style: flat list (sets as nested lists)
        out: list[int] = []
        for x in v:
            if isinstance(x, list):
                out += [_int(y, "as-path") for y in x]
            else:
                out.append(_int(x, "as-path"))
        return tuple(out)
    segs = _obj(v, "as-path")
    out = []
    for key in sorted(segs, key=lambda k: int(k) if str(k).isdigit() else 0):
        seg = _obj(segs[key], "as-path segment")
        vals = seg.get("value")
        if not isinstance(vals, list):
            raise _Bad("as-path segment value is not a list")
        out += [_int(x, "as-path") for x in vals]
    return tuple(out)


def _decode_attrs(a: dict[str, Any], next_hop: IPAddress) -> PathAttrs:
    origin = _ORIGINS.get(a.get("origin", "igp"))
    if origin is None:
        raise _Bad(f"unknown origin {a.get('origin')!r}")
    comms = a.get("community", [])
    if not isinstance(comms, list):
        raise _Bad("community is not a list")
    communities = []
    for c in comms:
        if not isinstance(c, list) or len(c) != 2:
            raise _Bad(f"community {c!r}")
        communities.append((_int(c[0], "community"), _int(c[1], "community")))
    lp = a.get("local-preference")
    med = a.get("med")
    oid = a.get("originator-id")
    cl = a.get("cluster-list", [])
    if not isinstance(cl, list):
        raise _Bad("cluster-list is not a list")
    return PathAttrs(
        next_hop=next_hop,
        as_path=_decode_as_path(a.get("as-path")),
        origin=origin,
        local_pref=None if lp is None else _int(lp, "local-preference"),
        med=None if med is None else _int(med, "med"),
        communities=tuple(communities),
        originator_id=None if oid is None else _addr(oid, "originator-id"),
        cluster_list=tuple(_addr(x, "cluster-list") for x in cl),
    )


def _decode_update(peer: IPAddress, peer_as: int, upd: dict[str, Any]) -> UpdateEvent:
    attr = _obj(upd.get("attribute", {}), "attribute")
    announced: list[tuple[IPNetwork, PathAttrs]] = []
    withdrawn: list[IPNetwork] = []
    for family, by_nh in _obj(upd.get("announce", {}), "announce").items():
        if family not in FAMILIES:
            continue  # families we never configure; nothing to learn
        hops = _obj(by_nh, f"announce {family}")
        for nh, nlris in hops.items():
            next_hop = _addr(nh, "next-hop")
            if next_hop.is_link_local() and len(hops) > 1:
                # RFC 2545: a peer on the link adds its link-local address
                # after the global one, and ExaBGP lists each prefix under
                # both; the global address is the next hop.
                continue
            attrs = _decode_attrs(attr, next_hop)
            if not isinstance(nlris, list):
                raise _Bad(f"announce {family} {nh} is not a list")
            announced += [(_nlri(item), attrs) for item in nlris]
    for family, nlris in _obj(upd.get("withdraw", {}), "withdraw").items():
        if family not in FAMILIES:
            continue
        if not isinstance(nlris, list):
            raise _Bad(f"withdraw {family} is not a list")
        withdrawn += [_nlri(item) for item in nlris]
    return UpdateEvent(peer, peer_as, tuple(announced), tuple(withdrawn))


def _nlri(item: Any) -> IPNetwork:
    """A prefix as ExaBGP's compact API writes it (a string), or as an object."""
    if isinstance(item, str):
        return _net(item, "nlri")
    return _net(_obj(item, "nlri").get("nlri"), "nlri")


def decode_lines(lines: Iterable[str | bytes]) -> list[Event]:
    return [decode_line(ln) for ln in lines if ln.strip()]


# ---- encoding ----------------------------------------------------------------


def _prefix_nb(neighbor: IPAddress | None) -> str:
    return "" if neighbor is None else f"neighbor {neighbor} "


def _communities(cs: Sequence[tuple[int, int]]) -> str:
    return "[" + " ".join(f"{a}:{b}" for a, b in cs) + "]"


def _attr_text(next_hop: IPAddress | None, cs: Sequence[tuple[int, int]], lp: int | None) -> str:
    parts = [f"next-hop {'self' if next_hop is None else next_hop}"]
    if cs:
        parts.append(f"community {_communities(cs)}")
    if lp is not None:
        parts.append(f"local-preference {lp}")
    return " ".join(parts)


def encode_command(cmd: Command) -> str:
    """One command -> one line of ExaBGP API text (without the newline)."""
    nb = _prefix_nb(cmd.neighbor)
    if isinstance(cmd, Announce):
        attrs = _attr_text(cmd.next_hop, cmd.communities, cmd.local_pref)
        return f"{nb}announce route {cmd.prefix} {attrs}"
    if isinstance(cmd, Withdraw):
        return f"{nb}withdraw route {cmd.prefix}"
    if isinstance(cmd, SendEor):
        return f"{nb}announce eor {cmd.family}"
    if isinstance(cmd, RouteRefresh):
        return f"{nb}announce route-refresh {cmd.family}"
    if isinstance(cmd, Teardown):
        return f"{nb}teardown {cmd.subcode}"
    raise TypeError(f"not a command: {cmd!r}")


def encode_batches(
    cmds: Sequence[Command], chunk: int = BULK_CHUNK
) -> list[tuple[str, tuple[Command, ...]]]:
    """Lines for many commands, each with the commands it carries. Within a
    run of consecutive announcements, those with equal attributes (and the
    same neighbour and address family) share ``announce attributes ... nlri``
    lines of up to ``chunk`` prefixes; within a run of consecutive
    withdrawals, those of one neighbour and family share ``withdraw
    attributes nlri`` lines (ExaBGP finds a route by its prefix alone, and
    acknowledges a line once every prefix in it is handled). Any other
    command is one line, in its place, and runs keep their order, so a
    withdrawal planned before an announcement stays before it."""
    out: list[tuple[str, tuple[Command, ...]]] = []
    run: dict[tuple[object, ...], list[Announce | Withdraw]] = {}
    run_kind: type | None = None

    def flush() -> None:
        for group in run.values():
            c0 = group[0]
            if isinstance(c0, Announce):
                attrs = _attr_text(c0.next_hop, c0.communities, c0.local_pref)
                head = f"{_prefix_nb(c0.neighbor)}announce attributes {attrs} nlri"
            else:
                head = f"{_prefix_nb(c0.neighbor)}withdraw attributes nlri"
            for i in range(0, len(group), chunk):
                part = group[i : i + chunk]
                if len(part) == 1:
                    out.append((encode_command(part[0]), (part[0],)))
                else:
                    out.append((head + " " + " ".join(str(c.prefix) for c in part), tuple(part)))
        run.clear()

    for c in cmds:
        if not isinstance(c, Announce | Withdraw):
            flush()
            out.append((encode_command(c), (c,)))
            continue
        if type(c) is not run_kind:
            flush()
            run_kind = type(c)
        key: tuple[object, ...] = (c.neighbor, c.prefix.version)
        if isinstance(c, Announce):
            key += (c.next_hop, c.communities, c.local_pref)
        run.setdefault(key, []).append(c)
    flush()
    return out


def encode_bulk(cmds: Sequence[Command], chunk: int = BULK_CHUNK) -> list[str]:
    """``encode_batches`` without the bookkeeping."""
    return [line for line, _ in encode_batches(cmds, chunk)]


_ANNOUNCE_TAIL = re.compile(r"^(?:community \[([0-9: ]*)\]\s*)?(?:local-preference (\d+))?$")


def parse_command(text: str) -> Command | None:
    """The single-route commands ``encode_command`` writes, read back; None
    for anything else."""
    tok = text.split()
    neighbor = None
    try:
        if len(tok) >= 2 and tok[0] == "neighbor":
            neighbor = IPAddress(tok[1])
            tok = tok[2:]
        if tok[:2] == ["announce", "eor"] and len(tok) == 4:
            return SendEor(f"{tok[2]} {tok[3]}", neighbor)
        if tok[:2] == ["announce", "route-refresh"] and len(tok) == 4:
            return RouteRefresh(f"{tok[2]} {tok[3]}", neighbor)
        if tok[:1] == ["teardown"] and len(tok) == 2 and neighbor is not None:
            return Teardown(neighbor, int(tok[1]))
        if tok[:2] == ["withdraw", "route"] and len(tok) == 3:
            return Withdraw(IPNetwork(tok[2]), neighbor)
        if tok[:2] == ["announce", "route"] and len(tok) >= 5 and tok[3] == "next-hop":
            prefix = IPNetwork(tok[2])
            nh = None if tok[4] == "self" else IPAddress(tok[4])
            m = _ANNOUNCE_TAIL.match(" ".join(tok[5:]))
            if m is None:
                return None
            cs = tuple(
                (int(a), int(b)) for a, b in (x.split(":", 1) for x in (m.group(1) or "").split())
            )
            lp = None if m.group(2) is None else int(m.group(2))
            return Announce(prefix, nh, cs, lp, neighbor)
    except (AddrFormatError, ValueError, IndexError):
        return None
    return None
