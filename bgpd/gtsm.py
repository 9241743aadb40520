"""Inbound GTSM (RFC 5082) for the node's BGP peers: owns the nftables table
``inet meshroute_gtsm`` whole (nothing else writes it; the next start
replaces whatever it finds there that it would not have written).

Why a table: ExaBGP 5.0.15 sets the TTL and minimum TTL (``IP_TTL``,
``IP_MINTTL``) only on connections it opens. Its shared listener has
neither, so a peer that connects in is accepted whatever TTL it sends, and
the listener answers with TTL 64, which a GTSM peer drops (its connection
never completes). For each GTSM peer this table:

- ``input``: drops TCP segments to or from port 179 from the peer's address
  whose TTL (IPv6: hop limit) is below ``256 - hops``. A GTSM speaker sends
  255 and each router on the way takes one off, so a peer at most ``hops``
  away arrives with at least ``255 - (hops - 1)`` (RFC 5082 section 3), the
  threshold ExaBGP's ``incoming-ttl`` sets on the sessions it opens;
- ``output``: sets TTL 255 on segments to the peer's port 179 or from ours.

``plan_gtsm`` (desired rules), ``parse_gtsm`` (nft's JSON back into rules)
and ``decide_gtsm_script`` (the ``nft -f`` transaction, or nothing) are pure;
``GtsmTable.apply`` reads the table back, writes only when it differs,
removes the table when no peer needs it, and checks the result.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass

from netaddr import AddrFormatError, IPAddress

TABLE = "meshroute_gtsm"
CHAINS = ("input", "output")
SEND_TTL = 255
PRIORITY = -150  # before the filter tables at 0: a segment that fails GTSM goes first
BGP_PORT = 179
MAX_HOPS = 254
_FAMILY = {4: ("ip", "ttl"), 6: ("ip6", "hoplimit")}


class GtsmError(RuntimeError):
    """nft refused the table or it did not read back as written."""


@dataclass(frozen=True, order=True)
class GtsmRule:
    """``input``: drop TCP from ``address`` with port ``port_field``
    (``dport``: to our port 179, sessions it opened; ``sport``: from its
    port 179, sessions we opened) and a TTL below ``ttl``. ``output``: set
    TTL ``ttl`` (255) on TCP to ``address`` with that port 179."""

    chain: str  # "input" | "output"
    address: IPAddress
    port_field: str
    ttl: int


def min_ttl(hops: int) -> int:
    """The lowest TTL a GTSM peer ``hops`` away can arrive with."""
    if not 1 <= hops <= MAX_HOPS:
        raise ValueError(f"GTSM hops {hops} is not in 1..{MAX_HOPS}")
    return 256 - hops


def plan_gtsm(peers: Mapping[IPAddress, int]) -> frozenset[GtsmRule]:
    """The rules for peers (address -> GTSM hops)."""
    out = set()
    for address, hops in peers.items():
        least = min_ttl(hops)
        for field in ("dport", "sport"):
            out.add(GtsmRule("input", address, field, least))
            out.add(GtsmRule("output", address, field, SEND_TTL))
    return frozenset(out)


def _rule_text(r: GtsmRule) -> str:
    proto, ttl = _FAMILY[r.address.version]
    if r.chain == "input":
        return (
            f"{proto} saddr {r.address} tcp {r.port_field} {BGP_PORT} "
            f"{proto} {ttl} < {r.ttl} counter drop"
        )
    return f"{proto} daddr {r.address} tcp {r.port_field} {BGP_PORT} {proto} {ttl} set {r.ttl}"


def render_gtsm(rules: frozenset[GtsmRule]) -> str:
    """One ``nft -f`` transaction that makes the table exactly ``rules``
    (creating it first so that deleting it cannot fail)."""
    out = [f"table inet {TABLE}", f"delete table inet {TABLE}"]
    if rules:
        out.append(f"table inet {TABLE} {{")
        for chain in CHAINS:
            out += [
                f"  chain {chain} {{",
                f"    type filter hook {chain} priority {PRIORITY}; policy accept;",
                *(f"    {_rule_text(r)}" for r in sorted(rules) if r.chain == chain),
                "  }",
            ]
        out.append("}")
    return "\n".join(out) + "\n"


def _match(e: object) -> tuple[str, str, str, object] | None:
    """(op, protocol, field, value) of a payload match, else None."""
    body = e.get("match") if isinstance(e, dict) and len(e) == 1 else None
    if not isinstance(body, dict):
        return None
    left = body.get("left")
    payload = left.get("payload") if isinstance(left, dict) else None
    if not isinstance(payload, dict):
        return None
    return (
        str(body.get("op")),
        str(payload.get("protocol")),
        str(payload.get("field")),
        body.get("right"),
    )


def _parse_rule(chain: object, expr: object) -> GtsmRule | None:
    """One rule as ``_rule_text`` writes it, else None."""
    if chain not in CHAINS or not isinstance(expr, list) or len(expr) < 3:
        return None
    addr_m, port_m = _match(expr[0]), _match(expr[1])
    if addr_m is None or port_m is None:
        return None
    op, proto, field, addr = addr_m
    try:
        address = IPAddress(str(addr))
    except (AddrFormatError, ValueError):
        return None
    want_proto, want_ttl = _FAMILY[address.version]
    port_field = port_m[2]
    if (
        (op, proto, field) != ("==", want_proto, "saddr" if chain == "input" else "daddr")
        or (port_m[0], port_m[1], port_m[3]) != ("==", "tcp", BGP_PORT)
        or port_field not in ("dport", "sport")
    ):
        return None
    rest = expr[2:]
    if chain == "input":
        ttl_m = _match(rest[0])
        tail = [e for e in rest[1:] if not (isinstance(e, dict) and "counter" in e)]
        if ttl_m is None or ttl_m[:3] != ("<", want_proto, want_ttl) or tail != [{"drop": None}]:
            return None
        ttl = ttl_m[3]
    else:
        mangle = rest[0].get("mangle") if isinstance(rest[0], dict) and len(rest) == 1 else None
        key = mangle.get("key") if isinstance(mangle, dict) else None
        if key != {"payload": {"protocol": want_proto, "field": want_ttl}}:
            return None
        ttl = mangle.get("value")  # type: ignore[union-attr]
    if not isinstance(ttl, int) or isinstance(ttl, bool):
        return None
    return GtsmRule(str(chain), address, port_field, ttl)


def parse_gtsm(doc: object) -> frozenset[GtsmRule] | None:
    """The rules in ``nft -j list table inet meshroute_gtsm``; None when the
    table holds anything ``render_gtsm`` would not write (it gets replaced)."""
    items = doc.get("nftables") if isinstance(doc, dict) else None
    if not isinstance(items, list):
        return None
    rules: set[GtsmRule] = set()
    chains: set[str] = set()
    for item in items:
        if not isinstance(item, dict):
            return None
        if "chain" in item:
            c = item["chain"]
            if not isinstance(c, dict):
                return None
            name = c.get("name")
            got = tuple(c.get(k) for k in ("type", "hook", "prio", "policy"))
            if name not in CHAINS or name in chains or got != ("filter", name, PRIORITY, "accept"):
                return None
            chains.add(str(name))
        elif "rule" in item:
            r = item["rule"]
            rule = _parse_rule(r.get("chain"), r.get("expr")) if isinstance(r, dict) else None
            if rule is None or rule in rules:
                return None
            rules.add(rule)
        elif not ({"metainfo", "table"} & set(item)):
            return None  # a set, a map, a flowtable: not ours
    if chains != set(CHAINS):
        return None
    return frozenset(rules)


def decide_gtsm_script(
    desired: frozenset[GtsmRule], present: bool, actual: frozenset[GtsmRule] | None
) -> str | None:
    """The transaction to run, or None when the table is already right
    (``present``: the table exists; ``actual``: its rules, None if not ours)."""
    if not desired:
        return render_gtsm(desired) if present else None
    if present and actual == desired:
        return None
    return render_gtsm(desired)


class GtsmTable:
    """The table in the node's network namespace (``wrap``: e.g.
    ``ip netns exec NAME``). Blocking: call it from a thread."""

    def __init__(self, wrap: tuple[str, ...] = (), nft: str = "nft") -> None:
        self._argv = (*wrap, nft)

    def _nft(self, *args: str, script: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self._argv, *args], input=script, capture_output=True, text=True, timeout=30
        )

    def read(self) -> tuple[bool, frozenset[GtsmRule] | None]:
        """(present, rules): rules is None when the table is not ours as written."""
        p = self._nft("-j", "list", "table", "inet", TABLE)
        if p.returncode != 0:
            if "No such file or directory" in p.stderr:
                return False, frozenset()
            raise GtsmError(f"nft list table inet {TABLE}: {p.stderr.strip()[:200]}")
        try:
            return True, parse_gtsm(json.loads(p.stdout))
        except ValueError:
            return True, None

    def apply(self, desired: frozenset[GtsmRule]) -> bool:
        """Make the table ``desired``; True when it had to be written."""
        present, actual = self.read()
        script = decide_gtsm_script(desired, present, actual)
        if script is None:
            return False
        p = self._nft("-f", "-", script=script)
        if p.returncode != 0:
            raise GtsmError(f"nft -f (table inet {TABLE}): {p.stderr.strip()[:200]}")
        present, actual = self.read()
        if (present, actual) != (bool(desired), desired if desired else frozenset()):
            raise GtsmError(f"table inet {TABLE} did not read back as written")
        return True
