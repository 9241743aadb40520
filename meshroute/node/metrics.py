"""Prometheus metrics of the node, computed at scrape time from the state
its parts own (a collector, not counters sprinkled through the code)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING

from bgpd.model import SessionState
from meshroute.runtime.exposition import (
    CounterFamily,
    Family,
    GaugeFamily,
    Sample,
    SummaryFamily,
    SummarySample,
)

if TYPE_CHECKING:
    from bgpd.sessions import Sessions
    from meshroute.node.process import NodeProcess


def node_metrics(n: NodeProcess) -> Iterator[Family]:
    sessions, speaker = n.sessions, n.speaker
    if sessions is None or speaker is None:
        return
    states = Counter(sessions.state(p) for p in n.peers)
    yield GaugeFamily(
        "meshroute_bgp_peers",
        "BGP peers by session state",
        ("state",),
        tuple(Sample((s.value,), states.get(s, 0)) for s in SessionState),
    )

    peers = sorted(n.peers.items())
    yield CounterFamily(
        "meshroute_bgp_prefixes_received",
        "prefixes announced by each peer since the node started (route refreshes "
        "and re-announcements count again; /status shows the current count)",
        ("peer",),
        tuple(Sample((str(p),), sessions.received.get(p, 0)) for p, _ in peers),
    )
    yield GaugeFamily(
        "meshroute_bgp_prefixes_accepted",
        "prefixes held from each peer, per address family its session carries",
        ("peer", "family"),
        tuple(
            Sample((str(p), f"ipv{v}"), n.rib.accepted_count(p, v))
            for p, plan in peers
            for v in plan.families
        ),
    )
    yield CounterFamily(
        "meshroute_bgp_prefixes_rejected",
        "prefixes refused by import policy",
        ("peer", "reason"),
        tuple(
            Sample((str(peer), reason.value), count)
            for peer, reason, count in n.rib.rejects.items()
        ),
    )

    yield from _bfd_metrics(n, sessions)

    yield CounterFamily(
        "meshroute_bgp_malformed_lines",
        "lines from ExaBGP that could not be decoded",
        samples=(Sample((), speaker.stats.malformed),),
    )

    routes: tuple[Sample, ...] = ()
    if n.reconciler is not None:
        rec = n.reconciler
        kinds = Counter(r.kind.value for r in rec.actual_routes.values())
        routes = tuple(Sample((kind,), count) for kind, count in sorted(kinds.items()))
        yield CounterFamily(
            "meshroute_reconcile_ops",
            "kernel operations by the reconciler",
            ("op",),
            tuple(Sample((op,), count) for op, count in sorted(rec.totals.items())),
        )
        yield SummaryFamily(
            "meshroute_reconcile_seconds",
            "time spent in reconcile passes, by full resync or incremental",
            ("pass",),
            tuple(
                SummarySample((kind,), rec.pass_count[kind], rec.pass_seconds[kind])
                for kind in ("full", "incremental")
            ),
        )
    yield GaugeFamily(
        "meshroute_routes_programmed", "kernel routes meshroute owns, by kind", ("kind",), routes
    )

    yield GaugeFamily(
        "meshroute_routes_unroutable",
        "best routes the planner could not install",
        samples=(Sample((), n.unroutable),),
    )

    if n.view is not None:
        per_pool: Counter[str] = Counter()
        per_pool_used: Counter[str] = Counter()
        for b, _ in n.view.ipam.blocks.values():
            if b.affinity == n.config.node_name:
                per_pool[b.pool] += 1
                per_pool_used[b.pool] += b.workload_count
        pools = sorted(per_pool)
        yield GaugeFamily(
            "meshroute_ipam_blocks",
            "IPAM blocks affine to this node",
            ("pool",),
            tuple(Sample((pool,), per_pool[pool]) for pool in pools),
        )
        yield GaugeFamily(
            "meshroute_ipam_addresses_allocated",
            "workload addresses in this node's blocks",
            ("pool",),
            tuple(Sample((pool,), per_pool_used[pool]) for pool in pools),
        )

    yield from _policy_metrics(n)


def _policy_metrics(n: NodeProcess) -> Iterator[Family]:
    rec = n.policy.reconciler
    labels = ("policy", "direction", "rule", "action")
    rules = [
        ((r["policy"], r["direction"], r["rule"], r["action"]), r) for r in n.policy.rule_counters()
    ]
    yield CounterFamily(
        "meshroute_policy_packets",
        "packets matched per policy rule (allowed, denied, passed, logged) and per"
        " endpoint default deny",
        labels,
        tuple(Sample(key, r["packets"]) for key, r in rules),
    )
    yield CounterFamily(
        "meshroute_policy_bytes",
        "bytes matched per policy rule and default deny",
        labels,
        tuple(Sample(key, r["bytes"]) for key, r in rules),
    )
    yield CounterFamily(
        "meshroute_policy_transactions",
        "nft transactions applied by the policy reconciler",
        samples=(Sample((), rec.applied),),
    )
    yield CounterFamily(
        "meshroute_policy_transactions_refused",
        "nft transactions refused (last good kept)",
        samples=(Sample((), rec.failures),),
    )
    yield GaugeFamily(
        "meshroute_policy_endpoints",
        "workload endpoints known",
        samples=(Sample((), n.policy.endpoint_count),),
    )
    yield GaugeFamily(
        "meshroute_policy_applied_revision",
        "etcd revision of the newest policy inputs the kernel enforces",
        samples=(Sample((), n.policy.applied_revision()),),
    )


def _bfd_metrics(n: NodeProcess, sessions: Sessions) -> Iterator[Family]:
    yield GaugeFamily(
        "meshroute_bfd_session_up",
        "1 when the peer's BFD session is Up",
        ("peer",),
        tuple(
            Sample((str(s.peer),), 1 if s.state.name == "UP" else 0)
            for s in sorted(n.bfd.status(), key=lambda s: s.peer)
        ),
    )
    yield CounterFamily(
        "meshroute_bfd_session_downs",
        "BGP sessions this node closed because BFD went down",
        ("peer",),
        tuple(Sample((str(peer),), count) for peer, count in sorted(sessions.bfd_downs.items())),
    )
    yield CounterFamily(
        "meshroute_bfd_packets_dropped",
        "BFD packets dropped, by reason",
        ("reason",),
        tuple(Sample((reason,), count) for reason, count in sorted(n.bfd.drops.items())),
    )
    yield GaugeFamily(
        "meshroute_bgp_last_down_reason",
        "why each peer's BGP session last went down (value 1)",
        ("peer", "reason"),
        tuple(
            Sample((str(peer), reason), 1) for peer, reason in sorted(sessions.down_reason.items())
        ),
    )
