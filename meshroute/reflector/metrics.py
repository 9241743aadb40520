"""Prometheus metrics of the reflector, computed at scrape time from BIRD's
session table (read from its control socket) and the planned sessions."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from meshroute.runtime.exposition import CounterFamily, Family, GaugeFamily, Sample

if TYPE_CHECKING:
    from meshroute.reflector.process import ReflectorProcess


def reflector_metrics(r: ReflectorProcess) -> Iterator[Family]:
    labels = ("peer", "node", "role")
    up: list[Sample] = []
    uptime: list[Sample] = []
    received: list[Sample] = []
    exported: list[Sample] = []
    now = time.time()
    for s in r.sessions:
        info = r.bird_sessions.get(s.protocol)
        lv = (str(s.address), s.node or "", s.role)
        up.append(Sample(lv, 1 if info is not None and info.established else 0))
        if info is not None and info.since is not None:
            uptime.append(Sample(lv, max(0.0, now - info.since.timestamp())))
        received.append(Sample(lv, info.received if info else 0))
        exported.append(Sample(lv, info.exported if info else 0))
    for name, doc, samples in (
        ("meshroute_reflector_session_established", "1 when the BGP session is Established", up),
        (
            "meshroute_reflector_session_state_seconds",
            "seconds since the session last changed state",
            uptime,
        ),
        (
            "meshroute_reflector_session_prefixes_received",
            "prefixes held from the peer (imported and filtered)",
            received,
        ),
        ("meshroute_reflector_session_prefixes_exported", "prefixes sent to the peer", exported),
    ):
        yield GaugeFamily(name, doc, labels, tuple(samples))

    for name, doc, value in (
        ("meshroute_reflector_bird_restarts", "times BIRD was restarted", r.bird.restarts),
        ("meshroute_reflector_reloads", "configurations applied with configure", r.reloads),
        ("meshroute_reflector_config_refused", "configurations refused", r.refused),
    ):
        yield CounterFamily(name, doc, samples=(Sample((), value),))
    yield GaugeFamily(
        "meshroute_reflector_config_error",
        "1 while the newest configuration is refused",
        samples=(Sample((), 1 if r.config_error else 0),),
    )
