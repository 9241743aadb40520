"""The policy compiler: endpoints, namespaces, policies and pools in, the
desired ``inet meshroute`` ruleset out. Pure.

Shape of the ruleset (Calico's, on nftables):

- base chain ``mr_forward`` (forward hook): established/related accepted,
  invalid dropped, then ``iifname vmap @mr_egress`` (the sending pod's egress
  policy) and ``oifname vmap @mr_ingress`` (the receiving pod's ingress
  policy). Traffic from the node itself goes through output, not forward,
  so the node always reaches its own pods.
- per local endpoint, direction and tier a chain ``mre_*``: it jumps to each
  policy that applies, in order; a policy's Allow sets ``MARK_ALLOW`` and
  returns, Pass sets ``MARK_PASS``; a tier in which a policy applied and none
  allowed or passed drops (default deny). An endpoint no policy selects in a
  direction has no element in that direction's map: allowed.
- per policy and direction a chain ``mrp_*`` shared by every endpoint it
  applies to, one rule (or one per address family) per policy rule, each
  with its counter.
- selector memberships, nets and named ports are named sets, so a pod
  coming or going changes set elements, not rules.
- ``mr_postrouting`` (nat): traffic from a natOutgoing pool to an address
  outside every pool is masqueraded.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from netaddr import IPNetwork, cidr_merge

from felix_lite.nft_model import BaseHook, NftChain, NftRule, NftSet, Ruleset
from felix_lite.policy_inputs import (
    Action,
    Direction,
    Endpoint,
    EntityMatch,
    Policy,
    PolicyInput,
    PortRange,
    Rule,
)

MARK_ALLOW = 0x10000
MARK_PASS = 0x20000
_MARK_KEEP = 0xFFFFFFFF & ~(MARK_ALLOW | MARK_PASS)

FORWARD = "mr_forward"
POSTROUTING = "mr_postrouting"
INGRESS_MAP = "mr_ingress"
EGRESS_MAP = "mr_egress"
NAT_SOURCES = "mr_nat_sources"
ALL_POOLS = "mr_all_pools"

_ADDR = {4: "ip", 6: "ip6"}
_ADDR_TYPE = {4: "ipv4_addr", 6: "ipv6_addr"}
_DIR = {Direction.INGRESS: "i", Direction.EGRESS: "e"}


@functools.lru_cache(maxsize=1 << 16)
def _h(*parts: object) -> str:
    return hashlib.sha1("\0".join(map(str, parts)).encode()).hexdigest()[:10]


def policy_chain(key: str, d: Direction) -> str:
    return f"mrp_{_h(key)}_{_DIR[d]}"


Signature = tuple[tuple[str, ...], ...]  # the keys of the applying policies, by tier


def signature(tiers: Sequence[Sequence[Policy]]) -> Signature:
    return tuple(tuple(p.key for p in t) for t in tiers)


def endpoint_chain(sig: Signature, d: Direction, tier: int) -> str:
    """The chain of every endpoint that the same policies select, in the
    same order: endpoints share it, so a pod whose policies already apply to
    another pod adds a map element and set elements, no rules."""
    return f"mre_{_h(repr(sig))}_{_DIR[d]}{tier}"


@dataclass(frozen=True)
class _Scoped:
    """What an endpoint-dependent set holds: the addresses (family ``fam``)
    of the endpoints ``match`` selects (None: every endpoint), or, with
    ``names``, their ``address . proto . port`` for those named ports."""

    match: EntityMatch | None
    fam: int
    names: tuple[str, ...] = ()
    proto: str = ""

    def elements(self, ep: Endpoint) -> Iterable[str]:
        ips = ep.addresses[self.fam]
        if not self.names:
            return ips
        ports = [p.port for p in ep.ports if p.name in self.names and p.protocol == self.proto]
        return [f"{ip} . {self.proto} . {port}" for ip in ips for port in ports]


GroupKey = tuple[str, tuple[tuple[str, str], ...]]  # (namespace, sorted labels)


class _Scope:
    """Whether endpoints of a (namespace, labels) group are in a match's
    scope. Pods share label sets, so sets are filled group by group."""

    def __init__(self, ns_labels: Mapping[str, Mapping[str, str]]) -> None:
        self.ns_labels = ns_labels

    def __call__(self, m: EntityMatch | None, ns: str, labels: Mapping[str, str]) -> bool:
        if m is None:
            return True
        return (
            (m.namespace is None or ns == m.namespace)
            and (
                m.namespace_selector is None
                or m.namespace_selector.match(self.ns_labels.get(ns, {}))
            )
            and (m.selector is None or m.selector.match(labels))
        )

    def endpoint(self, m: EntityMatch | None, ep: Endpoint) -> bool:
        return self(m, ep.namespace, ep.label_map)


def _groups(endpoints: Iterable[Endpoint]) -> dict[GroupKey, list[Endpoint]]:
    out: dict[GroupKey, list[Endpoint]] = defaultdict(list)
    for ep in endpoints:
        out[(ep.namespace, ep.labels)].append(ep)
    return out


@dataclass
class _Builder:
    endpoints: Sequence[Endpoint]
    scope: _Scope
    sets: dict[str, NftSet] = field(default_factory=dict)
    scoped: dict[str, _Scoped] = field(default_factory=dict)
    # Sets of a compile over the same endpoints and namespaces: a set's name
    # says what it selects, so its members are still right.
    known: Mapping[str, NftSet] = field(default_factory=dict)
    # the names of the sets asked for since the last ``take_used``
    used: list[str] = field(default_factory=list)

    def take_used(self) -> tuple[str, ...]:
        got, self.used = tuple(self.used), []
        return got

    def adopt(
        self, names: Iterable[str], sets: Mapping[str, NftSet], scoped: Mapping[str, _Scoped]
    ) -> None:
        """Take sets from a compile over the same endpoints and namespaces."""
        for name in names:
            if name not in self.sets:
                self.sets[name] = sets[name]
                if name in scoped:
                    self.scoped[name] = scoped[name]

    def add(self, name: str, type_: str, elements: Iterable[str], interval: bool = False) -> str:
        self.used.append(name)
        if name not in self.sets:
            self.sets[name] = NftSet(name, type_, interval, frozenset(elements))
        return name

    def _scoped_set(self, name: str, type_: str, spec: _Scoped) -> str:
        self.used.append(name)
        if name not in self.sets and name in self.known:
            self.scoped[name] = spec
            self.sets[name] = self.known[name]
        elif name not in self.sets:
            self.scoped[name] = spec
            self.add(
                name,
                type_,
                (
                    e
                    for ns, labels, eps in self._candidates(spec.match)
                    if self.scope(spec.match, ns, labels)
                    for ep in eps
                    for e in spec.elements(ep)
                ),
            )
        return name

    @functools.cached_property
    def _by_ns(self) -> dict[str, list[tuple[dict[str, str], Sequence[Endpoint]]]]:
        # only when a selector not seen before needs its members: a policy
        # change that brings none never walks the endpoints
        out: dict[str, list[tuple[dict[str, str], Sequence[Endpoint]]]] = defaultdict(list)
        for (ns, labels), eps in _groups(self.endpoints).items():
            out[ns].append((dict(labels), eps))
        return out

    def _candidates(
        self, m: EntityMatch | None
    ) -> Iterable[tuple[str, dict[str, str], Sequence[Endpoint]]]:
        """The groups that can be in ``m``'s scope: one namespace's when
        ``m`` names it (most selectors of a NetworkPolicy), those of the
        namespaces its namespace selector matches, else all."""
        if m is not None and m.namespace is not None:
            namespaces: Iterable[str] = [m.namespace] if m.namespace in self._by_ns else []
        elif m is not None and m.namespace_selector is not None:
            sel, labels = m.namespace_selector, self.scope.ns_labels
            namespaces = [ns for ns in self._by_ns if sel.match(labels.get(ns, {}))]
        else:
            namespaces = self._by_ns
        return ((ns, lb, eps) for ns in namespaces for lb, eps in self._by_ns[ns])

    def members(self, m: EntityMatch, fam: int) -> str:
        name = f"mrs_{_h('members', *_scope_key(m))}_{fam}"
        return self._scoped_set(name, _ADDR_TYPE[fam], _Scoped(m, fam))

    def nets(self, nets: Sequence[IPNetwork], fam: int) -> str:
        """What a rule compares an address with: the prefix itself when the
        nets merge into one, else ``@`` a named interval set. (Before a
        transaction that adds or deletes any set element, nft 1.0 reads
        back every interval set's elements, one netlink dump per set: a
        pod's arrival would pay for each ipBlock of each policy.)"""
        merged = [str(n) for n in cidr_merge([n for n in nets if n.version == fam])]
        if len(merged) == 1:
            return merged[0]
        name = f"mrn_{_h('nets', *merged)}_{fam}"
        return "@" + self.add(name, _ADDR_TYPE[fam], merged, interval=True)

    def named_ports(self, m: EntityMatch, names: Sequence[str], proto: str, fam: int) -> str:
        scope = _scope_key(m) if m.selects_endpoints else ("any",)
        name = f"mrq_{_h('ports', proto, *scope, *names)}_{fam}"
        spec = _Scoped(m if m.selects_endpoints else None, fam, tuple(names), proto)
        return self._scoped_set(name, f"{_ADDR_TYPE[fam]} . inet_proto . inet_service", spec)


def _scope_key(m: EntityMatch) -> tuple[str, str, str]:
    return (
        m.selector.text if m.selector else "",
        m.namespace_selector.text if m.namespace_selector else "",
        m.namespace if m.namespace is not None else "",
    )


def _port_list(ports: Sequence[PortRange]) -> str:
    items = [str(p.first) if p.first == p.last else f"{p.first}-{p.last}" for p in ports]
    return "{ " + ", ".join(items) + " }"


def _side(
    b: _Builder, m: EntityMatch, which: str, proto: str | None, fam: int | None
) -> list[str] | None:
    """The match variants of one side (source ``s`` or destination ``d``):
    each a string of statements, any of which matching means the side
    matches (numbered ports and named ports cannot share one statement).
    None when the side cannot match packets of this family."""
    parts: list[str] = []
    if fam is not None:
        addr = f"{_ADDR[fam]} {which}addr"
        if m.selects_endpoints:
            parts.append(f"{addr} @{b.members(m, fam)}")
        if m.nets:
            if not any(n.version == fam for n in m.nets):
                return None
            parts.append(f"{addr} {b.nets(m.nets, fam)}")
        if any(n.version == fam for n in m.not_nets):
            parts.append(f"{addr} != {b.nets(m.not_nets, fam)}")
    port = f"th {which}port"
    numbered = [p for p in m.not_ports if p.name is None]
    if numbered:
        parts.append(f"{port} != {_port_list(numbered)}")
    named_not = sorted({p.name for p in m.not_ports if p.name is not None})
    if named_not and fam is not None and proto is not None:
        s = b.named_ports(EntityMatch(), named_not, proto, fam)
        parts.append(f"{_ADDR[fam]} {which}addr . meta l4proto . {port} != @{s}")
    base = " ".join(parts)
    if not m.ports:
        return [base]
    variants = []
    numbered = [p for p in m.ports if p.name is None]
    if numbered:
        variants.append(f"{base} {port} {_port_list(numbered)}".strip())
    named = sorted({p.name for p in m.ports if p.name is not None})
    if named and fam is not None and proto is not None:
        s = b.named_ports(m, named, proto, fam)
        variants.append(f"{base} {_ADDR[fam]} {which}addr . meta l4proto . {port} @{s}".strip())
    return variants or None


def _needs_family(r: Rule) -> bool:
    return any(
        m.selects_endpoints or m.nets or m.not_nets or any(p.name for p in m.ports + m.not_ports)
        for m in (r.source, r.destination)
    )


def _families(r: Rule) -> tuple[int | None, ...]:
    if r.protocol == "icmp":
        return (4,)
    if r.protocol == "icmpv6":
        return (6,)
    return (4, 6) if _needs_family(r) else (None,)


def _verdict(action: Action, label: str) -> str:
    if action is Action.ALLOW:
        return f"counter meta mark set meta mark | {MARK_ALLOW:#x} return"
    if action is Action.PASS:
        return f"counter meta mark set meta mark | {MARK_PASS:#x} return"
    if action is Action.DENY:
        return "counter drop"
    return f'counter log prefix "mr {_h(label)[:8]} "'


def plan_rule(b: _Builder, r: Rule, label: str) -> list[NftRule]:
    out: list[NftRule] = []
    for fam in _families(r):
        head: list[str] = []
        if r.protocol is not None:
            head.append(f"meta l4proto {r.protocol}")
        if r.icmp_type is not None:
            head.append(f"{r.protocol} type {r.icmp_type}")
            if r.icmp_code is not None:
                head.append(f"{r.protocol} code {r.icmp_code}")
        src = _side(b, r.source, "s", r.protocol, fam)
        dst = _side(b, r.destination, "d", r.protocol, fam)
        if src is None or dst is None:
            continue
        for s, d in itertools.product(src, dst):
            text = " ".join(p for p in (*head, s, d, _verdict(r.action, label)) if p)
            out.append(NftRule(text, label))
    return out


def plan_policy_chain(b: _Builder, p: Policy, d: Direction) -> NftChain:
    rules = p.ingress if d is Direction.INGRESS else p.egress
    out: list[NftRule] = []
    for i, r in enumerate(rules):
        out += plan_rule(b, r, f"{p.key} {d.value} r{i} {r.action.value.lower()}")
    return NftChain(policy_chain(p.key, d), tuple(out))


def decide_applies(
    p: Policy, group: GroupKey, d: Direction, ns_labels: Mapping[str, Mapping[str, str]]
) -> bool:
    """Whether ``p`` selects, in direction ``d``, the endpoints of ``group``
    (a namespace and its pods' labels)."""
    ns, labels = group
    if d not in p.types:
        return False
    if p.namespace is not None and p.namespace != ns:
        return False
    if p.namespace_selector is not None and not p.namespace_selector.match(ns_labels.get(ns, {})):
        return False
    return p.selector.match(dict(labels))


def _policy_order(p: Policy) -> tuple[int, bool, float, str]:
    return (p.tier, p.order is None, p.order or 0.0, p.key)


def _can_pass(p: Policy, d: Direction) -> bool:
    rules = p.ingress if d is Direction.INGRESS else p.egress
    return any(r.action is Action.PASS for r in rules)


def plan_endpoint_chains(d: Direction, tiers: Sequence[Sequence[Policy]]) -> list[NftChain]:
    """One chain per tier that has policies for these endpoints and this
    direction. ``mr_forward`` clears our mark bits before each direction; a
    later tier clears the pass bit it was reached with."""
    allowed = "accept" if d is Direction.INGRESS else "return"
    sig = signature(tiers)
    chains = []
    for t, pols in enumerate(tiers):
        label = f"{d.value} t{t} {','.join(p.key for p in pols)}"
        passed = endpoint_chain(sig, d, t + 1) if t + 1 < len(tiers) else None
        rules = []
        if t > 0:
            rules.append(NftRule(f"meta mark set meta mark & {_MARK_KEEP:#x}", f"start {label}"))
        for p in pols:
            rules += [
                NftRule(f"jump {policy_chain(p.key, d)}", f"jump {label}"),
                NftRule(f"meta mark & {MARK_ALLOW:#x} != 0 {allowed}", f"allowed {label}"),
            ]
            if _can_pass(p, d):
                rules.append(
                    NftRule(
                        f"meta mark & {MARK_PASS:#x} != 0 "
                        + (f"goto {passed}" if passed else allowed),
                        f"passed {label}",
                    )
                )
        rules.append(NftRule("counter drop", f"default-deny {label}"))
        chains.append(NftChain(endpoint_chain(sig, d, t), tuple(rules)))
    return chains


@dataclass(frozen=True)
class _Applied:
    """The policies that apply to endpoints in one direction, by tier, in
    order; their signature and the chain that the dispatch map jumps to."""

    tiers: list[list[Policy]]
    sig: Signature
    first: str


class _Tiers:
    """``_Applied`` of an endpoint (None: no policy applies), computed once
    per (namespace, labels, direction)."""

    def __init__(self, policies: Sequence[Policy], ns_labels: Mapping[str, Mapping[str, str]]):
        self.ns_labels = ns_labels
        self.global_ = [p for p in policies if p.namespace is None]
        self.by_ns: dict[str, list[Policy]] = defaultdict(list)
        for p in policies:
            if p.namespace is not None:
                self.by_ns[p.namespace].append(p)
        self._memo: dict[GroupKey, dict[Direction, _Applied | None]] = {}

    def __call__(self, ep: Endpoint, d: Direction) -> _Applied | None:
        return self.both(ep)[d]

    def both(self, ep: Endpoint) -> dict[Direction, _Applied | None]:
        key = (ep.namespace, ep.labels)
        got = self._memo.get(key)
        if got is None:
            got = self._memo[key] = {d: self._plan(key, d) for d in Direction}
        return got

    def groups(self) -> Iterable[GroupKey]:
        """The groups asked about so far."""
        return self._memo.keys()

    def keep(self, other: _Tiers, groups: Iterable[GroupKey]) -> None:
        """Take ``other``'s answers for ``groups``, which the policies that
        differ between the two do not select."""
        for g in groups:
            got = other._memo.get(g)
            if got is not None:
                self._memo[g] = got

    def _plan(self, group: GroupKey, d: Direction) -> _Applied | None:
        by_tier: dict[int, list[Policy]] = defaultdict(list)
        for p in sorted(self.global_ + self.by_ns.get(group[0], []), key=_policy_order):
            if decide_applies(p, group, d, self.ns_labels):
                by_tier[p.tier].append(p)
        if not by_tier:
            return None
        tiers = [by_tier[t] for t in sorted(by_tier)]
        sig = signature(tiers)
        return _Applied(tiers, sig, endpoint_chain(sig, d, 0))


def _base_chains(b: _Builder, inp: PolicyInput) -> list[NftChain]:
    forward = NftChain(
        FORWARD,
        (
            NftRule("ct state established,related accept", "established"),
            NftRule("ct state invalid counter drop", "invalid"),
            NftRule(f"meta mark set meta mark & {_MARK_KEEP:#x}", "clear before egress"),
            NftRule(f"iifname vmap @{EGRESS_MAP}", "egress dispatch"),
            NftRule(f"meta mark set meta mark & {_MARK_KEEP:#x}", "clear before ingress"),
            NftRule(f"oifname vmap @{INGRESS_MAP}", "ingress dispatch"),
        ),
        BaseHook("filter", "forward", 0),
    )
    nat_rules = []
    for fam in (4, 6):
        pools = [p for p in inp.pools if p.cidr.version == fam]
        src = b.add(
            f"{NAT_SOURCES}_{fam}",
            _ADDR_TYPE[fam],
            (str(c) for c in cidr_merge([p.cidr for p in pools if p.nat_outgoing])),
            interval=True,
        )
        every = b.add(
            f"{ALL_POOLS}_{fam}",
            _ADDR_TYPE[fam],
            (str(c) for c in cidr_merge([p.cidr for p in pools])),
            interval=True,
        )
        a = _ADDR[fam]
        nat_rules.append(
            NftRule(f"{a} saddr @{src} {a} daddr != @{every} counter masquerade", f"nat v{fam}")
        )
    post = NftChain(POSTROUTING, tuple(nat_rules), BaseHook("nat", "postrouting", 100))
    return [forward, post]


def _map_element(ep: Endpoint, applied: _Applied) -> str:
    return f'"{ep.iface}" : jump {applied.first}'


def _endpoint_part(
    ep: Endpoint, tiers: _Tiers, users: dict[str, int]
) -> tuple[list[NftChain], dict[Direction, str]]:
    """A local endpoint's map elements by direction, and the chains it
    needs that no other endpoint brought (counted in ``users``)."""
    chains: list[NftChain] = []
    elements: dict[Direction, str] = {}
    for d, got in tiers.both(ep).items():
        if got:
            n = users.get(got.first, 0)
            if not n:
                chains += plan_endpoint_chains(d, got.tiers)
            users[got.first] = n + 1
            elements[d] = _map_element(ep, got)
    return chains, elements


_MAPS = ((Direction.INGRESS, INGRESS_MAP), (Direction.EGRESS, EGRESS_MAP))


@dataclass
class _Compiled:
    inp: PolicyInput
    ruleset: Ruleset
    scoped: dict[str, _Scoped]
    scope: _Scope
    tiers: _Tiers
    endpoints: frozenset[Endpoint]
    owners: dict[str, int]  # interface names and addresses -> how many endpoints hold them
    users: dict[str, int]  # local endpoints by the first chain of their shared chains
    policies: dict[str, Policy]  # by key
    parts: dict[tuple[str, Direction], _PolicyPart]  # by policy key
    set_refs: dict[str, int]  # how many parts name each set


@dataclass(frozen=True)
class _PolicyPart:
    """A policy's chain in one direction and the sets it names."""

    chain: NftChain
    sets: frozenset[str]


def _plan_part(b: _Builder, p: Policy, d: Direction) -> _PolicyPart:
    b.take_used()
    chain = plan_policy_chain(b, p, d)
    return _PolicyPart(chain, frozenset(b.take_used()))


def _directions(p: Policy) -> list[Direction]:
    return sorted(p.types, key=lambda x: x.value)


def _compile(inp: PolicyInput, last: _Compiled | None = None) -> _Compiled:
    """``last``: a compile over the same endpoints and namespaces, whose
    sets (a set's name says what it selects) and policy chains are still
    right: only policies it did not have are planned."""
    known = last.ruleset.sets if last else {}
    ns_labels: dict[str, Mapping[str, str]] = {n.name: dict(n.labels) for n in inp.namespaces}
    scope = _Scope(ns_labels)
    b = _Builder(inp.endpoints, scope, known=known)
    policies = sorted(inp.policies, key=_policy_order)
    tiers = _Tiers(policies, ns_labels)
    chains: dict[str, NftChain] = {c.name: c for c in _base_chains(b, inp)}
    maps: dict[Direction, dict[str, str]] = {Direction.INGRESS: {}, Direction.EGRESS: {}}
    users: dict[str, int] = {}
    for ep in sorted(inp.endpoints, key=lambda e: e.iface):
        if ep.node != inp.node or not ep.iface:
            continue
        ep_chains, elements = _endpoint_part(ep, tiers, users)
        chains.update((c.name, c) for c in ep_chains)
        for d, e in elements.items():
            maps[d][ep.iface] = e
    # Every policy has its chains (and sets) whether or not a local endpoint
    # uses it yet: a pod coming or going never changes more than its own part.
    parts: dict[tuple[str, Direction], _PolicyPart] = {}
    for p in policies:
        seen = last is not None and last.policies.get(p.key) == p
        for d in _directions(p):
            part = last.parts.get((p.key, d)) if last is not None and seen else None
            if part is None:
                part = _plan_part(b, p, d)
            else:
                assert last is not None
                b.adopt(part.sets, last.ruleset.sets, last.scoped)
            parts[(p.key, d)] = part
            chains[part.chain.name] = part.chain
    for d, name in _MAPS:
        b.add(name, "ifname : verdict", maps[d].values())
    owners: dict[str, int] = defaultdict(int)
    if last is not None:
        owners.update(last.owners)
    else:
        for ep in inp.endpoints:
            for k in _owned(ep):
                owners[k] += 1
    refs: dict[str, int] = defaultdict(int)
    for part in parts.values():
        for name in part.sets:
            refs[name] += 1
    return _Compiled(
        inp,
        Ruleset(sets=dict(b.sets), chains=chains),
        b.scoped,
        scope,
        tiers,
        frozenset(inp.endpoints),
        owners,
        users,
        {p.key: p for p in policies},
        parts,
        dict(refs),
    )


def _reach(p: Policy | None) -> object:
    """What decides which endpoints a policy's chains are jumped to from,
    and what their shared chains say of it: a policy change that keeps
    this rewrites the policy's own chains only."""
    if p is None:
        return None
    passes = tuple(_can_pass(p, d) for d in Direction)
    return (p.tier, p.order, p.namespace, p.namespace_selector, p.selector, p.types, passes)


def _policy_delta(last: _Compiled, inp: PolicyInput, most: int) -> _Compiled | None:
    """``inp`` is ``last.inp`` with other policies: re-plan the chains of the
    policies that changed, the dispatch of the endpoint groups that those
    select (before or after), and the sets no part names any more or that
    a new part names first. None when a full compile decides (duplicate
    keys or interfaces, more than ``most`` changed policies)."""
    new = {p.key: p for p in inp.policies}
    old = last.policies
    if len(new) != len(inp.policies):
        return None
    changed = [
        k
        for k in old.keys() | new.keys()
        if old.get(k) is not new.get(k) and old.get(k) != new.get(k)
    ]
    if len(changed) > most:
        return None
    sets = dict(last.ruleset.sets)
    chains = dict(last.ruleset.chains)
    scoped = dict(last.scoped)
    parts = dict(last.parts)
    refs = dict(last.set_refs)
    # The policies' own chains: the new parts first, so that a set the old
    # part named too keeps its value (and the next diff skips it).
    b = _Builder(inp.endpoints, last.scope, known=last.ruleset.sets)
    planned: dict[tuple[str, Direction], _PolicyPart] = {}
    for k in sorted(changed):
        p = new.get(k)
        if p is not None:
            for d in _directions(p):
                planned[(k, d)] = _plan_part(b, p, d)
    for part in planned.values():
        for name in part.sets:
            refs[name] = refs.get(name, 0) + 1
            if name not in sets:
                sets[name] = b.sets[name]
                if name in b.scoped:
                    scoped[name] = b.scoped[name]
    for k in changed:
        p_old = old.get(k)
        for d in _directions(p_old) if p_old is not None else ():
            part = parts.pop((k, d))
            del chains[part.chain.name]
            for name in part.sets:
                refs[name] -= 1
                if not refs[name]:
                    del refs[name], sets[name]
                    scoped.pop(name, None)
    for key, part in planned.items():
        parts[key] = part
        chains[part.chain.name] = part.chain
    # Dispatch: only groups that a policy whose reach changed selects.
    ns_labels = last.scope.ns_labels
    movers = [
        p
        for k in changed
        if _reach(old.get(k)) != _reach(new.get(k))
        for p in (old.get(k), new.get(k))
        if p is not None
    ]
    # No policy's reach changed: every group keeps its answer, and the last
    # tiers (whose lists may hold an older version of a changed policy, with
    # the same reach) answer new groups as new tiers would.
    tiers = last.tiers
    affected: set[GroupKey] = set()
    if movers:
        tiers = _Tiers(sorted(inp.policies, key=_policy_order), ns_labels)
        affected = {
            g
            for g in last.tiers.groups()
            if any(decide_applies(p, g, d, ns_labels) for p in movers for d in p.types)
        }
        tiers.keep(last.tiers, (g for g in last.tiers.groups() if g not in affected))
    users = dict(last.users)
    if affected:
        moved = [
            ep
            for ep in last.inp.endpoints
            if ep.node == inp.node and ep.iface and (ep.namespace, ep.labels) in affected
        ]
        if any(last.owners[f"if {ep.iface}"] > 1 for ep in moved):
            return None  # an interface two endpoints claim: the full compile decides
        drop = _drop_dispatch(moved, last.tiers, users, chains)
        put = _add_dispatch(moved, tiers, users, chains)
        _swap_map_elements(sets, drop, put)
    return _Compiled(
        inp,
        Ruleset(sets, chains),
        scoped,
        last.scope,
        tiers,
        last.endpoints,
        last.owners,
        users,
        new,
        parts,
        refs,
    )


def _drop_dispatch(
    eps: Iterable[Endpoint], tiers: _Tiers, users: dict[str, int], chains: dict[str, NftChain]
) -> dict[Direction, set[str]]:
    """Take local endpoints' map elements out, and the shared chains that no
    endpoint jumps to any more."""
    drop: dict[Direction, set[str]] = {d: set() for d in Direction}
    for ep in eps:
        for d in Direction:
            got = tiers(ep, d)
            if not got:
                continue
            drop[d].add(_map_element(ep, got))
            users[got.first] -= 1
            if not users[got.first]:
                del users[got.first]
                for t in range(len(got.tiers)):
                    chains.pop(endpoint_chain(got.sig, d, t), None)
    return drop


def _add_dispatch(
    eps: Iterable[Endpoint], tiers: _Tiers, users: dict[str, int], chains: dict[str, NftChain]
) -> dict[Direction, set[str]]:
    put: dict[Direction, set[str]] = {d: set() for d in Direction}
    for ep in eps:
        ep_chains, elements = _endpoint_part(ep, tiers, users)
        chains.update((c.name, c) for c in ep_chains)
        for d, e in elements.items():
            put[d].add(e)
    return put


def _swap_map_elements(
    sets: dict[str, NftSet], drop: dict[Direction, set[str]], put: dict[Direction, set[str]]
) -> None:
    for d, name in _MAPS:
        if drop[d] != put[d]:
            s = sets[name]
            sets[name] = NftSet(name, s.type, s.interval, (s.elements - drop[d]) | put[d])


def _owned(ep: Endpoint) -> list[str]:
    iface = [f"if {ep.iface}"] if ep.iface else []
    return [*iface, *ep.addresses[4], *ep.addresses[6]]


def plan_policy_ruleset(inp: PolicyInput) -> Ruleset:
    return _compile(inp).ruleset


def _endpoint_delta(last: _Compiled, inp: PolicyInput, most: int) -> _Compiled | None:
    """``inp`` is ``last.inp`` with other endpoints: swap the changed ones'
    set elements, shared chains and map elements. None when a full compile
    decides (more than ``most`` changed, duplicates)."""
    new = frozenset(inp.endpoints)
    removed, added = last.endpoints - new, new - last.endpoints
    if len(removed) + len(added) > most or len(new) != len(inp.endpoints):
        return None
    owners = dict(last.owners)
    for ep in removed:
        for k in _owned(ep):
            owners[k] -= 1
    for ep in added:
        for k in _owned(ep):
            owners[k] = owners.get(k, 0) + 1
    # An interface or address held by two endpoints would need reference
    # counts in sets and maps: leave such (broken) inputs to the full compile.
    if any(owners[k] > 1 for ep in added for k in _owned(ep)):
        return None
    if any(last.owners[k] > 1 for ep in removed for k in _owned(ep)):
        return None
    sets = dict(last.ruleset.sets)
    chains = dict(last.ruleset.chains)
    for name, spec in last.scoped.items():
        drop = {
            e for ep in removed if last.scope.endpoint(spec.match, ep) for e in spec.elements(ep)
        }
        put = {e for ep in added if last.scope.endpoint(spec.match, ep) for e in spec.elements(ep)}
        if drop or put:
            s = sets[name]
            sets[name] = NftSet(s.name, s.type, s.interval, (s.elements - drop) | put)
    users = dict(last.users)

    def local(eps: Iterable[Endpoint]) -> list[Endpoint]:
        return [ep for ep in eps if ep.node == inp.node and ep.iface]

    drop_map = _drop_dispatch(local(removed), last.tiers, users, chains)
    put_map = _add_dispatch(local(added), last.tiers, users, chains)
    _swap_map_elements(sets, drop_map, put_map)
    return _Compiled(
        inp,
        Ruleset(sets, chains),
        last.scoped,
        last.scope,
        last.tiers,
        new,
        owners,
        users,
        last.policies,
        last.parts,
        last.set_refs,
    )


class PolicyCompiler:
    """``plan_policy_ruleset`` with memory, always equal to a full compile
    (property-tested), so that a change costs what it touches on a node
    with thousands of pods and policies:

    - endpoints came or went: the last ruleset with their set elements,
      shared chains and map elements swapped;
    - policies changed: their chains re-planned, the dispatch of the
      endpoint groups they select re-planned, sets added or dropped;
    - both at once: the one, then the other;
    - pools or namespaces changed: a full compile that keeps the chains
      of the policies seen before and the members of selectors seen before
      (unless the endpoints changed too)."""

    INCREMENTAL_MAX = 256  # changed endpoints (or policies) above which a full compile is cheaper

    def __init__(self) -> None:
        self._last: _Compiled | None = None

    def compile(self, inp: PolicyInput) -> Ruleset:
        self._last = self._next(inp)
        return self._last.ruleset

    def _next(self, inp: PolicyInput) -> _Compiled:
        last = self._last
        if last is None:
            return _compile(inp)
        a = last.inp
        if (a.node, a.namespaces, a.pools) != (inp.node, inp.namespaces, inp.pools):
            same_members = (a.endpoints, a.namespaces) == (inp.endpoints, inp.namespaces)
            return _compile(inp, last if same_members else None)
        if a.policies != inp.policies:
            step = PolicyInput(a.node, a.endpoints, a.namespaces, inp.policies, a.pools)
            got = _policy_delta(last, step, self.INCREMENTAL_MAX)
            if got is None:
                return _compile(inp, last if a.endpoints == inp.endpoints else None)
            last = got
        if last.inp.endpoints == inp.endpoints:
            return last if last.inp is inp else replace(last, inp=inp)
        return _endpoint_delta(last, inp, self.INCREMENTAL_MAX) or _compile(inp)
