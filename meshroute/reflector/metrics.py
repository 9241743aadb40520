"""Prometheus metrics of the reflector, computed at scrape time from BIRD's
session table (read from its control socket) and the planned sessions."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from meshroute.reflector.process import ReflectorProcess


class ReflectorCollector(Collector):
    def __init__(self, reflector: ReflectorProcess) -> None:
        self.r = reflector

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        r = self.r
        labels = ["peer", "node", "role"]
        up = GaugeMetricFamily(
            "meshroute_reflector_session_established",
            "1 when the BGP session is Established",
            labels=labels,
        )
        uptime = GaugeMetricFamily(
            "meshroute_reflector_session_state_seconds",
            "seconds since the session last changed state",
            labels=labels,
        )
        received = GaugeMetricFamily(
            "meshroute_reflector_session_prefixes_received",
            "prefixes held from the peer (imported and filtered)",
            labels=labels,
        )
        exported = GaugeMetricFamily(
            "meshroute_reflector_session_prefixes_exported",
            "prefixes sent to the peer",
            labels=labels,
        )
        now = time.time()
        for s in r.sessions:
            info = r.bird_sessions.get(s.protocol)
            lv = [str(s.address), s.node or "", s.role]
            up.add_metric(lv, 1 if info is not None and info.established else 0)
            if info is not None and info.since is not None:
                uptime.add_metric(lv, max(0.0, now - info.since.timestamp()))
            received.add_metric(lv, info.received if info else 0)
            exported.add_metric(lv, info.exported if info else 0)
        yield up
        yield uptime
        yield received
        yield exported

        for name, doc, value in (
            ("meshroute_reflector_bird_restarts", "times BIRD was restarted", r.bird.restarts),
            ("meshroute_reflector_reloads", "configurations applied with configure", r.reloads),
            ("meshroute_reflector_config_refused", "configurations refused", r.refused),
        ):
            c = CounterMetricFamily(name, doc)
            c.add_metric([], value)
            yield c
        bad = GaugeMetricFamily(
            "meshroute_reflector_config_error", "1 while the newest configuration is refused"
        )
        bad.add_metric([], 1 if r.config_error else 0)
        yield bad
