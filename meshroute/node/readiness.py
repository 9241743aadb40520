"""When the node is ready: Calico's bird-ready rule over the node's
convergence and its BGP sessions (pure)."""

from __future__ import annotations

from collections.abc import Iterable

from netaddr import IPAddress

from meshroute.runtime.http import Health

STARTUP_GRACE_S = 60.0  # readiness wants every peer up this long after start, then one


def decide_readiness(
    converged: bool,
    peers: Iterable[IPAddress],
    established: Iterable[IPAddress],
    uptime_s: float,
    grace_s: float = STARTUP_GRACE_S,
) -> Health:
    """Calico's bird-ready rule: kernel routes programmed once; then, shortly
    after start, every configured peer established; later at least one."""
    if not converged:
        return Health(False, "starting: kernel routes not yet converged")
    configured = set(peers)
    if not configured:
        return Health(True, "ready (no BGP peers configured)")
    up = configured & set(established)
    if uptime_s < grace_s:
        missing = sorted(configured - up)
        if missing:
            return Health(False, f"waiting for peers: {', '.join(map(str, missing))}")
    elif not up:
        return Health(False, "no BGP peer is established")
    return Health(True, f"ready: {len(up)}/{len(configured)} BGP peers established")
