"""Best path selection as data: which of several paths to one prefix wins,
which paths share traffic (ECMP), and why. Pure: no I/O, no clock.

``COMPARATORS`` is the ordered tuple of steps; each is ``(a, b) -> Decision``
naming the winner (or a tie) and a reason:

1. ``local-pref``   higher LOCAL_PREF; a path without one counts as 100.
2. ``as-path``      shorter AS_PATH.
3. ``origin``       lower ORIGIN (IGP < EGP < INCOMPLETE).
4. ``med``          lower MED, compared **only between paths from the same
                    neighbour AS** (the first AS of the AS path; paths with an
                    empty AS path, from inside our AS, form one group). A
                    missing MED counts as 0, as RFC 4271 9.1.2.2 (c) says and
                    BIRD does. Paths from different neighbour ASes tie here.
5. ``ebgp``         a path learned over eBGP beats one learned over iBGP.
6. ``router-id``    lower ORIGINATOR_ID if the path has one (reflected),
                    otherwise lower BGP router id of the peer (RFC 4456 9);
                    an unknown router id loses.
7. ``cluster-list`` shorter CLUSTER_LIST (RFC 4456 9).
8. ``peer-address`` lower peer address (IPv4 before IPv6).

Equal cost: paths that tie through steps 1-5 (local-pref, as-path, origin,
med, ebgp) are equal; steps 6-8 only break the tie to name one best path.
That is ``ECMP_STEPS``, the cut BIRD's ``merge paths`` makes
(``bgp_rte_mergable``: preference, AS path length, origin, MED, eBGP/iBGP)
and FRR's ``maximum-paths`` makes (equal up to, not including, router id).
Paths through different neighbour ASes with AS paths of the same length
share traffic, as in BIRD and FRR's ``bestpath as-path multipath-relax``.

Why elimination and not a pairwise sort: with MED compared only inside one
neighbour AS the pairwise order is not transitive (A beats B on MED, B beats
C on router id, C beats A on router id), so "keep the better of the best so
far and the next arrival" depends on arrival order. ``decide_best`` instead
follows RFC 4271 9.1.2.2: at each step, drop every candidate that some other
remaining candidate beats at that step; whatever survives every step is the
best path, independent of the order paths arrived in (what Cisco calls
deterministic MED). After step 8 one path is left, because a prefix has at
most one path per peer.

Each step is a ``Step``: a key (lower is better), an optional group (MED's
neighbour AS: keys are only compared inside a group) and the words for its
reason. The same value is both the pairwise comparator (``step(a, b)``) and
what elimination uses (keep the lowest key of each group), so one pass costs
O(paths) per step and the two views cannot disagree.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from netaddr import IPAddress

from bgpd.model import Path

DEFAULT_LOCAL_PREF = 100


class Winner(enum.Enum):
    A = "a"
    B = "b"
    TIE = "tie"


@dataclass(frozen=True)
class Decision:
    winner: Winner
    reason: str  # "" for a tie


TIE = Decision(Winner.TIE, "")


@dataclass(frozen=True)
class Step:
    """One step of the decision process, callable as ``(a, b) -> Decision``."""

    name: str
    better: str  # how the winner is better: "higher local preference"
    key: Callable[[Path], Any]  # lower wins
    show: Callable[[Path], object]  # the value as the reason prints it
    group: Callable[[Path], Hashable] | None = None  # compare only within a group

    def __call__(self, a: Path, b: Path) -> Decision:
        if self.group is not None and self.group(a) != self.group(b):
            return TIE
        ka, kb = self.key(a), self.key(b)
        if ka == kb:
            return TIE
        win, lose = (a, b) if ka < kb else (b, a)
        reason = f"{self.name}: {self.better} ({self.show(win)} vs {self.show(lose)})"
        return Decision(Winner.A if win is a else Winner.B, reason)

    def survivors(self, paths: Sequence[Path]) -> list[Path]:
        """The paths no other path beats at this step."""
        if self.group is None:
            keys = [self.key(p) for p in paths]
            low = min(keys)
            return [p for p, k in zip(paths, keys, strict=True) if k == low]
        lows: dict[Hashable, Any] = {}
        keyed = []
        for p in paths:
            g, k = self.group(p), self.key(p)
            keyed.append((p, g, k))
            if g not in lows or k < lows[g]:
                lows[g] = k
        return [p for p, g, k in keyed if k == lows[g]]


Comparator = Callable[[Path, Path], Decision]


def _local_pref(path: Path) -> int:
    lp = path.attrs.local_pref
    return DEFAULT_LOCAL_PREF if lp is None else lp


def neighbour_as(path: Path) -> int | None:
    """The AS a path came from, for MED: the first AS of its AS path, or
    ``None`` for a path from inside our own AS (empty AS path)."""
    return path.attrs.as_path[0] if path.attrs.as_path else None


def _router_id(path: Path) -> IPAddress | None:
    originator = path.attrs.originator_id
    return path.peer_router_id if originator is None else originator


def _router_id_key(path: Path) -> tuple[int, int, int]:
    rid = _router_id(path)
    if rid is None:
        return (1, 0, 0)  # unknown: loses to any known id
    return (0, rid.version, int(rid))


local_pref = Step("local-pref", "higher local preference", lambda p: -_local_pref(p), _local_pref)
as_path = Step(
    "as-path", "shorter AS path", lambda p: len(p.attrs.as_path), lambda p: len(p.attrs.as_path)
)
origin = Step("origin", "lower origin", lambda p: p.attrs.origin, lambda p: p.attrs.origin.name)
med = Step(
    "med",
    "lower MED from the same neighbour AS",
    lambda p: p.attrs.med or 0,
    lambda p: p.attrs.med or 0,
    group=neighbour_as,
)
ebgp = Step(
    "ebgp",
    "eBGP over iBGP",
    lambda p: not p.ebgp,
    lambda p: "eBGP" if p.ebgp else "iBGP",
)
router_id = Step("router-id", "lower originator/router id", _router_id_key, _router_id)
cluster_list = Step(
    "cluster-list",
    "shorter cluster list",
    lambda p: len(p.attrs.cluster_list),
    lambda p: len(p.attrs.cluster_list),
)
peer_address = Step(
    "peer-address",
    "lower peer address",
    lambda p: (p.peer.version, int(p.peer)),
    lambda p: p.peer,
)

COMPARATORS: tuple[Step, ...] = (
    local_pref,
    as_path,
    origin,
    med,
    ebgp,
    router_id,
    cluster_list,
    peer_address,
)

# Steps whose tie makes paths equal-cost (see the module docstring).
ECMP_STEPS: tuple[Step, ...] = COMPARATORS[:5]
_TIEBREAK_STEPS: tuple[Step, ...] = COMPARATORS[5:]


def compare(a: Path, b: Path, steps: Sequence[Comparator] = COMPARATORS) -> Decision:
    """The first step that separates ``a`` and ``b``: a pairwise view for
    logs and tests. Selection itself eliminates (see the module docstring)."""
    for step in steps:
        decision = step(a, b)
        if decision.winner is not Winner.TIE:
            return decision
    return TIE


@dataclass(frozen=True)
class Ranking:
    best: Path
    reason: str  # the step that eliminated the last rival, or "only path"
    equal_cost: tuple[Path, ...]  # best first, then tie-break order


def _eliminate(candidates: list[Path], steps: Sequence[Step]) -> tuple[list[Path], str]:
    """Run ``steps``; the survivors and, if a step left exactly one of several,
    that step's reason."""
    for step in steps:
        if len(candidates) == 1:
            break
        survivors = step.survivors(candidates)
        if len(survivors) == 1:
            # Name the closest rival, so the reason does not depend on order.
            runner_up = min((p for p in candidates if p is not survivors[0]), key=step.key)
            return survivors, step(survivors[0], runner_up).reason
        candidates = survivors
    return candidates, ""


def _tiebreak_key(path: Path) -> tuple[Any, ...]:
    return tuple(step.key(path) for step in _TIEBREAK_STEPS)


def rank(paths: Sequence[Path]) -> Ranking:
    """Best path, why, and the equal-cost set, in one pass over the steps."""
    if not paths:
        raise ValueError("rank needs at least one path")
    if len(paths) == 1:
        return Ranking(paths[0], "only path", (paths[0],))
    if len(paths) == 2:
        # Two paths: elimination is exactly the pairwise comparison (the
        # common case in a mesh, and 3x cheaper).
        a, b = paths
        decision = compare(a, b, ECMP_STEPS)
        if decision.winner is not Winner.TIE:
            best = a if decision.winner is Winner.A else b
            return Ranking(best, decision.reason, (best,))
        decision = compare(a, b, _TIEBREAK_STEPS)
        if decision.winner is Winner.TIE:
            raise ValueError(f"several paths from the same peer for one prefix: {a.peer}")
        best, other = (a, b) if decision.winner is Winner.A else (b, a)
        return Ranking(best, decision.reason, (best, other))
    equal, reason = _eliminate(list(paths), ECMP_STEPS)
    if reason:
        return Ranking(equal[0], reason, (equal[0],))
    (best, *rest), reason = _eliminate(equal, _TIEBREAK_STEPS)
    if rest:
        peers = sorted(str(p.peer) for p in (best, *rest))
        raise ValueError(f"several paths from the same peer for one prefix: {peers}")
    others = sorted((p for p in equal if p is not best), key=_tiebreak_key)
    return Ranking(best, reason, (best, *others))


def decide_best(paths: Sequence[Path]) -> tuple[Path, str]:
    """The best of ``paths`` (non-empty, at most one per peer) and the reason
    it won: the step that eliminated the last rival, or ``only path``."""
    ranking = rank(paths)
    return ranking.best, ranking.reason


def decide_ecmp(paths: Sequence[Path], max_paths: int) -> tuple[Path, ...]:
    """The equal-cost set: paths tying with the best through ``ECMP_STEPS``,
    best first, the rest in tie-break order (router id, cluster list, peer
    address), at most ``max_paths`` (at least one: the best)."""
    if max_paths < 1:
        raise ValueError("max_paths must be at least 1")
    if not paths:
        return ()
    return rank(paths).equal_cost[:max_paths]
