"""From desired and actual ``inet meshroute`` to one ``nft -f`` script that
changes only what differs (``plan_nft_script``), and the kernel's JSON back
to a ``TableState`` (``parse_table_json``). Pure.

Order inside the script matters to nft (a chain cannot be deleted while a
rule or map element still jumps to it; an interval set refuses an element
overlapping one that the transaction deletes only later), so a script goes:
declare new sets, maps and chains; delete stale set elements, then add new
ones; rewrite changed chains; swap changed map elements; empty the chains no
longer wanted; delete the sets and maps no longer wanted (a map's elements
may still jump to those chains); delete the chains. When the kernel's table
has a shape this cannot morph (a base chain on another hook, a set of another
type), the script deletes and re-creates the table whole, still in one
transaction.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from netaddr import AddrFormatError, IPAddress, IPNetwork

from felix_lite.nft_model import (
    FAMILY,
    TABLE,
    BaseHook,
    ChainState,
    NftChain,
    NftSet,
    RuleCounter,
    Ruleset,
    TableState,
)

T = f"{FAMILY} {TABLE}"
_CHUNK = 2000  # elements per statement


class NftJsonError(ValueError):
    """``nft -j`` printed something this reader does not understand."""


def _declare_set(s: NftSet) -> str:
    if s.is_map:
        return f"add map {T} {s.name} {{ type {s.type} ; }}"
    flags = " flags interval ;" if s.interval else ""
    return f"add set {T} {s.name} {{ type {s.type} ;{flags} }}"


def _declare_chain(c: NftChain) -> str:
    if c.hook is None:
        return f"add chain {T} {c.name}"
    h = c.hook
    return (
        f"add chain {T} {c.name} {{ type {h.type} hook {h.hook} priority {h.priority} ;"
        f" policy {h.policy} ; }}"
    )


def _elements(verb: str, name: str, elements: Iterable[str]) -> list[str]:
    items = sorted(elements)
    return [
        f"{verb} element {T} {name} {{ {', '.join(items[i : i + _CHUNK])} }}"
        for i in range(0, len(items), _CHUNK)
    ]


def _map_key(element: str) -> str:
    return element.split(" : ", 1)[0]


def _fill_chain(c: NftChain) -> list[str]:
    return [f'add rule {T} {c.name} {r.text} comment "{r.comment}"' for r in c.rules]


def plan_full_script(desired: Ruleset) -> list[str]:
    lines = [f"add table {T}"]
    lines += [_declare_set(s) for s in desired.sets.values()]
    lines += [_declare_chain(c) for c in desired.chains.values()]
    for s in desired.sets.values():
        lines += _elements("add", s.name, s.elements)
    for c in desired.chains.values():
        lines += _fill_chain(c)
    return lines


def _reshaped(desired: Ruleset, actual: TableState) -> bool:
    for name, s in desired.sets.items():
        a = actual.sets.get(name)
        if a is not None and a is not s and a.shape != s.shape:
            return True
    for name, c in desired.chains.items():
        ac = actual.chains.get(name)
        if ac is not None and ac is not c.state and ac.hook != c.hook:
            return True
    return False


def plan_nft_script(desired: Ruleset, actual: TableState | None) -> list[str]:
    """Statements taking the kernel from ``actual`` (None: no table) to
    ``desired``; empty when they are equal."""
    if actual is None:
        return plan_full_script(desired)
    if _reshaped(desired, actual):
        return [f"delete table {T}", *plan_full_script(desired)]
    new_sets = [s for n, s in desired.sets.items() if n not in actual.sets]
    new_chains: list[NftChain] = []
    changed: list[NftChain] = []
    for n, c in desired.chains.items():
        ac = actual.chains.get(n)
        if ac is None:
            new_chains.append(c)
        elif ac is not c.state and ac.rule_ids != c.rule_ids:
            changed.append(c)
    lines = [_declare_set(s) for s in new_sets] + [_declare_chain(c) for c in new_chains]
    map_deletes: list[str] = []
    for name, s in desired.sets.items():
        if actual.sets.get(name) is s:
            continue  # the very value the last pass applied
        have = actual.sets[name].elements if name in actual.sets else frozenset()
        if s.is_map:
            stale = have - s.elements
            if stale:
                map_deletes += _elements("delete", name, (_map_key(e) for e in stale))
            continue
        lines += _elements("delete", name, have - s.elements)
        lines += _elements("add", name, s.elements - have)
    for c in changed:
        lines += [f"flush chain {T} {c.name}", *_fill_chain(c)]
    for c in new_chains:
        lines += _fill_chain(c)
    lines += map_deletes
    for name, s in desired.sets.items():
        if s.is_map and actual.sets.get(name) is not s:
            have = actual.sets[name].elements if name in actual.sets else frozenset()
            lines += _elements("add", name, s.elements - have)
    gone_chains = [n for n in actual.chains if n not in desired.chains]
    lines += [f"flush chain {T} {n}" for n in gone_chains]
    # a map going away still jumps to chains going away: the map first
    for name, s in actual.sets.items():
        if name not in desired.sets:
            lines.append(f"delete {'map' if s.is_map else 'set'} {T} {name}")
    lines += [f"delete chain {T} {n}" for n in gone_chains]
    return lines


# ---- reading the kernel's table back ---------------------------------------


def _elem_text(e: Any, interval: bool) -> str:
    if isinstance(e, dict) and "elem" in e:  # an element with its own options
        return _elem_text(e["elem"]["val"], interval)
    if isinstance(e, list) and len(e) == 2:  # a map element: [key, verdict]
        key, verdict = e
        if not isinstance(verdict, dict) or len(verdict) != 1:
            raise NftJsonError(f"unknown map element {e!r:.80}")
        ((kind, arg),) = verdict.items()
        target = f" {arg['target']}" if isinstance(arg, dict) and "target" in arg else ""
        # interface names are quoted in the ruleset's text; concatenations are not
        shown = f'"{key}"' if isinstance(key, str) else _elem_text(key, False)
        return f"{shown} : {kind}{target}"
    if isinstance(e, dict) and "concat" in e:
        return " . ".join(_elem_text(x, False) for x in e["concat"])
    if isinstance(e, dict) and "prefix" in e:
        return str(IPNetwork(f"{e['prefix']['addr']}/{e['prefix']['len']}"))
    if isinstance(e, dict) and "range" in e:
        lo, hi = e["range"]
        return f"{lo}-{hi}"
    if isinstance(e, int):
        return str(e)
    if isinstance(e, str):
        try:
            ip = IPAddress(e)
        except (AddrFormatError, ValueError, TypeError):
            return e
        return str(IPNetwork(f"{ip}/{ip.netmask_bits()}")) if interval else str(ip)
    raise NftJsonError(f"unknown set element {e!r:.80}")


def _set_state(o: dict[str, Any], is_map: bool) -> NftSet:
    t = o["type"]
    type_ = " . ".join(t) if isinstance(t, list) else str(t)
    if is_map:
        type_ = f"{type_} : {o['map']}"
    interval = "interval" in o.get("flags", [])
    elements = frozenset(_elem_text(e, interval) for e in o.get("elem", []))
    return NftSet(o["name"], type_, interval, elements)


def parse_table_json(text: str) -> TableState | None:
    """The table in ``nft -j list table inet meshroute`` output; None when
    the output holds no such table."""
    try:
        items = json.loads(text)["nftables"]
    except (ValueError, KeyError, TypeError) as e:
        raise NftJsonError(f"not nft JSON: {text[:80]!r}") from e
    found = False
    sets: dict[str, NftSet] = {}
    hooks: dict[str, BaseHook | None] = {}
    rules: dict[str, list[str]] = {}
    counters: list[RuleCounter] = []
    for item in items:
        ((kind, o),) = item.items()
        if not isinstance(o, dict) or o.get("family", FAMILY) != FAMILY:
            continue
        if kind == "table" and o.get("name") == TABLE:
            found = True
        elif o.get("table") != TABLE:
            continue
        elif kind in ("set", "map"):
            s = _set_state(o, kind == "map")
            sets[s.name] = s
        elif kind == "chain":
            hook = None
            if "hook" in o:
                hook = BaseHook(o["type"], o["hook"], int(o["prio"]), o.get("policy", "accept"))
            hooks[o["name"]] = hook
            rules.setdefault(o["name"], [])
        elif kind == "rule":
            comment = o.get("comment", "")
            rules.setdefault(o["chain"], []).append(comment.split(" ", 1)[0])
            for ex in o.get("expr", []):
                if isinstance(ex, dict) and "counter" in ex and isinstance(ex["counter"], dict):
                    c = ex["counter"]
                    label = comment.split(" ", 1)[1] if " " in comment else comment
                    counters.append(
                        RuleCounter(o["chain"], label, int(c["packets"]), int(c["bytes"]))
                    )
    if not found:
        return None
    chains = {n: ChainState(n, tuple(rules.get(n, [])), h) for n, h in hooks.items()}
    return TableState(sets, chains, tuple(counters))
