"""The node's BFD decisions (pure): which BFD sessions its BGP peers get
from their profiles, and what a BFD state change means for a BGP session."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from bgpd.bfd.packet import Diag, State
from bgpd.bfd.session import Timers
from bgpd.bfd.speaker import BfdChange, PeerSpec
from meshroute.node.config import NodeConfig
from meshroute.peering import PeerPlan
from meshroute.resources import BFDProfileSpec


def profile_timers(p: BFDProfileSpec) -> Timers:
    # control-plane independent: the daemon outlives node restarts
    return Timers(
        desired_min_tx_us=p.transmit_interval * 1000,
        required_min_rx_us=p.receive_interval * 1000,
        detect_mult=p.detect_multiplier,
        passive=p.passive_mode,
        cpi=True,
    )


def plan_bfd_sessions(
    config: NodeConfig, peers: Iterable[PeerPlan], profiles: Mapping[str, BFDProfileSpec]
) -> list[PeerSpec]:
    """One session per (IPv4) peer whose profile exists: single-hop when
    the peer is on the node's own subnet, multihop (with the profile's
    minimum TTL) otherwise."""
    out = []
    for p in peers:
        prof = profiles.get(p.bfd_profile) if p.bfd_profile else None
        if prof is None or p.address.version != 4:
            continue  # ExaBGP carries the IPv4 sessions only (plan_exabgp_config)
        own = config.ipv4
        out.append(
            PeerSpec(
                peer=p.address,
                timers=profile_timers(prof),
                local=own.ip,
                multihop=p.address not in own.cidr,
                minimum_ttl=prof.minimum_ttl,
            )
        )
    return out


def diag_text(diag: int) -> str:
    try:
        return Diag(diag).name.lower().replace("_", " ")
    except ValueError:
        return f"diagnostic {diag}"


@dataclass(frozen=True)
class BfdVerdict:
    tear_down: bool
    reason: str


def decide_bfd_change(c: BfdChange) -> BfdVerdict | None:
    """A session that was Up and is no longer takes its BGP session down,
    except when the peer took BFD administratively down (RFC 5882 §3.2:
    that is not a failure)."""
    if c.old is not State.UP or c.new is State.UP:
        return None
    if c.new is State.ADMIN_DOWN:
        return None  # our own doing
    if c.remote_diag == Diag.ADMINISTRATIVELY_DOWN:
        return BfdVerdict(False, "BFD: peer set administratively down")
    why = diag_text(c.diag)
    if c.diag == Diag.NEIGHBOR_SIGNALED_DOWN:
        why = f"peer signaled down ({diag_text(c.remote_diag)})"
    return BfdVerdict(True, f"BFD down: {why}")
