"""The RIB: an Adj-RIB-In per peer (accepted paths only), the Loc-RIB (the
best route and its ECMP next hops per prefix), graceful-restart stale marks,
import policy and max-prefix on the way in. Pure: no I/O, no clock (the node
owns the graceful-restart timer and calls ``peer_gr_expired``).

Every mutating call returns the prefixes whose best route changed (appeared,
disappeared, or got other next hops) as a tuple of distinct prefixes; the
work done is proportional to the prefixes the call touches, never to the
table size. The RIB also gathers them until its consumer (the dataplane)
takes them: ``take_changes`` hands over each changed prefix once with its
best route now (``None``: gone), so the consumer's copy of the Loc-RIB stays
equal to ``best_routes`` at the cost of the changes. Both it and
``take_all`` hand over ``(prefix, route)`` pairs, not a dict keyed by
prefix, for the reason below.

Internally prefixes are keyed by ``(version, network number, length)``
integers: hashing a netaddr ``IPNetwork`` costs ~1.5 us (it recomputes its
first and last address), about as much as everything else the RIB does per
prefix. For the same reason ``changed`` is a tuple, not a set.

Import: each announced prefix is checked by ``policy.decide_import``; a
refused path is counted per peer and reason, not stored, and withdraws the
path the peer had for that prefix before (RFC 7606 "treat-as-withdraw": the
newest announcement replaces the old one, and the newest is unusable). A new
prefix beyond the peer's max-prefix limit is refused with ``max-prefix``; with
the ``close`` action the result also says to close the session.

Graceful restart (RFC 4724, receiving side): ``peer_down(peer, graceful=True)``
keeps the peer's paths and marks them stale; re-announcements clear the mark;
``peer_eor`` (End-of-RIB after the restart) or ``peer_gr_expired`` (the
restart timer ran out) drop whatever is still stale. Stale paths compete in
best path like fresh ones (BIRD does the same unless told otherwise).

Counts: ``accepted_count`` is the paths held from a peer, ``received_count``
what the peer announces now (held plus refused: the keys of refused
prefixes are kept, not their paths, until withdrawn, accepted or the peer
goes down). Both are current counts, not totals.

Policy changes: ``set_context`` re-checks stored paths against the new
context and drops what it now refuses. Paths refused earlier were not kept,
so a context that accepts more (a pool enabled, a block released) needs a
route refresh from the peers to learn them: ``set_context`` says so.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from netaddr import IPAddress, IPNetwork

from bgpd import bestpath
from bgpd.model import BestRoute, Path, UpdateEvent
from bgpd.policy import (
    ImportContext,
    MaxPrefixAction,
    MaxPrefixDecision,
    RejectCounts,
    RejectReason,
    decide_import,
    decide_max_prefix,
)


@dataclass(frozen=True)
class PeerInfo:
    """What the RIB needs to know about a peer beyond its updates."""

    address: IPAddress
    asn: int
    router_id: IPAddress | None
    ebgp: bool
    max_prefix: int | None = None
    max_prefix_action: MaxPrefixAction = MaxPrefixAction.DROP


Changed = tuple[IPNetwork, ...]

# The paths best path chooses from for one prefix: the Path itself while one
# peer has the prefix (the common case; a dict per prefix costs ~200 bytes),
# else peer -> Path.
Candidates = Path | dict[IPAddress, Path]


def _paths(candidates: Candidates) -> list[Path]:
    return list(candidates.values()) if isinstance(candidates, dict) else [candidates]


# (version, network number, prefix length): hashes ~20x faster than IPNetwork
Key = tuple[int, int, int]


def prefix_key(prefix: IPNetwork) -> Key:
    """The RIB's key for a prefix; host bits (10.0.0.1/24) are ignored as
    IPNetwork equality ignores them."""
    shift = (32 if prefix.version == 4 else 128) - prefix.prefixlen
    return (prefix.version, prefix.value >> shift, prefix.prefixlen)


@dataclass(frozen=True)
class ApplyResult:
    changed: Changed
    rejected: tuple[tuple[IPNetwork, RejectReason], ...] = ()  # for the node to log
    close_session: bool = False  # max-prefix exceeded with the close action


@dataclass(frozen=True)
class ContextResult:
    changed: Changed
    refresh_needed: bool  # the new context may accept paths refused before


class Rib:
    def __init__(self, context: ImportContext, max_paths: int = 1) -> None:
        if max_paths < 1:
            raise ValueError("max_paths must be at least 1")
        self._ctx = context
        self._max_paths = max_paths
        self._adj_in: dict[IPAddress, dict[Key, Path]] = {}
        self._candidates: dict[Key, Candidates] = {}
        self._best: dict[Key, BestRoute] = {}
        self._stale: dict[IPAddress, set[Key]] = {}
        self._refused: dict[IPAddress, set[Key]] = {}
        # IPv6 paths per peer (the rest of its Adj-RIB-In is IPv4): max-prefix
        # counts each family on its own, as BIRD's per-channel import limit
        self._v6_count: Counter[IPAddress] = Counter()
        # one (next_hop,) tuple per next hop, shared by every single-path
        # BestRoute through it (~5 MB at 100k prefixes)
        self._single_hops: dict[IPAddress, tuple[IPAddress]] = {}
        self.rejects = RejectCounts()
        self._untaken: dict[Key, IPNetwork] = {}  # changed since take_changes

    # ---- reading ------------------------------------------------------------

    @property
    def context(self) -> ImportContext:
        return self._ctx

    def best_routes(self) -> dict[IPNetwork, BestRoute]:
        """The whole Loc-RIB (a new dict each call). For incremental work use
        ``best`` with the changed prefixes each call returns."""
        return {route.prefix: route for route in self._best.values()}

    def best(self, prefix: IPNetwork) -> BestRoute | None:
        return self._best.get(prefix_key(prefix))

    @property
    def changes_pending(self) -> bool:
        return bool(self._untaken)

    def take_changes(self) -> list[tuple[IPNetwork, BestRoute | None]]:
        """Each prefix whose best route changed since the last call, once,
        with its best route now (``None``: no route any more)."""
        untaken, self._untaken = self._untaken, {}
        best = self._best
        out: list[tuple[IPNetwork, BestRoute | None]] = []
        for key, prefix in untaken.items():
            route = best.get(key)
            out.append((prefix, None) if route is None else (route.prefix, route))
        return out

    def take_all(self) -> list[tuple[IPNetwork, BestRoute]]:
        """The whole Loc-RIB as (prefix, best route) pairs, forgetting the
        changes not taken yet: for a consumer that rebuilds from scratch."""
        self._untaken = {}
        return [(route.prefix, route) for route in self._best.values()]

    def adj_rib_in(self, peer: IPAddress) -> dict[IPNetwork, Path]:
        return {path.prefix: path for path in self._adj_in.get(peer, {}).values()}

    def candidates(self, prefix: IPNetwork) -> tuple[Path, ...]:
        found = self._candidates.get(prefix_key(prefix))
        return () if found is None else tuple(_paths(found))

    def accepted_count(self, peer: IPAddress, version: int | None = None) -> int:
        """Accepted paths from ``peer``, of one IP version or of both."""
        total = len(self._adj_in.get(peer, ()))
        if version is None:
            return total
        v6 = self._v6_count.get(peer, 0)
        return v6 if version == 6 else total - v6

    def received_count(self, peer: IPAddress) -> int:
        return len(self._adj_in.get(peer, ())) + len(self._refused.get(peer, ()))

    def stale_count(self, peer: IPAddress) -> int:
        return len(self._stale.get(peer, ()))

    def peers(self) -> frozenset[IPAddress]:
        return frozenset(self._adj_in)

    # ---- writing ------------------------------------------------------------

    def apply_update(self, event: UpdateEvent, peer: PeerInfo) -> ApplyResult:
        if event.peer != peer.address:
            raise ValueError(f"update from {event.peer} applied as peer {peer.address}")
        touched: list[Key] = []
        rejected: list[tuple[IPNetwork, RejectReason]] = []
        close = False
        address = peer.address
        adj = self._adj_in.setdefault(address, {})
        stale = self._stale.get(address)
        refused = self._refused.setdefault(address, set())
        for prefix in event.withdrawn:
            key = prefix_key(prefix)
            if self._remove(address, key, adj):
                touched.append(key)
            if stale:
                stale.discard(key)
            refused.discard(key)
        ctx = self._ctx
        for prefix, attrs in event.announced:
            key = prefix_key(prefix)
            path = Path(prefix, address, event.peer_as, peer.router_id, peer.ebgp, attrs)
            reason = decide_import(ctx, path)
            if reason is None and key not in adj:
                v6 = self._v6_count[address]
                count = (v6 if key[0] == 6 else len(adj) - v6) + 1
                decision = decide_max_prefix(count, peer.max_prefix, peer.max_prefix_action)
                if decision is not MaxPrefixDecision.ACCEPT:
                    reason = RejectReason.MAX_PREFIX
                    close = close or decision is MaxPrefixDecision.CLOSE
            if stale:
                stale.discard(key)
            if reason is not None:
                self.rejects.add(address, reason)
                rejected.append((prefix, reason))
                refused.add(key)
                if self._remove(address, key, adj):
                    touched.append(key)
                continue
            refused.discard(key)
            if key[0] == 6 and key not in adj:
                self._v6_count[address] += 1
            adj[key] = path
            self._add_candidate(key, path)
            touched.append(key)
        return ApplyResult(self._recompute(touched), tuple(rejected), close)

    def set_peer_limit(self, peer: PeerInfo) -> ApplyResult:
        """The peer's max-prefix changed: if it now holds more than the limit,
        ``drop`` keeps the paths it sent first and refuses the rest (counted
        as max-prefix), ``close`` asks to close the session. A raised limit
        cannot take back what was refused (paths are not kept): the caller
        asks the peer for a route refresh (``decide_limit_raised``)."""
        adj = self._adj_in.get(peer.address, {})
        over = [
            (version, decision)
            for version in (4, 6)
            if (
                decision := decide_max_prefix(
                    self.accepted_count(peer.address, version),
                    peer.max_prefix,
                    peer.max_prefix_action,
                )
            )
            is not MaxPrefixDecision.ACCEPT
        ]
        if any(decision is MaxPrefixDecision.CLOSE for _, decision in over):
            return ApplyResult((), (), close_session=True)
        if not over or peer.max_prefix is None:
            return ApplyResult(())
        excess = [  # each family keeps the paths it sent first: dicts keep arrival order
            key
            for version, _ in over
            for key in [k for k in adj if k[0] == version][peer.max_prefix :]
        ]
        refused = self._refused.setdefault(peer.address, set())
        rejected = []
        for key in excess:
            prefix = adj[key].prefix
            self._remove(peer.address, key, adj)
            stale = self._stale.get(peer.address)
            if stale:
                stale.discard(key)
            refused.add(key)
            self.rejects.add(peer.address, RejectReason.MAX_PREFIX)
            rejected.append((prefix, RejectReason.MAX_PREFIX))
        return ApplyResult(self._recompute(excess), tuple(rejected))

    def peer_down(self, peer: IPAddress, graceful: bool = False) -> Changed:
        """The session went down. ``graceful``: GR was negotiated and the peer
        may come back: keep its paths, marked stale."""
        self._refused.pop(peer, None)
        adj = self._adj_in.get(peer)
        if not adj:
            self._adj_in.pop(peer, None)
            self._stale.pop(peer, None)
            return ()
        if graceful:
            self._stale.setdefault(peer, set()).update(adj)
            return ()
        return self._drop_peer(peer)

    def peer_eor(self, peer: IPAddress) -> Changed:
        """End-of-RIB from the peer: what it did not re-announce is gone."""
        return self._sweep_stale(peer)

    def peer_gr_expired(self, peer: IPAddress) -> Changed:
        """The restart timer ran out before End-of-RIB: drop the stale paths."""
        return self._sweep_stale(peer)

    def set_context(self, context: ImportContext) -> ContextResult:
        old, self._ctx = self._ctx, context
        if _only_own_blocks_grew(old, context):
            # The common case (this node claimed a block): only paths for the
            # new blocks themselves can be refused now.
            new_blocks = (prefix_key(b) for b in context.own_blocks - old.own_blocks)
            suspects: list[Key] = [k for k in new_blocks if k in self._candidates]
        else:
            suspects = list(self._candidates)
        touched: list[Key] = []
        for key in suspects:
            for path in _paths(self._candidates[key]):
                if decide_import(context, path) is not None:
                    peer = path.peer
                    self._remove(peer, key, self._adj_in[peer])
                    stale = self._stale.get(peer)
                    if stale:
                        stale.discard(key)
                    self._refused.setdefault(peer, set()).add(key)
                    touched.append(key)
        return ContextResult(self._recompute(touched), _may_accept_more(old, context))

    # ---- internals ----------------------------------------------------------

    def _remove(self, peer: IPAddress, key: Key, adj: dict[Key, Path]) -> bool:
        if adj.pop(key, None) is None:
            return False
        if key[0] == 6:
            self._v6_count[peer] -= 1
        self._drop_candidate(key, peer)
        return True

    def _add_candidate(self, key: Key, path: Path) -> None:
        found = self._candidates.get(key)
        if found is None:
            self._candidates[key] = path
        elif isinstance(found, dict):
            found[path.peer] = path
        elif found.peer == path.peer:
            self._candidates[key] = path
        else:
            self._candidates[key] = {found.peer: found, path.peer: path}

    def _drop_candidate(self, key: Key, peer: IPAddress) -> None:
        """Drop ``peer``'s candidate for ``key`` (the caller knows it is there)."""
        found = self._candidates[key]
        if not isinstance(found, dict):
            del self._candidates[key]
            return
        del found[peer]
        if len(found) == 1:
            (self._candidates[key],) = found.values()

    def _drop_peer(self, peer: IPAddress) -> Changed:
        """The whole Adj-RIB-In of ``peer`` in one sweep (a peer lost with
        50k paths): a prefix only it had loses its best route right here,
        with no best path to run; only prefixes other peers also have go
        through ``_recompute``."""
        adj = self._adj_in.pop(peer, {})
        self._stale.pop(peer, None)
        self._refused.pop(peer, None)
        self._v6_count.pop(peer, None)
        candidates, best_map, untaken = self._candidates, self._best, self._untaken
        gone: list[IPNetwork] = []
        shared: list[Key] = []
        for key in adj:
            found = candidates[key]
            if isinstance(found, dict):
                self._drop_candidate(key, peer)
                shared.append(key)
                continue
            del candidates[key]
            old = best_map.pop(key, None)
            if old is not None:
                gone.append(old.prefix)
                untaken[key] = old.prefix
        return (*gone, *self._recompute(shared))

    def _sweep_stale(self, peer: IPAddress) -> Changed:
        stale = self._stale.pop(peer, None)
        if not stale:
            return ()
        adj = self._adj_in.get(peer, {})
        touched = [k for k in stale if self._remove(peer, k, adj)]
        return self._recompute(touched)

    def _recompute(self, keys: Iterable[Key]) -> Changed:
        changed: list[IPNetwork] = []
        seen: set[Key] = set()
        best_map, candidates, untaken = self._best, self._candidates, self._untaken
        for key in keys:
            if key in seen:
                continue
            seen.add(key)
            old = best_map.get(key)
            paths = candidates.get(key)
            if paths is None:
                if old is not None:
                    del best_map[key]
                    changed.append(old.prefix)
                    untaken[key] = old.prefix
                continue
            new = self._decide(paths)
            best_map[key] = new
            if old is None or old.next_hops != new.next_hops:
                changed.append(new.prefix)
                untaken[key] = new.prefix
        return tuple(changed)

    def _decide(self, candidates: Candidates) -> BestRoute:
        if not isinstance(candidates, dict):
            nh = candidates.attrs.next_hop
            hops = self._single_hops.get(nh)
            if hops is None:
                hops = self._single_hops[nh] = (nh,)
            return BestRoute(candidates.prefix, hops, "only path")
        ranking = bestpath.rank(list(candidates.values()))
        next_hops = [ranking.best.attrs.next_hop]
        for path in ranking.equal_cost[1:]:
            if len(next_hops) >= self._max_paths:
                break
            if path.attrs.next_hop not in next_hops:
                next_hops.append(path.attrs.next_hop)
        return BestRoute(ranking.best.prefix, tuple(next_hops), ranking.reason)


def decide_limit_raised(old: int | None, new: int | None) -> bool:
    """A max-prefix change after which paths refused for it may be accepted."""
    return old is not None and (new is None or new > old)


def _only_own_blocks_grew(old: ImportContext, new: ImportContext) -> bool:
    return (
        old.pools == new.pools
        and old.allow == new.allow
        and old.allow_default == new.allow_default
        and old.own_addresses == new.own_addresses
        and old.local_as == new.local_as
        and old.own_blocks <= new.own_blocks
    )


def _may_accept_more(old: ImportContext, new: ImportContext) -> bool:
    return not (
        set(new.pools) <= set(old.pools)
        and set(new.allow) <= set(old.allow)
        and (old.allow_default or not new.allow_default)
        and old.own_blocks <= new.own_blocks
        and old.own_addresses <= new.own_addresses
        and old.local_as == new.local_as
    )
