"""Service addresses delivered to pods: the DNAT part of table
``inet meshroute`` (``plan_service_ruleset``, pure), merged by the caller
with the policy compiler's ruleset and applied by the same reconciler.

Shape:

- base chains ``mr_svc_prerouting`` and ``mr_svc_output`` (nat, dstnat
  priority): ``daddr . l4proto . dport`` looked up in the verdict map of
  the family (``mr_svc4``/``mr_svc6``), so a thousand services cost one
  lookup, not a thousand rules;
- per service port a chain ``mrsv_*``: one DNAT that spreads new
  connections over the targets (``numgen random mod N``); conntrack keeps
  every established flow on the target it was given, so rewriting a chain
  when targets change moves only new connections;
- a service this node has no local endpoint for (traffic still arriving
  while routers converge on its withdrawal) is DNATed to the cluster's
  endpoints and marked; ``mr_svc_postrouting`` masquerades marked packets
  so the replies come back through this node to be un-NATed.

Without services the part is empty: the table is the policy compiler's.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from netaddr import IPAddress

from felix_lite.nft_model import BaseHook, NftChain, NftRule, NftSet, Ruleset

PREROUTING = "mr_svc_prerouting"
OUTPUT = "mr_svc_output"
POSTROUTING = "mr_svc_postrouting"
MAPS = {4: "mr_svc4", 6: "mr_svc6"}
MARK_MASQUERADE = 0x40000  # beside the policy compiler's allow/pass bits
DSTNAT, SRCNAT = -100, 100

_ADDR = {4: "ip", 6: "ip6"}
_ADDR_TYPE = {4: "ipv4_addr", 6: "ipv6_addr"}


@dataclass(frozen=True)
class ServicePort:
    protocol: str  # "tcp", "udp" or "sctp"
    port: int
    target_port: int


@dataclass(frozen=True)
class ServiceNat:
    """One service address as this node delivers it."""

    address: IPAddress
    ports: tuple[ServicePort, ...]
    targets: tuple[IPAddress, ...]  # the endpoints new connections go to (not empty)
    masquerade: bool = False  # the targets are other nodes' endpoints


def service_chain(address: IPAddress, port: ServicePort) -> str:
    key = f"{address}\0{port.protocol}\0{port.port}"
    return "mrsv_" + hashlib.sha1(key.encode()).hexdigest()[:12]


def _target(ip: IPAddress, port: int) -> str:
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


def plan_dnat(address_family: int, protocol: str, targets: Iterable[IPAddress], port: int) -> str:
    """One DNAT statement over ``targets`` (sorted, so the text, and the
    rule's id, depend only on the set). nft maps a port only after a
    transport protocol match."""
    ordered = sorted(targets, key=int)
    a = _ADDR[address_family]
    if len(ordered) == 1:
        return f"meta l4proto {protocol} dnat {a} to {_target(ordered[0], port)}"
    choices = ", ".join(f"{i} : {ip} . {port}" for i, ip in enumerate(ordered))
    return (
        f"meta l4proto {protocol} dnat {a} to numgen random mod {len(ordered)} map {{ {choices} }}"
    )


@functools.lru_cache(maxsize=1 << 16)
def _service_chains(s: ServiceNat) -> tuple[tuple[str, NftChain], ...]:
    """Memoised: a change to one of a thousand services builds (and hashes
    the rules of) its own chains only, and the reconciler's diff finds the
    others' chains the very values it applied."""
    out = []
    fam = s.address.version
    for p in s.ports:
        rules = []
        if s.masquerade:
            rules.append(
                NftRule(
                    f"meta mark set meta mark | {MARK_MASQUERADE:#x}",
                    f"svc {s.address} no local endpoint: masquerade",
                )
            )
        rules.append(
            NftRule(
                plan_dnat(fam, p.protocol, s.targets, p.target_port),
                f"svc {s.address} {p.protocol}/{p.port}",
            )
        )
        name = service_chain(s.address, p)
        out.append(
            (f"{s.address} . {p.protocol} . {p.port} : goto {name}", NftChain(name, tuple(rules)))
        )
    return tuple(out)


def plan_service_ruleset(services: Iterable[ServiceNat]) -> Ruleset:
    chains: dict[str, NftChain] = {}
    elements: dict[int, set[str]] = {4: set(), 6: set()}
    for s in services:
        if not s.targets or not s.ports:
            continue
        for element, chain in _service_chains(s):
            chains[chain.name] = chain
            elements[s.address.version].add(element)
    if not chains:
        return Ruleset()
    sets = {
        MAPS[f]: NftSet(
            MAPS[f], f"{_ADDR_TYPE[f]} . inet_proto . inet_service : verdict", False, frozenset(e)
        )
        for f, e in elements.items()
    }
    lookups = tuple(
        NftRule(f"{_ADDR[f]} daddr . meta l4proto . th dport vmap @{MAPS[f]}", f"services v{f}")
        for f in (4, 6)
    )
    chains[PREROUTING] = NftChain(PREROUTING, lookups, BaseHook("nat", "prerouting", DSTNAT))
    chains[OUTPUT] = NftChain(OUTPUT, lookups, BaseHook("nat", "output", DSTNAT))
    chains[POSTROUTING] = NftChain(
        POSTROUTING,
        (
            NftRule(
                f"meta mark & {MARK_MASQUERADE:#x} == {MARK_MASQUERADE:#x} counter masquerade",
                "services: masquerade to other nodes' endpoints",
            ),
        ),
        BaseHook("nat", "postrouting", SRCNAT),
    )
    return Ruleset(sets=sets, chains=chains)
