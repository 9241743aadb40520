"""The BGP sessions of a speaker, as its RIB and operator see them: the one
owner of each peer's session facts beyond ExaBGP's raw state.

- session state: ExaBGP's, as the speaker records it (``states``, the
  speaker's own map, read here, never copied); ``since`` is when it last
  changed, the peer's BGP router id is what its OPEN said;
- what each peer sent: prefixes received (accepted and refused are the
  RIB's counts);
- graceful restart (RFC 4724, receiving side): a peer whose session drops
  keeps its paths, marked stale, for its restart time; its End-of-RIB after
  coming back sweeps what it did not re-announce, the timer sweeps the rest.
  A session the peer ended with a NOTIFICATION is not a restart (RFC 8538
  1): its paths go at once, as BIRD and FRR do;
- End-of-RIB sync: ``synced`` is set once every configured peer sent
  End-of-RIB, or ``sync_timeout`` after ``start``, whichever is first (after
  a restart the kernel still holds the last run's routes: nothing is
  withdrawn just because BGP has not re-learned it yet);
- max-prefix: a changed limit applies to what the peer already sent; a peer
  over its limit with the ``close`` action loses its routes at once and
  stays out of the configured set for ``hold_down_s`` (as BIRD's ``import
  limit ... action restart``);
- BFD Down (``bfd_down``): the path to the peer is gone, not its control
  plane, so its routes go at once (no graceful stale) and what it sends is
  ignored until BFD is Up again (``bfd_up``); ``down_reason`` says why each
  session last went down.

Events come from the speaker (``on_event``); ``on_routes_changed`` is
called when the RIB's best routes changed, ``on_peers_changed`` when the
set of peers to configure in ExaBGP changed (hold-down began or ended).
Both are handlers: they should only mark work dirty.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from netaddr import IPAddress, IPNetwork

from bgpd.model import (
    EorEvent,
    Event,
    NotificationEvent,
    OpenEvent,
    SessionState,
    StateEvent,
    UpdateEvent,
)
from bgpd.policy import MaxPrefixAction, RejectReason
from bgpd.rib import PeerInfo, Rib, decide_limit_raised

log = logging.getLogger("bgpd.sessions")

MAX_PREFIX_HOLD_DOWN_S = 60.0
SYNC_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class SessionPeer:
    """A configured peer, as the sessions need it."""

    address: IPAddress
    asn: int
    ebgp: bool
    graceful_restart_s: int = 0  # 0: no graceful restart
    max_prefix: int | None = None
    max_prefix_action: MaxPrefixAction = MaxPrefixAction.DROP


class Sessions:
    def __init__(
        self,
        rib: Rib,
        states: Mapping[IPAddress, SessionState],
        *,
        on_routes_changed: Callable[[], None],
        on_peers_changed: Callable[[], None],
        hold_down_s: float = MAX_PREFIX_HOLD_DOWN_S,
        sync_timeout_s: float = SYNC_TIMEOUT_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.rib = rib
        self._states = states
        self._on_routes_changed = on_routes_changed
        self._on_peers_changed = on_peers_changed
        self.hold_down_s = hold_down_s
        self.sync_timeout_s = sync_timeout_s
        self._clock = clock
        self._peers: dict[IPAddress, SessionPeer] = {}
        self._since: dict[IPAddress, float] = {}
        self._router_id: dict[IPAddress, IPAddress] = {}
        self.received: Counter[IPAddress] = Counter()
        self._eor_from: set[IPAddress] = set()
        self._notified: set[IPAddress] = set()  # sent a NOTIFICATION: ending on purpose
        self._gr_timers: dict[IPAddress, asyncio.TimerHandle] = {}
        self._held_down: dict[IPAddress, asyncio.TimerHandle] = {}
        self._sync_timer: asyncio.TimerHandle | None = None
        self.synced = asyncio.Event()
        self._bfd_down: set[IPAddress] = set()
        self.down_reason: dict[IPAddress, str] = {}
        self.bfd_downs: Counter[IPAddress] = Counter()
        # (peer, reason) already logged at info in this session: a peer's
        # rejected prefixes can be 100k (a ToR's full table), and every node
        # rejects the others' service addresses; BIRD and FRR log none.
        self._rejects_told: set[tuple[IPAddress, RejectReason]] = set()

    # ---- configuration ----------------------------------------------------

    def start(self) -> None:
        """Start the End-of-RIB wait (on the running loop)."""
        loop = asyncio.get_running_loop()
        self._sync_timer = loop.call_later(self.sync_timeout_s, self._sync_due)
        if not self._peers:
            self._sync_due()

    def close(self) -> None:
        for handle in [*self._gr_timers.values(), *self._held_down.values()]:
            handle.cancel()
        if self._sync_timer is not None:
            self._sync_timer.cancel()

    def set_peers(self, peers: Iterable[SessionPeer]) -> list[IPAddress]:
        """The configured peers; a peer no longer configured loses its
        routes at once (no graceful restart for a removed peer). Returns the
        peers whose max-prefix was raised: paths refused for it may now be
        accepted, so the caller asks them for a route refresh."""
        old, self._peers = self._peers, {p.address: p for p in peers}
        now = self._clock()
        for address in self._peers:
            self._since.setdefault(address, now)
        changed = False
        raised: list[IPAddress] = []
        for peer in self._peers.values():
            before = old.get(peer.address)
            if before is None or _limit(before) == _limit(peer):
                continue
            res = self.rib.set_peer_limit(self.peer_info(peer))
            changed |= bool(res.changed)
            if res.close_session:
                self._hold_down(peer)
            if decide_limit_raised(before.max_prefix, peer.max_prefix):
                raised.append(peer.address)
        for gone in set(self._since) - set(self._peers):
            del self._since[gone]
            self.received.pop(gone, None)
            self._eor_from.discard(gone)
            self._bfd_down.discard(gone)
            self.down_reason.pop(gone, None)
            self._forget_rejects_told(gone)
            changed |= bool(self.rib.peer_down(gone))
            timer = self._gr_timers.pop(gone, None)
            if timer is not None:
                timer.cancel()
        if changed:
            self._on_routes_changed()
        if not self.synced.is_set() and set(self._peers) <= self._eor_from:
            self._sync_due()
        return raised

    # ---- reading ----------------------------------------------------------

    def state(self, peer: IPAddress) -> SessionState:
        return self._states.get(peer, SessionState.IDLE)

    def since(self, peer: IPAddress) -> float:
        return self._since.get(peer, 0.0)

    def held_down(self, peer: IPAddress) -> bool:
        return peer in self._held_down

    def established(self) -> list[IPAddress]:
        return sorted(p for p in self._peers if self._states.get(p) is SessionState.ESTABLISHED)

    def peer_info(self, peer: SessionPeer) -> PeerInfo:
        return PeerInfo(
            address=peer.address,
            asn=peer.asn,
            router_id=self._router_id.get(peer.address),
            ebgp=peer.ebgp,
            max_prefix=peer.max_prefix,
            max_prefix_action=peer.max_prefix_action,
        )

    # ---- BFD --------------------------------------------------------------

    def bfd_down(self, peer: IPAddress, reason: str, *, tear_down: bool) -> bool:
        """BFD reports the peer unreachable: record why; with ``tear_down``
        drop its routes now and ignore its updates until ``bfd_up``. True
        when the caller should now close the BGP session."""
        if peer not in self._peers:
            return False
        self.down_reason[peer] = reason
        if not tear_down or peer in self._bfd_down:
            return False
        self.bfd_downs[peer] += 1
        self._bfd_down.add(peer)
        timer = self._gr_timers.pop(peer, None)
        if timer is not None:
            timer.cancel()
        if self.rib.peer_down(peer, graceful=False):
            self._on_routes_changed()
        return True

    def bfd_up(self, peer: IPAddress) -> bool:
        """BFD is Up again after a Down: the peer's updates count again.
        True when its session is established, so the caller asks it to send
        everything again (what it sent meanwhile was ignored)."""
        if peer not in self._bfd_down:
            return False
        self._bfd_down.discard(peer)
        return self.state(peer) is SessionState.ESTABLISHED

    # ---- events -----------------------------------------------------------

    def on_event(self, e: Event) -> None:
        if isinstance(e, UpdateEvent):
            self._on_update(e)
        elif isinstance(e, StateEvent):
            log.info("peer %s: %s (%s)", e.peer, e.state.value, e.reason or "no reason given")
            if e.peer in self._peers:
                self._since[e.peer] = self._clock()
            self._forget_rejects_told(e.peer)
            if e.state is SessionState.DOWN:
                if e.peer not in self._bfd_down:
                    self.down_reason[e.peer] = f"BGP: {e.reason or 'session closed'}"
                self._peer_down(e.peer)
            elif e.state is SessionState.ESTABLISHED:
                timer = self._gr_timers.pop(e.peer, None)
                if timer is not None:
                    timer.cancel()
        elif isinstance(e, OpenEvent) and e.direction == "receive":
            self._router_id[e.peer] = e.router_id
        elif isinstance(e, EorEvent):
            self._eor_from.add(e.peer)
            if self.rib.peer_eor(e.peer):
                self._on_routes_changed()
            if set(self._peers) <= self._eor_from:
                self._sync_due()
        elif isinstance(e, NotificationEvent):
            self._notified.add(e.peer)
            log.warning("NOTIFICATION from %s: %d/%d %s", e.peer, e.code, e.subcode, e.data)

    def _on_update(self, e: UpdateEvent) -> None:
        peer = self._peers.get(e.peer)
        if peer is None or e.peer in self._bfd_down:
            return
        self.received[e.peer] += len(e.announced)
        res = self.rib.apply_update(e, self.peer_info(peer))
        for prefix, reason in res.rejected:  # counted by the RIB
            self._log_rejected(e.peer, prefix, reason)
        if res.close_session:
            self._hold_down(peer)
        if res.changed:
            self._on_routes_changed()

    def _log_rejected(self, peer: IPAddress, prefix: IPNetwork, reason: RejectReason) -> None:
        """The first rejection of a reason from a peer in a session at info,
        the rest at debug (meshroute_bgp_prefixes_rejected counts them all)."""
        if (peer, reason) in self._rejects_told:
            log.debug("rejected %s from %s: %s", prefix, peer, reason.value)
            return
        self._rejects_told.add((peer, reason))
        log.info(
            "rejected %s from %s: %s (more for this reason are counted in "
            "meshroute_bgp_prefixes_rejected and logged at debug)",
            prefix, peer, reason.value,
        )  # fmt: skip

    def _forget_rejects_told(self, peer: IPAddress) -> None:
        self._rejects_told = {told for told in self._rejects_told if told[0] != peer}

    def _peer_down(self, address: IPAddress) -> None:
        notified = address in self._notified
        self._notified.discard(address)
        if address in self._held_down or address in self._bfd_down:
            return  # closed on purpose: its routes are already gone
        peer = self._peers.get(address)
        gr = peer.graceful_restart_s if peer is not None and not notified else 0
        changed = self.rib.peer_down(address, graceful=gr > 0)
        if gr > 0 and address not in self._gr_timers:
            loop = asyncio.get_running_loop()
            self._gr_timers[address] = loop.call_later(gr, self._gr_expired, address)
        if changed:
            self._on_routes_changed()

    def _hold_down(self, peer: SessionPeer) -> None:
        """Close the session of a peer over its max-prefix: drop its routes
        now (a deliberate close, not a restart: no graceful stale) and leave
        it out of the configured peers for the hold-down."""
        if peer.address in self._held_down:
            return
        log.warning(
            "peer %s sent more than its max-prefix %s: closing the session for %.0f s",
            peer.address,
            peer.max_prefix,
            self.hold_down_s,
        )
        if self.rib.peer_down(peer.address, graceful=False):
            self._on_routes_changed()
        loop = asyncio.get_running_loop()
        self._held_down[peer.address] = loop.call_later(
            self.hold_down_s, self._release, peer.address
        )
        self._on_peers_changed()

    def _release(self, address: IPAddress) -> None:
        self._held_down.pop(address, None)
        self._on_peers_changed()

    def _gr_expired(self, address: IPAddress) -> None:
        self._gr_timers.pop(address, None)
        if self.rib.peer_gr_expired(address):
            log.info("peer %s did not come back within its restart time", address)
            self._on_routes_changed()

    def _sync_due(self) -> None:
        if self.synced.is_set():
            return
        missing = sorted(set(self._peers) - self._eor_from)
        if missing:
            log.warning("programming routes without End-of-RIB from %s", missing)
        self.synced.set()
        self._on_routes_changed()


def _limit(peer: SessionPeer) -> tuple[int | None, MaxPrefixAction]:
    return (peer.max_prefix, peer.max_prefix_action)
