"""Import policy as data: which received paths the node accepts, and why it
refuses the others. Pure: no I/O, no clock.

``IMPORT_RULES`` is an ordered tuple of small functions ``(ctx, path) ->
RejectReason | None``; ``decide_import`` runs them in order and the first
refusal wins. The rules, in that order:

``as-path-loop``      the AS_PATH holds the node's own AS (RFC 4271 9.1.2):
                      the route has been through this AS already; every BGP
                      speaker refuses it.
``bad-next-hop``      the next hop is unspecified (0.0.0.0, ::), loopback,
                      multicast, link-local IPv4 or v4 broadcast: nothing a
                      kernel route could use.
``next-hop-is-self``  the next hop is one of the node's own addresses (a loop).
``default-route``     0.0.0.0/0 or ::/0, unless ``allow_default``.
``own-block``         exactly one of the node's own blocks: the node is the
                      authority for it (it holds a blackhole for it). A /32 or
                      /128 inside an own block is *not* refused: that is an
                      address another node borrowed from us, and traffic for
                      it must go there.
``not-in-pool``       inside no pool and no allow-list entry (a disabled
                      pool counts: it hands out no new addresses, but its
                      pods keep their routes). An allowed default route
                      skips this rule.
``too-specific``      inside a pool but longer than the pool's block size,
                      except host routes (/32, /128): those are borrowed
                      addresses. Shorter prefixes (aggregates a ToR may send)
                      are accepted. Allow-list entries have no length limit.

``max-prefix`` is not a per-path rule: the RIB asks ``decide_max_prefix``
when a peer's accepted count would grow past its limit (the limit counts
accepted, stored paths, like BIRD's ``import limit``).

Rules compare integers precomputed once per context (``ImportContext``):
netaddr containment tests cost microseconds each and the RIB runs these for
every received prefix.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from netaddr import IPAddress, IPNetwork

from bgpd.model import Path


class RejectReason(enum.Enum):
    AS_PATH_LOOP = "as-path-loop"
    BAD_NEXT_HOP = "bad-next-hop"
    NEXT_HOP_IS_SELF = "next-hop-is-self"
    DEFAULT_ROUTE = "default-route"
    OWN_BLOCK = "own-block"
    NOT_IN_POOL = "not-in-pool"
    TOO_SPECIFIC = "too-specific"
    MAX_PREFIX = "max-prefix"


class MaxPrefixAction(enum.Enum):
    DROP = "drop"  # keep the session, refuse paths beyond the limit
    CLOSE = "close"  # close the session (the node then calls peer_down)


class MaxPrefixDecision(enum.Enum):
    ACCEPT = "accept"
    DROP = "drop"
    CLOSE = "close"


@dataclass(frozen=True)
class PoolRule:
    """A pool (disabled ones too) as import policy sees it."""

    cidr: IPNetwork
    block_size: int  # prefix length of the pool's blocks (26 for IPv4 by default)


# (version, first address, last address, longest accepted length or None)
_Range = tuple[int, int, int, int | None]


@dataclass(frozen=True)
class ImportContext:
    """What the node knows about itself and the cluster, for import policy."""

    pools: tuple[PoolRule, ...] = ()
    allow: tuple[IPNetwork, ...] = ()
    own_blocks: frozenset[IPNetwork] = frozenset()
    own_addresses: frozenset[IPAddress] = frozenset()
    allow_default: bool = False
    local_as: int | None = None  # None: no AS-path loop check (no AS known yet)
    _ranges: tuple[_Range, ...] = field(init=False, repr=False, compare=False)
    _own_blocks: frozenset[tuple[int, int, int]] = field(init=False, repr=False, compare=False)
    _own_addresses: frozenset[tuple[int, int]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for pool in self.pools:
            if not 0 <= pool.block_size <= _host_len(pool.cidr.version):
                raise ValueError(f"pool {pool.cidr}: block size /{pool.block_size} out of range")
        ranges: list[_Range] = [
            (p.cidr.version, p.cidr.first, p.cidr.last, p.block_size) for p in self.pools
        ]
        ranges += [(a.version, a.first, a.last, None) for a in self.allow]
        # Frozen: the derived fields are set once, here, and never change.
        object.__setattr__(self, "_ranges", tuple(ranges))
        object.__setattr__(
            self,
            "_own_blocks",
            frozenset((b.version, b.first, b.prefixlen) for b in self.own_blocks),
        )
        object.__setattr__(
            self, "_own_addresses", frozenset((a.version, int(a)) for a in self.own_addresses)
        )


class Candidate(NamedTuple):
    """A received path with the integers the rules compare, computed once
    (a NamedTuple: built for every received prefix, ~4x cheaper than a
    frozen dataclass)."""

    path: Path
    version: int
    first: int
    last: int
    length: int
    host_length: int
    next_hop_version: int
    next_hop: int
    ranges: tuple[_Range, ...]  # the pools and allow-list entries that contain it


def candidate(ctx: ImportContext, path: Path) -> Candidate:
    prefix, nh = path.prefix, path.attrs.next_hop
    version, length = prefix.version, prefix.prefixlen
    host_length = 32 if version == 4 else 128
    host_bits = (1 << (host_length - length)) - 1
    first = prefix.value & ~host_bits
    last = first | host_bits
    ranges = tuple([r for r in ctx._ranges if r[0] == version and r[1] <= first and last <= r[2]])
    return Candidate(path, version, first, last, length, host_length, nh.version, int(nh), ranges)


Rule = Callable[[ImportContext, Candidate], "RejectReason | None"]


def _host_len(version: int) -> int:
    return 32 if version == 4 else 128


def as_path_loop(ctx: ImportContext, c: Candidate) -> RejectReason | None:
    if ctx.local_as is not None and ctx.local_as in c.path.attrs.as_path:
        return RejectReason.AS_PATH_LOOP
    return None


def bad_next_hop(ctx: ImportContext, c: Candidate) -> RejectReason | None:
    value = c.next_hop
    if c.next_hop_version == 4:
        bad = (
            value <= 0x00FFFFFF  # 0.0.0.0/8 "this network"
            or 0x7F000000 <= value <= 0x7FFFFFFF  # 127.0.0.0/8 loopback
            or 0xA9FE0000 <= value <= 0xA9FEFFFF  # 169.254.0.0/16 link-local
            or value >= 0xE0000000  # multicast, 240.0.0.0/4 reserved, broadcast
        )
    else:
        # ::, ::1, ff00::/8. IPv6 link-local next hops are legal in BGP (with a
        # global one alongside); the codec hands us the global one.
        bad = value in (0, 1) or value >> 120 == 0xFF
    return RejectReason.BAD_NEXT_HOP if bad else None


def next_hop_is_self(ctx: ImportContext, c: Candidate) -> RejectReason | None:
    if (c.next_hop_version, c.next_hop) in ctx._own_addresses:
        return RejectReason.NEXT_HOP_IS_SELF
    return None


def default_route(ctx: ImportContext, c: Candidate) -> RejectReason | None:
    if c.length == 0 and not ctx.allow_default:
        return RejectReason.DEFAULT_ROUTE
    return None


def own_block(ctx: ImportContext, c: Candidate) -> RejectReason | None:
    if (c.version, c.first, c.length) in ctx._own_blocks:
        return RejectReason.OWN_BLOCK
    return None


def not_in_pool(ctx: ImportContext, c: Candidate) -> RejectReason | None:
    if c.length == 0 and ctx.allow_default:
        return None
    if not c.ranges:
        return RejectReason.NOT_IN_POOL
    return None


def too_specific(ctx: ImportContext, c: Candidate) -> RejectReason | None:
    length = c.length
    if length == c.host_length or length == 0:
        return None  # a borrowed address; or an allowed default route (no pool)
    for _, _, _, longest in c.ranges:
        if longest is None or length <= longest:
            return None  # one pool (or the allow-list) takes it
    return RejectReason.TOO_SPECIFIC


IMPORT_RULES: tuple[Rule, ...] = (
    as_path_loop,
    bad_next_hop,
    next_hop_is_self,
    default_route,
    own_block,
    not_in_pool,
    too_specific,
)


def decide_import(ctx: ImportContext, path: Path) -> RejectReason | None:
    """``None`` to accept the path, else the first rule's reason to refuse it."""
    c = candidate(ctx, path)
    for rule in IMPORT_RULES:
        reason = rule(ctx, c)
        if reason is not None:
            return reason
    return None


def decide_max_prefix(count: int, limit: int | None, action: MaxPrefixAction) -> MaxPrefixDecision:
    """What to do when a peer would hold ``count`` accepted paths (the new one
    included) under ``limit`` (``None``: no limit)."""
    if limit is None or count <= limit:
        return MaxPrefixDecision.ACCEPT
    if action is MaxPrefixAction.CLOSE:
        return MaxPrefixDecision.CLOSE
    return MaxPrefixDecision.DROP


class RejectCounts:
    """Refused paths per (peer, reason), only ever growing: the node exports
    them as a Prometheus counter, which must never go down (a peer going down
    keeps its counts)."""

    def __init__(self) -> None:
        self._counts: Counter[tuple[IPAddress, RejectReason]] = Counter()

    def add(self, peer: IPAddress, reason: RejectReason, n: int = 1) -> None:
        if n < 0:
            raise ValueError("reject counts only grow")
        self._counts[(peer, reason)] += n

    def get(self, peer: IPAddress, reason: RejectReason) -> int:
        return self._counts.get((peer, reason), 0)

    def for_peer(self, peer: IPAddress) -> dict[str, int]:
        """Reason name -> count."""
        return {r.value: n for (p, r), n in self._counts.items() if p == peer}

    def total(self, peer: IPAddress | None = None) -> int:
        return sum(n for (p, _), n in self._counts.items() if peer is None or p == peer)

    def items(self) -> Iterable[tuple[IPAddress, RejectReason, int]]:
        """(peer, reason, count) for every non-zero pair, in a stable order."""
        for (peer, reason), n in sorted(
            self._counts.items(), key=lambda kv: (kv[0][0].version, int(kv[0][0]), kv[0][1].value)
        ):
            yield peer, reason, n
