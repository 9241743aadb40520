"""bgpd's sessions: graceful restart (stale paths kept, swept by End-of-RIB
or by the timer), End-of-RIB sync, max-prefix close with hold-down and
release, a removed peer's routes, session facts read from the speaker's
state map."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import pytest
from netaddr import IPAddress, IPNetwork

from bgpd.model import (
    EorEvent,
    NotificationEvent,
    OpenEvent,
    PathAttrs,
    SessionState,
    StateEvent,
    UpdateEvent,
)
from bgpd.policy import ImportContext, MaxPrefixAction, PoolRule, RejectReason
from bgpd.rib import Rib
from bgpd.sessions import SessionPeer, Sessions

A = SessionPeer(IPAddress("192.0.2.2"), 64513, ebgp=True, graceful_restart_s=1)
B = SessionPeer(
    IPAddress("192.0.2.3"), 64514, ebgp=True, max_prefix=2,
    max_prefix_action=MaxPrefixAction.CLOSE,
)  # fmt: skip
P = [IPNetwork(f"10.244.{i}.0/26") for i in range(4)]
CTX = ImportContext(pools=(PoolRule(IPNetwork("10.244.0.0/16"), 26),))


def announce(peer: SessionPeer, *prefixes: IPNetwork) -> UpdateEvent:
    attrs = PathAttrs(next_hop=peer.address, as_path=(peer.asn,))
    return UpdateEvent(peer.address, peer.asn, tuple((p, attrs) for p in prefixes))


class Rig:
    def __init__(self, **kw: float) -> None:
        self.states: dict[IPAddress, SessionState] = {}
        self.routes_changed = 0
        self.peers_changed = 0
        self.rib = Rib(CTX)
        self.s = Sessions(
            self.rib,
            self.states,
            on_routes_changed=self._routes,
            on_peers_changed=self._peers,
            **kw,  # type: ignore[arg-type]
        )

    def _routes(self) -> None:
        self.routes_changed += 1

    def _peers(self) -> None:
        self.peers_changed += 1

    def state(self, peer: SessionPeer, state: SessionState) -> None:
        self.states[peer.address] = state  # the speaker records, then tells
        self.s.on_event(StateEvent(peer.address, peer.asn, state))


async def until(check: Callable[[], bool], within: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


def test_graceful_restart_keeps_stale_paths_until_end_of_rib_or_timer() -> None:
    async def go() -> None:
        r = Rig()
        r.s.set_peers([A])
        r.state(A, SessionState.ESTABLISHED)
        r.s.on_event(announce(A, P[0], P[1]))
        r.state(A, SessionState.DOWN)
        assert set(r.rib.best_routes()) == {P[0], P[1]}  # kept, stale
        r.state(A, SessionState.ESTABLISHED)
        r.s.on_event(announce(A, P[0]))
        r.s.on_event(EorEvent(A.address, "ipv4 unicast"))
        assert set(r.rib.best_routes()) == {P[0]}  # P[1] not re-announced: swept
        # down again and never back: the timer sweeps everything
        r.state(A, SessionState.DOWN)
        assert set(r.rib.best_routes()) == {P[0]}
        await until(lambda: not r.rib.best_routes())
        r.s.close()

    asyncio.run(go())


def test_synced_after_every_peer_sent_end_of_rib_or_the_timeout() -> None:
    async def go() -> None:
        r = Rig()
        r.s.set_peers([A, B])
        r.s.start()
        r.s.on_event(EorEvent(A.address, "ipv4 unicast"))
        assert not r.s.synced.is_set()
        r.s.on_event(EorEvent(B.address, "ipv4 unicast"))
        assert r.s.synced.is_set()
        r.s.close()

        late = Rig(sync_timeout_s=0.05)
        late.s.set_peers([A])
        late.s.start()
        await asyncio.wait_for(late.s.synced.wait(), 5)
        late.s.close()

    asyncio.run(go())


def test_max_prefix_close_drops_routes_and_holds_the_peer_down_then_releases() -> None:
    async def go() -> None:
        r = Rig(hold_down_s=0.1)
        r.s.set_peers([A, B])
        r.s.on_event(announce(B, P[0], P[1]))
        assert len(r.rib.best_routes()) == 2
        r.s.on_event(announce(B, P[2]))  # one over: close
        assert not r.rib.best_routes()
        assert r.s.held_down(B.address) and r.peers_changed == 1
        assert not r.s.held_down(A.address)
        r.state(B, SessionState.DOWN)  # closed on purpose: nothing more to drop
        await until(lambda: not r.s.held_down(B.address))
        assert r.peers_changed == 2

    asyncio.run(go())


def test_a_removed_peer_loses_its_routes_at_once_and_its_facts() -> None:
    async def go() -> None:
        r = Rig()
        r.s.set_peers([A, B])
        r.s.on_event(OpenEvent(A.address, A.asn, IPAddress("1.1.1.1"), "receive"))
        assert r.s.peer_info(A).router_id == IPAddress("1.1.1.1")
        r.state(A, SessionState.ESTABLISHED)
        r.s.on_event(announce(A, P[0]))
        assert r.s.received[A.address] == 1 and r.s.established() == [A.address]
        assert r.s.state(B.address) is SessionState.IDLE
        before = r.routes_changed
        r.s.set_peers([B])
        assert not r.rib.best_routes() and r.routes_changed == before + 1
        assert r.s.received.get(A.address, 0) == 0 and r.s.since(A.address) == 0.0
        # an update from a peer no longer configured is ignored
        r.s.on_event(announce(A, P[1]))
        assert not r.rib.best_routes()

    asyncio.run(go())


def test_a_session_ended_by_a_notification_is_no_restart() -> None:
    async def go() -> None:
        r = Rig()
        r.s.set_peers([A])
        r.state(A, SessionState.ESTABLISHED)
        r.s.on_event(announce(A, P[0]))
        r.s.on_event(NotificationEvent(A.address, 6, 2, "administrative shutdown"))
        r.state(A, SessionState.DOWN)
        assert not r.rib.best_routes()
        # the next drop without one is a restart again
        r.state(A, SessionState.ESTABLISHED)
        r.s.on_event(announce(A, P[0]))
        r.state(A, SessionState.DOWN)
        assert set(r.rib.best_routes()) == {P[0]}
        r.s.close()

    asyncio.run(go())


def test_a_changed_max_prefix_applies_to_what_the_peer_sent() -> None:
    async def go() -> None:
        r = Rig(hold_down_s=60)
        drop = SessionPeer(A.address, A.asn, ebgp=True, max_prefix=None)
        r.s.set_peers([drop])
        r.s.on_event(announce(drop, P[0], P[1], P[2]))
        assert len(r.rib.best_routes()) == 3
        lowered = SessionPeer(A.address, A.asn, ebgp=True, max_prefix=2)
        assert r.s.set_peers([lowered]) == []  # lowered: nothing to ask again
        assert len(r.rib.best_routes()) == 2  # the excess is dropped
        raised = SessionPeer(A.address, A.asn, ebgp=True, max_prefix=3)
        assert r.s.set_peers([raised]) == [A.address]  # ask for a refresh
        closing = SessionPeer(
            A.address, A.asn, ebgp=True, max_prefix=1, max_prefix_action=MaxPrefixAction.CLOSE
        )
        r.s.set_peers([closing])
        assert r.s.held_down(A.address) and not r.rib.best_routes()
        r.s.close()

    asyncio.run(go())


def test_bfd_down_drops_routes_at_once_ignores_updates_until_up_and_says_why() -> None:
    async def go() -> None:
        r = Rig()
        r.s.set_peers([A])
        r.state(A, SessionState.ESTABLISHED)
        r.s.on_event(announce(A, P[0]))
        # a BFD Down that does not tear down (e.g. AdminDown) only records why
        assert not r.s.bfd_down(A.address, "BFD: admin down", tear_down=False)
        assert set(r.rib.best_routes()) == {P[0]}
        assert r.s.down_reason[A.address] == "BFD: admin down"
        assert r.s.bfd_down(A.address, "BFD: control detection time expired", tear_down=True)
        assert not r.s.bfd_down(A.address, "again", tear_down=True)  # once per Down
        assert r.rib.best_routes() == {}  # no graceful stale: the path is gone
        assert r.s.bfd_downs[A.address] == 1
        r.s.on_event(announce(A, P[1]))  # ignored while BFD is down
        r.state(A, SessionState.DOWN)  # our teardown: the BFD reason stays
        assert r.rib.best_routes() == {}
        assert r.s.down_reason[A.address] == "again"
        assert not r.s.bfd_up(A.address)  # not established: nothing to refresh
        r.s.on_event(announce(A, P[1]))
        assert set(r.rib.best_routes()) == {P[1]}
        assert not r.s.bfd_up(A.address)  # was not down
        assert not r.s.bfd_down(IPAddress("192.0.2.99"), "unknown peer", tear_down=True)

    asyncio.run(go())


def test_rejections_are_told_once_per_peer_and_reason_in_a_session(
    caplog: pytest.LogCaptureFixture,
) -> None:
    outside = [IPNetwork(f"198.18.0.{i}/32") for i in range(3)]

    def told() -> list[tuple[int, str]]:
        out = [(r.levelno, r.getMessage().split(" (")[0]) for r in caplog.records]
        caplog.clear()
        return out

    async def go() -> None:
        r = Rig()
        r.s.set_peers([A, B])
        r.state(A, SessionState.ESTABLISHED)
        r.state(B, SessionState.ESTABLISHED)
        caplog.clear()
        r.s.on_event(announce(A, *outside))
        r.s.on_event(announce(A, IPNetwork("0.0.0.0/0")))
        r.s.on_event(announce(B, outside[0]))
        assert told() == [
            (logging.INFO, "rejected 198.18.0.0/32 from 192.0.2.2: not-in-pool"),
            (logging.DEBUG, "rejected 198.18.0.1/32 from 192.0.2.2: not-in-pool"),
            (logging.DEBUG, "rejected 198.18.0.2/32 from 192.0.2.2: not-in-pool"),
            (logging.INFO, "rejected 0.0.0.0/0 from 192.0.2.2: default-route"),
            (logging.INFO, "rejected 198.18.0.0/32 from 192.0.2.3: not-in-pool"),
        ]
        r.s.on_event(announce(A, outside[1]))
        assert told() == [(logging.DEBUG, "rejected 198.18.0.1/32 from 192.0.2.2: not-in-pool")]
        # a new session is told again; the other peer's is not
        r.state(A, SessionState.DOWN)
        r.state(A, SessionState.ESTABLISHED)
        caplog.clear()
        r.s.on_event(announce(A, outside[2]))
        r.s.on_event(announce(B, outside[1]))
        assert told() == [
            (logging.INFO, "rejected 198.18.0.2/32 from 192.0.2.2: not-in-pool"),
            (logging.DEBUG, "rejected 198.18.0.1/32 from 192.0.2.3: not-in-pool"),
        ]
        # every one is counted all the same
        assert r.rib.rejects.get(A.address, RejectReason.NOT_IN_POOL) == 5
        assert r.rib.rejects.get(B.address, RejectReason.NOT_IN_POOL) == 2

    caplog.set_level(logging.DEBUG, logger="bgpd.sessions")
    asyncio.run(go())
