"""The nftables ruleset meshroute wants (``Ruleset``, from the policy
compiler) and the one the kernel holds (``TableState``, read back from
``nft -j``), as typed values in the one table meshroute owns whole.

Rules are recognised by the id in their comment, a hash of their text and
label: a chain whose ids equal the desired ones is left alone, so the
reconciler never has to parse nft's expressions back into rule text.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field

FAMILY = "inet"
TABLE = "meshroute"


@dataclass(frozen=True)
class BaseHook:
    type: str  # "filter" or "nat"
    hook: str
    priority: int
    policy: str = "accept"


@dataclass(frozen=True)
class NftRule:
    text: str  # the statement, without comment
    label: str  # what the rule is for, e.g. "np/x/allow-a ingress r0 allow"

    @functools.cached_property
    def id(self) -> str:
        return hashlib.sha1(f"{self.text}\0{self.label}".encode()).hexdigest()[:12]

    @property
    def comment(self) -> str:
        return f"{self.id} {self.label}"[:120]


@dataclass(frozen=True)
class NftChain:
    name: str
    rules: tuple[NftRule, ...] = ()
    hook: BaseHook | None = None

    @functools.cached_property
    def rule_ids(self) -> tuple[str, ...]:
        return tuple(r.id for r in self.rules)

    @functools.cached_property
    def state(self) -> ChainState:
        """What the kernel holds once this chain is applied; one object per
        chain, so that the next diff sees it unchanged by identity."""
        return ChainState(self.name, self.rule_ids, self.hook)


@dataclass(frozen=True)
class NftSet:
    """A named set, or a verdict map when ``type`` is ``"ifname : verdict"``.
    Elements are in their canonical nft text (``10.0.0.5``,
    ``10.0.0.0/8`` in interval sets, ``10.0.0.5 . tcp . 80``,
    ``"veth1" : jump CHAIN``)."""

    name: str
    type: str
    interval: bool = False
    elements: frozenset[str] = frozenset()

    @property
    def is_map(self) -> bool:
        return ":" in self.type

    @property
    def shape(self) -> tuple[str, bool]:
        return (self.type, self.interval)


@dataclass(frozen=True)
class Ruleset:
    sets: Mapping[str, NftSet] = field(default_factory=dict)
    chains: Mapping[str, NftChain] = field(default_factory=dict)


@dataclass(frozen=True)
class RuleCounter:
    chain: str
    label: str
    packets: int
    bytes: int


@dataclass(frozen=True)
class ChainState:
    name: str
    rule_ids: tuple[str, ...]
    hook: BaseHook | None = None


@dataclass(frozen=True)
class TableState:
    """What ``nft -j list table inet meshroute`` showed."""

    sets: Mapping[str, NftSet] = field(default_factory=dict)
    chains: Mapping[str, ChainState] = field(default_factory=dict)
    counters: tuple[RuleCounter, ...] = ()

    @classmethod
    def of(cls, ruleset: Ruleset) -> TableState:
        """What the kernel holds once ``ruleset`` is applied (counters aside)."""
        return cls(
            sets=dict(ruleset.sets),
            chains={n: c.state for n, c in ruleset.chains.items()},
        )


def merge_rulesets(*parts: Ruleset) -> Ruleset:
    """One table from parts that name their sets and chains apart (each part
    has its own prefix); a name in two parts is a bug in a compiler."""
    sets: dict[str, NftSet] = {}
    chains: dict[str, NftChain] = {}
    for p in parts:
        if sets.keys() & p.sets.keys() or chains.keys() & p.chains.keys():
            raise ValueError("two rulesets name the same set or chain")
        sets.update(p.sets)
        chains.update(p.chains)
    return Ruleset(sets, chains)
