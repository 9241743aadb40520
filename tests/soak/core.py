"""The soak's pure parts: the fault schedule, the invariant checks and
the growth (slope) of a resource series. No I/O: the runner feeds them
what it measured."""

from __future__ import annotations

import ipaddress
import math
import random
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

FAULT_KINDS = (
    "node_restart",  # SIGTERM, started again as the lab starts it
    "node_kill9",  # SIGKILL, started again as the lab starts it
    "exabgp_kill",  # SIGKILL to the node's ExaBGP
    "etcd_stop",  # etcd frozen (SIGSTOP) for ETCD_STOP_S, then SIGCONT
    "tor_reset",  # ``birdc restart`` of one ToR's session with a node
    "pool_block_size",  # the pods move to a new pool of another blockSize (see plan_pool_move)
)
NODE_KINDS = ("node_restart", "node_kill9", "exabgp_kill", "tor_reset")
ETCD_STOP_S = 20.0
BLOCK_SIZES = (28, 26)  # away from the lab's /26 and back again

K = TypeVar("K")


@dataclass
class FaultRecord:
    """A fault as injected: when it started and recovered, what it did."""

    kind: str
    target: str
    start_s: float
    end_s: float | None = None
    outcome: str = ""


@dataclass(frozen=True)
class Fault:
    """One fault, injected ``gap_s`` after the previous one has recovered
    (so at most one fault is in progress at any time)."""

    gap_s: float
    kind: str
    target: str  # a node name; the block size for pool_block_size; "" for etcd


def plan_faults(
    seed: int,
    duration_s: float,
    nodes: Sequence[str],
    *,
    gap_s: tuple[float, float] = (8.0, 25.0),
) -> list[Fault]:
    """Enough faults to fill ``duration_s`` even if each recovered at once:
    the kinds in shuffled rounds (every kind once per round), each node
    fault on a random node, block sizes alternating. Same seed, same plan."""
    if not nodes:
        raise ValueError("plan_faults needs at least one node")
    lo, hi = gap_s
    if not 0 < lo <= hi:
        raise ValueError(f"gap_s {gap_s}: need 0 < low <= high")
    rng = random.Random(seed)
    count = int(duration_s // lo) + 1
    out: list[Fault] = []
    sizes = 0
    while len(out) < count:
        kinds = list(FAULT_KINDS)
        rng.shuffle(kinds)
        for kind in kinds:
            if kind in NODE_KINDS:
                target = rng.choice(list(nodes))
            elif kind == "pool_block_size":
                target = str(BLOCK_SIZES[sizes % len(BLOCK_SIZES)])
                sizes += 1
            else:
                target = ""
            out.append(Fault(round(rng.uniform(lo, hi), 1), kind, target))
    return out[:count]


def duplicate_addresses(pods: Mapping[str, str]) -> dict[str, list[str]]:
    """Addresses held by more than one live pod (pod id -> address), with
    the pods holding each."""
    by_addr: dict[str, list[str]] = {}
    for pod, addr in pods.items():
        by_addr.setdefault(addr, []).append(pod)
    return {a: sorted(ps) for a, ps in by_addr.items() if len(ps) > 1}


def orphan_routes(
    routes: Iterable[tuple[str, str]], owned_blocks: Iterable[str], pools: Iterable[str]
) -> set[tuple[str, str]]:
    """(node, destination) routes into a pool that lie in no block anyone
    owns. Routes outside every pool (the underlay's) are not IPAM's."""
    owned = [ipaddress.ip_network(b) for b in owned_blocks]
    pool_nets = [ipaddress.ip_network(p) for p in pools]
    out = set()
    for node, dst in routes:
        net = ipaddress.ip_network(dst if "/" in dst else f"{dst}/32", strict=False)
        in_pool = any(_within(net, p) for p in pool_nets)
        if in_pool and not any(_within(net, b) for b in owned):
            out.add((node, dst))
    return out


def missing_block_routes(
    routes: Iterable[tuple[str, str]], owners: Mapping[str, str], nodes: Iterable[str]
) -> set[tuple[str, str]]:
    """(node, block) for every block (-> owning host) that a node other
    than its owner has no kernel route for, exactly that prefix."""
    have = {(where, str(ipaddress.ip_network(dst, strict=False))) for where, dst in routes}
    return {
        (n, block)
        for block, owner in owners.items()
        for n in nodes
        if n != owner and (n, str(ipaddress.ip_network(block))) not in have
    }


def _within(a: ipaddress.IPv4Network | ipaddress.IPv6Network, b: object) -> bool:
    return isinstance(b, type(a)) and a.subnet_of(b)  # type: ignore[arg-type]


def track_since(prev: Mapping[K, float], current: Iterable[K], now: float) -> dict[K, float]:
    """When each condition now present was first seen (those gone are dropped)."""
    return {k: prev.get(k, now) for k in current}


def overdue(since: Mapping[K, float], now: float, limit: float) -> list[K]:
    """The conditions present for longer than ``limit`` seconds."""
    return [k for k, t in since.items() if now - t > limit]


def ended(prev: Mapping[K, float], now_since: Mapping[K, float], now: float) -> list[float]:
    """How long each condition that just disappeared lasted."""
    return [now - t for k, t in prev.items() if k not in now_since]


def reachability_due(now: float, last_fault_end: float, fault_active: bool, settle: float) -> bool:
    """Whether pods must reach each other now: no fault in progress and
    ``settle`` seconds since the last one recovered."""
    return not fault_active and now - last_fault_end >= settle


def settled_pods(created: Mapping[str, float], now: float, settle: float) -> list[str]:
    """Pods whose CNI ADD finished at least ``settle`` seconds ago."""
    return sorted(p for p, t in created.items() if now - t >= settle)


@dataclass(frozen=True)
class Growth:
    slope_per_min: float  # least-squares slope, units per minute
    growth_pct: float  # fitted value at the end against the start, in percent
    samples: int
    span_s: float


def growth(samples: Sequence[tuple[float, float]]) -> Growth | None:
    """Least-squares line through (time s, value) samples: its slope and
    how much it rises over the span, relative to its start. None with
    fewer than 3 samples or no time span."""
    n = len(samples)
    if n < 3:
        return None
    ts = [t for t, _ in samples]
    vs = [v for _, v in samples]
    t0, t1 = min(ts), max(ts)
    if t1 <= t0:
        return None
    mt, mv = sum(ts) / n, sum(vs) / n
    var = sum((t - mt) ** 2 for t in ts)
    slope = sum((t - mt) * (v - mv) for t, v in samples) / var
    start = mv + slope * (t0 - mt)
    end = mv + slope * (t1 - mt)
    pct = 100.0 * (end - start) / start if start > 0 else 0.0
    return Growth(slope * 60.0, pct, n, t1 - t0)


def window_start(duration_s: float, steady_s: float = 300.0) -> float:
    """From when growth is measured: minute 5, or the last two thirds of a
    run too short to have a minute 5 worth measuring from."""
    return min(steady_s, duration_s / 3.0)


def measured_from(started_s: float, window_s: float) -> float:
    """From when a node process's growth counts: ``window_s`` into its own
    life (a process the soak restarted warms up like the first one did)."""
    return started_s + window_s


def failures_among_live(
    failing: Iterable[tuple[str, str]], live: Collection[str]
) -> set[tuple[str, str]]:
    """The failed (source, destination) pairs whose pods were both still
    live when the probe ended: a pod the churn deleted meanwhile is no failure."""
    return {(a, b) for a, b in failing if a in live and b in live}


def distribution(values: Sequence[float]) -> dict[str, float] | None:
    """count, min, median, p95 and max (nearest rank) of ``values``; None
    when there are none."""
    if not values:
        return None
    v = sorted(values)

    def rank(q: float) -> float:
        return v[min(len(v) - 1, max(0, math.ceil(q * len(v)) - 1))]

    return {
        "count": len(v),
        "min": round(v[0], 3),
        "p50": round(rank(0.5), 3),
        "p95": round(rank(0.95), 3),
        "max": round(v[-1], 3),
    }


def rates_by_window(times: Iterable[float], start: float, end: float, window: float) -> list[float]:
    """Events a second in each whole ``window`` from ``start`` to ``end``."""
    n = int((end - start) // window)
    counts = [0] * n
    for t in times:
        i = int((t - start) // window)
        if 0 <= i < n:
            counts[i] += 1
    return [c / window for c in counts]


def pool_slots(supernet: str, count: int = 4) -> list[str]:
    """``supernet`` cut into ``count`` (a power of two) equal slots: the
    CIDRs the soak's pools take in turn (pools may not overlap)."""
    net = ipaddress.ip_network(supernet)
    extra = count.bit_length() - 1
    if count < 1 or 1 << extra != count:
        raise ValueError(f"pool_slots: {count} is not a power of two")
    return [str(s) for s in net.subnets(prefixlen_diff=extra)]


@dataclass(frozen=True)
class PoolState:
    name: str
    cidr: str
    disabled: bool
    blocks: int


@dataclass(frozen=True)
class PoolMove:
    """Calico's way to change the block size: retire the disabled pools
    nothing is left in, create a pool of the new size in a free slot and
    disable the pools in use, so new pods take addresses from the new one
    while the old pods leave."""

    delete: tuple[str, ...]
    create: str  # the new pool's name
    cidr: str
    block_size: int
    disable: tuple[str, ...]


def plan_pool_move(
    pools: Sequence[PoolState], slots: Sequence[str], block_size: int, name: str
) -> PoolMove | str:
    """The next move to ``block_size``, or why there is none: every slot is
    still held by a pool with blocks. The new pool takes the first free
    slot after the enabled pool's (a retired slot is reused last)."""
    delete = tuple(sorted(p.name for p in pools if p.disabled and p.blocks == 0))
    kept = [p for p in pools if p.name not in delete]
    taken = {p.cidr for p in kept}
    enabled = [p for p in kept if not p.disabled]
    after = max((slots.index(p.cidr) for p in enabled if p.cidr in slots), default=-1)
    order = [slots[(after + 1 + k) % len(slots)] for k in range(len(slots))]
    free = [s for s in order if s not in taken]
    if not free:
        held = ", ".join(f"{p.name} ({p.blocks} blocks)" for p in kept)
        return f"no free slot for a new pool: {held}"
    return PoolMove(delete, name, free[0], block_size, tuple(sorted(p.name for p in enabled)))
