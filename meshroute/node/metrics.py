"""Prometheus metrics of the node, computed at scrape time from the state
its parts own (a collector, not counters sprinkled through the code)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, SummaryMetricFamily
from prometheus_client.registry import Collector

from bgpd.model import SessionState

if TYPE_CHECKING:
    from bgpd.sessions import Sessions
    from meshroute.node.process import NodeProcess


class NodeCollector(Collector):
    def __init__(self, node: NodeProcess) -> None:
        self.node = node

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily | SummaryMetricFamily]:
        n = self.node
        sessions, speaker = n.sessions, n.speaker
        if sessions is None or speaker is None:
            return
        peers = GaugeMetricFamily(
            "meshroute_bgp_peers", "BGP peers by session state", labels=["state"]
        )
        states = Counter(sessions.state(p) for p in n.peers)
        for s in SessionState:
            peers.add_metric([s.value], states.get(s, 0))
        yield peers

        received = CounterMetricFamily(
            "meshroute_bgp_prefixes_received",
            "prefixes announced by each peer since the node started (route refreshes "
            "and re-announcements count again; /status shows the current count)",
            labels=["peer"],
        )
        accepted = GaugeMetricFamily(
            "meshroute_bgp_prefixes_accepted",
            "prefixes held from each peer, per address family its session carries",
            labels=["peer", "family"],
        )
        for p, plan in sorted(n.peers.items()):
            received.add_metric([str(p)], sessions.received.get(p, 0))
            for v in plan.families:
                accepted.add_metric([str(p), f"ipv{v}"], n.rib.accepted_count(p, v))
        yield received
        yield accepted

        rejected = CounterMetricFamily(
            "meshroute_bgp_prefixes_rejected",
            "prefixes refused by import policy",
            labels=["peer", "reason"],
        )
        for peer, reason, count in n.rib.rejects.items():
            rejected.add_metric([str(peer), reason.value], count)
        yield rejected

        yield from _bfd_metrics(n, sessions)

        malformed = CounterMetricFamily(
            "meshroute_bgp_malformed_lines", "lines from ExaBGP that could not be decoded"
        )
        malformed.add_metric([], speaker.stats.malformed)
        yield malformed

        routes = GaugeMetricFamily(
            "meshroute_routes_programmed", "kernel routes meshroute owns, by kind", labels=["kind"]
        )
        if n.reconciler is not None:
            kinds = Counter(r.kind.value for r in n.reconciler.actual_routes.values())
            for kind, count in sorted(kinds.items()):
                routes.add_metric([kind], count)
            totals = n.reconciler.totals
            passes = CounterMetricFamily(
                "meshroute_reconcile_ops", "kernel operations by the reconciler", labels=["op"]
            )
            for op, count in sorted(totals.items()):
                passes.add_metric([op], count)
            yield passes
            durations = SummaryMetricFamily(
                "meshroute_reconcile_seconds",
                "time spent in reconcile passes, by full resync or incremental",
                labels=["pass"],
            )
            for kind in ("full", "incremental"):
                durations.add_metric(
                    [kind], n.reconciler.pass_count[kind], n.reconciler.pass_seconds[kind]
                )
            yield durations
        yield routes

        unroutable = GaugeMetricFamily(
            "meshroute_routes_unroutable", "best routes the planner could not install"
        )
        unroutable.add_metric([], n.unroutable)
        yield unroutable

        if n.view is not None:
            blocks = GaugeMetricFamily(
                "meshroute_ipam_blocks", "IPAM blocks affine to this node", labels=["pool"]
            )
            used = GaugeMetricFamily(
                "meshroute_ipam_addresses_allocated",
                "workload addresses in this node's blocks",
                labels=["pool"],
            )
            per_pool: Counter[str] = Counter()
            per_pool_used: Counter[str] = Counter()
            for b, _ in n.view.ipam.blocks.values():
                if b.affinity == n.config.node_name:
                    per_pool[b.pool] += 1
                    per_pool_used[b.pool] += b.workload_count
            for pool in sorted(per_pool):
                blocks.add_metric([pool], per_pool[pool])
                used.add_metric([pool], per_pool_used[pool])
            yield blocks
            yield used

        yield from _policy_metrics(n)


def _policy_metrics(n: NodeProcess) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
    rec = n.policy.reconciler
    labels = ["policy", "direction", "rule", "action"]
    packets = CounterMetricFamily(
        "meshroute_policy_packets",
        "packets matched per policy rule (allowed, denied, passed, logged) and per"
        " endpoint default deny",
        labels=labels,
    )
    octets = CounterMetricFamily(
        "meshroute_policy_bytes", "bytes matched per policy rule and default deny", labels=labels
    )
    for r in n.policy.rule_counters():
        key = [r["policy"], r["direction"], r["rule"], r["action"]]
        packets.add_metric(key, r["packets"])
        octets.add_metric(key, r["bytes"])
    yield packets
    yield octets
    applied = CounterMetricFamily(
        "meshroute_policy_transactions", "nft transactions applied by the policy reconciler"
    )
    applied.add_metric([], rec.applied)
    yield applied
    refused = CounterMetricFamily(
        "meshroute_policy_transactions_refused", "nft transactions refused (last good kept)"
    )
    refused.add_metric([], rec.failures)
    yield refused
    endpoints = GaugeMetricFamily("meshroute_policy_endpoints", "workload endpoints known")
    endpoints.add_metric([], n.policy.endpoint_count)
    yield endpoints
    revision = GaugeMetricFamily(
        "meshroute_policy_applied_revision",
        "etcd revision of the newest policy inputs the kernel enforces",
    )
    revision.add_metric([], n.policy.applied_revision())
    yield revision


def _bfd_metrics(
    n: NodeProcess, sessions: Sessions
) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
    up = GaugeMetricFamily(
        "meshroute_bfd_session_up", "1 when the peer's BFD session is Up", labels=["peer"]
    )
    for s in sorted(n.bfd.status(), key=lambda s: s.peer):
        up.add_metric([str(s.peer)], 1 if s.state.name == "UP" else 0)
    yield up
    downs = CounterMetricFamily(
        "meshroute_bfd_session_downs",
        "BGP sessions this node closed because BFD went down",
        labels=["peer"],
    )
    for peer, count in sorted(sessions.bfd_downs.items()):
        downs.add_metric([str(peer)], count)
    yield downs
    dropped = CounterMetricFamily(
        "meshroute_bfd_packets_dropped", "BFD packets dropped, by reason", labels=["reason"]
    )
    for reason, count in sorted(n.bfd.drops.items()):
        dropped.add_metric([reason], count)
    yield dropped
    why = GaugeMetricFamily(
        "meshroute_bgp_last_down_reason",
        "why each peer's BGP session last went down (value 1)",
        labels=["peer", "reason"],
    )
    for peer, reason in sorted(sessions.down_reason.items()):
        why.add_metric([str(peer), reason], 1)
    yield why
