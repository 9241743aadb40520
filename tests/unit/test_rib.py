"""The RIB: announce, withdraw, refusals, max-prefix, peer down, graceful
restart (stale, End-of-RIB, timer), policy changes, and the changed-prefix
sets; Hypothesis: the Loc-RIB always equals a recomputation from the
Adj-RIBs-In, and each call's changed set is exactly what changed."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from netaddr import IPAddress, IPNetwork

from bgpd.bestpath import rank
from bgpd.model import BestRoute, PathAttrs, UpdateEvent
from bgpd.policy import ImportContext, MaxPrefixAction, PoolRule, RejectReason
from bgpd.rib import PeerInfo, Rib, decide_limit_raised

SELF = IPAddress("192.0.2.1")
OWN = IPNetwork("10.244.7.0/26")
CTX = ImportContext(
    pools=(PoolRule(IPNetwork("10.244.0.0/16"), 26),),
    own_blocks=frozenset({OWN}),
    own_addresses=frozenset({SELF}),
)
A = PeerInfo(IPAddress("192.0.2.2"), 64512, IPAddress("192.0.2.2"), ebgp=False)
B = PeerInfo(IPAddress("192.0.2.3"), 64512, IPAddress("192.0.2.3"), ebgp=False)
C = PeerInfo(IPAddress("192.0.2.4"), 64513, IPAddress("192.0.2.4"), ebgp=True)
P1, P2, P3 = (IPNetwork(f"10.244.{i}.0/26") for i in (1, 2, 3))


def attrs(peer: PeerInfo, **kw: object) -> PathAttrs:
    return PathAttrs(next_hop=peer.address, **kw)  # type: ignore[arg-type]


def announce(peer: PeerInfo, *prefixes: IPNetwork, **kw: object) -> UpdateEvent:
    a = attrs(peer, **kw)
    return UpdateEvent(peer.address, peer.asn, announced=tuple((p, a) for p in prefixes))


def withdraw(peer: PeerInfo, *prefixes: IPNetwork) -> UpdateEvent:
    return UpdateEvent(peer.address, peer.asn, withdrawn=prefixes)


def test_announce_then_withdraw() -> None:
    rib = Rib(CTX)
    r = rib.apply_update(announce(A, P1, P2), A)
    assert set(r.changed) == {P1, P2}
    assert rib.best_routes() == {
        P1: BestRoute(P1, (A.address,), "only path"),
        P2: BestRoute(P2, (A.address,), "only path"),
    }
    assert rib.apply_update(announce(A, P1), A).changed == ()  # same again: nothing changed
    assert rib.apply_update(withdraw(A, P1, P3), A).changed == (P1,)  # P3 was never there
    assert set(rib.best_routes()) == {P2}
    assert rib.best(P1) is None
    assert rib.accepted_count(A.address) == 1


def test_second_peer_changes_nothing_unless_it_wins() -> None:
    rib = Rib(CTX)
    rib.apply_update(announce(A, P1), A)
    # B has the higher router id, same everything else: loses, no change
    assert rib.apply_update(announce(B, P1), B).changed == ()
    assert rib.best(P1) == BestRoute(
        P1, (A.address,), "router-id: lower originator/router id (192.0.2.2 vs 192.0.2.3)"
    )
    # C is eBGP, but its AS path is longer: loses
    assert rib.apply_update(announce(C, P1, as_path=(64513,)), C).changed == ()
    assert rib.best(P1).next_hops == (A.address,)  # type: ignore[union-attr]
    assert rib.apply_update(announce(B, P1, local_pref=200), B).changed == (P1,)
    assert rib.best(P1).next_hops == (B.address,)  # type: ignore[union-attr]
    assert rib.apply_update(withdraw(B, P1), B).changed == (P1,)
    assert rib.best(P1).next_hops == (A.address,)  # type: ignore[union-attr]


def test_ecmp_next_hops() -> None:
    rib = Rib(CTX, max_paths=2)
    rib.apply_update(announce(B, P1), B)
    rib.apply_update(announce(A, P1), A)
    assert rib.best(P1).next_hops == (A.address, B.address)  # type: ignore[union-attr]
    d = PeerInfo(IPAddress("192.0.2.5"), 64512, IPAddress("192.0.2.5"), ebgp=False)
    assert rib.apply_update(announce(d, P1), d).changed == ()  # third equal path, max 2
    assert rib.apply_update(withdraw(A, P1), A).changed == (P1,)
    assert rib.best(P1).next_hops == (B.address, d.address)  # type: ignore[union-attr]


def test_ecmp_deduplicates_next_hops() -> None:
    # two reflectors reflecting the same node's route: one next hop, once
    rib = Rib(CTX, max_paths=4)
    node = IPAddress("192.0.2.9")
    for peer in (A, B):
        ev = UpdateEvent(
            peer.address,
            peer.asn,
            announced=((P1, PathAttrs(node, originator_id=node, cluster_list=(peer.address,))),),
        )
        rib.apply_update(ev, peer)
    assert rib.best(P1).next_hops == (node,)  # type: ignore[union-attr]


def test_refused_paths_are_counted_not_stored_and_replace_the_old_path() -> None:
    rib = Rib(CTX)
    rib.apply_update(announce(A, P1), A)
    out = IPNetwork("203.0.113.0/24")
    r = rib.apply_update(announce(A, out, OWN, IPNetwork("0.0.0.0/0")), A)
    assert r.changed == ()
    assert r.rejected == (
        (out, RejectReason.NOT_IN_POOL),
        (OWN, RejectReason.OWN_BLOCK),
        (IPNetwork("0.0.0.0/0"), RejectReason.DEFAULT_ROUTE),
    )
    assert rib.rejects.for_peer(A.address) == {"not-in-pool": 1, "own-block": 1, "default-route": 1}
    # P1 re-announced with our own address as next hop: refused, and the old path goes
    ev = UpdateEvent(A.address, A.asn, announced=((P1, PathAttrs(SELF)),))
    r = rib.apply_update(ev, A)
    assert r.changed == (P1,)
    assert r.rejected == ((P1, RejectReason.NEXT_HOP_IS_SELF),)
    assert rib.best_routes() == {}
    assert rib.adj_rib_in(A.address) == {}


def test_received_is_what_the_peer_announces_now_not_a_total() -> None:
    rib = Rib(CTX)
    out = IPNetwork("203.0.113.0/24")
    rib.apply_update(announce(A, P1, P2, out), A)
    assert (rib.accepted_count(A.address), rib.received_count(A.address)) == (2, 3)
    # a route refresh (or any re-announcement) sends everything again: no change
    rib.apply_update(announce(A, P1, P2, out), A)
    rib.apply_update(announce(A, P1, P2, out), A)
    assert (rib.accepted_count(A.address), rib.received_count(A.address)) == (2, 3)
    assert rib.rejects.for_peer(A.address) == {"not-in-pool": 3}  # the totals do grow
    rib.apply_update(withdraw(A, out, P2), A)
    assert (rib.accepted_count(A.address), rib.received_count(A.address)) == (1, 1)
    # an accepted prefix re-announced unusable moves to refused, and back
    rib.apply_update(UpdateEvent(A.address, A.asn, announced=((P1, PathAttrs(SELF)),)), A)
    assert (rib.accepted_count(A.address), rib.received_count(A.address)) == (0, 1)
    rib.apply_update(announce(A, P1), A)
    assert (rib.accepted_count(A.address), rib.received_count(A.address)) == (1, 1)
    # a policy change that refuses a held path keeps it counted as received
    rib.set_context(ImportContext(pools=CTX.pools, own_blocks=frozenset({OWN, P1})))
    assert (rib.accepted_count(A.address), rib.received_count(A.address)) == (0, 1)
    rib.peer_down(A.address)
    assert (rib.accepted_count(A.address), rib.received_count(A.address)) == (0, 0)


def test_our_own_as_in_the_path_is_refused_and_a_new_local_as_asks_for_refresh() -> None:
    ctx = ImportContext(pools=CTX.pools, local_as=64600)
    rib = Rib(ctx)
    r = rib.apply_update(announce(C, P1, as_path=(64513, 64600)), C)
    assert r.rejected == ((P1, RejectReason.AS_PATH_LOOP),)
    assert rib.best_routes() == {}
    assert rib.rejects.for_peer(C.address) == {"as-path-loop": 1}
    rib.apply_update(announce(C, P2, as_path=(64513, 64601)), C)
    assert set(rib.best_routes()) == {P2}
    # the node's AS changes: what looped may not any more, and what did not may now
    res = rib.set_context(ImportContext(pools=CTX.pools, local_as=64601))
    assert res.refresh_needed
    assert res.changed == (P2,)
    assert rib.best_routes() == {}


def test_a_lowered_max_prefix_applies_to_what_is_held_and_a_raised_one_asks_again() -> None:
    rib = Rib(CTX)
    rib.apply_update(announce(A, P1, P2, P3), A)
    lowered = PeerInfo(A.address, A.asn, A.router_id, False, max_prefix=2)
    r = rib.set_peer_limit(lowered)
    assert r.changed == (P3,) and r.rejected == ((P3, RejectReason.MAX_PREFIX),)
    assert set(rib.best_routes()) == {P1, P2}  # the first ones sent are kept
    assert (rib.accepted_count(A.address), rib.received_count(A.address)) == (2, 3)
    assert rib.set_peer_limit(lowered).changed == ()  # at the limit: nothing more
    closing = PeerInfo(A.address, A.asn, A.router_id, False, 1, MaxPrefixAction.CLOSE)
    assert rib.set_peer_limit(closing).close_session
    assert decide_limit_raised(2, 3) and decide_limit_raised(2, None)
    assert not decide_limit_raised(None, 3) and not decide_limit_raised(3, 2)
    # raised: the refresh re-sends P3, which is accepted now
    rib.apply_update(announce(A, P1, P2, P3), PeerInfo(A.address, A.asn, A.router_id, False, 3))
    assert set(rib.best_routes()) == {P1, P2, P3}


def test_max_prefix_drop_keeps_the_session() -> None:
    peer = PeerInfo(A.address, A.asn, A.router_id, False, max_prefix=2)
    rib = Rib(CTX)
    r = rib.apply_update(announce(peer, P1, P2, P3), peer)
    assert set(r.changed) == {P1, P2}
    assert r.rejected == ((P3, RejectReason.MAX_PREFIX),)
    assert not r.close_session
    # re-announcing a held prefix is not a new one
    assert rib.apply_update(announce(peer, P1, local_pref=300), peer).rejected == ()
    assert rib.apply_update(withdraw(peer, P1), peer).changed == (P1,)
    assert rib.apply_update(announce(peer, P3), peer).changed == (P3,)
    assert rib.rejects.get(A.address, RejectReason.MAX_PREFIX) == 1


def test_max_prefix_counts_each_family_of_a_multiprotocol_session() -> None:
    """MP-BGP: one session, IPv4 and IPv6 paths; each family has its own limit."""
    ctx = ImportContext(pools=(*CTX.pools, PoolRule(IPNetwork("fd00:10::/48"), 122)))
    peer = PeerInfo(A.address, A.asn, A.router_id, False, max_prefix=2)
    v6 = [IPNetwork(f"fd00:10::{i * 64:x}/122") for i in range(3)]
    nh6 = PathAttrs(next_hop=IPAddress("2001:db8::2"))
    rib = Rib(ctx)
    rib.apply_update(announce(peer, P1, P2), peer)
    r = rib.apply_update(UpdateEvent(A.address, A.asn, tuple((p, nh6) for p in v6)), peer)
    assert set(r.changed) == set(v6[:2])
    assert r.rejected == ((v6[2], RejectReason.MAX_PREFIX),)
    assert (rib.accepted_count(A.address, 4), rib.accepted_count(A.address, 6)) == (2, 2)
    rib.apply_update(UpdateEvent(A.address, A.asn, withdrawn=(v6[0],)), peer)
    assert rib.accepted_count(A.address, 6) == 1
    assert rib.apply_update(announce(peer, P3), peer).rejected == ((P3, RejectReason.MAX_PREFIX),)
    rib.peer_down(A.address)
    assert rib.accepted_count(A.address, 6) == 0


def test_max_prefix_close_asks_to_close_the_session() -> None:
    peer = PeerInfo(A.address, A.asn, A.router_id, False, 1, MaxPrefixAction.CLOSE)
    rib = Rib(CTX)
    r = rib.apply_update(announce(peer, P1, P2), peer)
    assert r.close_session
    assert r.changed == (P1,)
    assert rib.peer_down(A.address) == (P1,)
    assert rib.best_routes() == {}


def test_peer_down_drops_its_paths_and_falls_back() -> None:
    rib = Rib(CTX)
    rib.apply_update(announce(A, P1, P2), A)
    rib.apply_update(announce(B, P2, P3), B)
    changed = rib.peer_down(A.address)
    assert set(changed) == {P1, P2}  # P1 gone, P2 now via B
    assert rib.best(P2).next_hops == (B.address,)  # type: ignore[union-attr]
    assert rib.peers() == frozenset({B.address})
    assert rib.peer_down(A.address) == ()


def test_graceful_restart_keeps_stale_paths_until_end_of_rib() -> None:
    rib = Rib(CTX)
    rib.apply_update(announce(A, P1, P2, P3), A)
    assert rib.peer_down(A.address, graceful=True) == ()
    assert set(rib.best_routes()) == {P1, P2, P3}
    assert rib.stale_count(A.address) == 3
    # back up: re-announces P1 unchanged and P2 with another next hop, not P3
    rib.apply_update(announce(A, P1), A)
    moved = UpdateEvent(A.address, A.asn, announced=((P2, PathAttrs(IPAddress("192.0.2.9"))),))
    assert rib.apply_update(moved, A).changed == (P2,)
    assert rib.stale_count(A.address) == 1
    assert rib.peer_eor(A.address) == (P3,)
    assert set(rib.best_routes()) == {P1, P2}
    assert rib.peer_eor(A.address) == ()  # a second End-of-RIB sweeps nothing


def test_graceful_restart_timer_drops_what_was_not_refreshed() -> None:
    rib = Rib(CTX)
    rib.apply_update(announce(A, P1, P2), A)
    rib.apply_update(announce(B, P2), B)
    rib.peer_down(A.address, graceful=True)
    rib.apply_update(withdraw(A, P1), A)  # a withdraw also clears the mark
    assert rib.stale_count(A.address) == 1
    assert rib.peer_gr_expired(A.address) == (P2,)  # P2 falls back to B
    assert rib.best(P2).next_hops == (B.address,)  # type: ignore[union-attr]
    assert rib.accepted_count(A.address) == 0


def test_peer_down_during_graceful_restart_drops_everything() -> None:
    rib = Rib(CTX)
    rib.apply_update(announce(A, P1), A)
    rib.peer_down(A.address, graceful=True)
    assert rib.peer_down(A.address) == (P1,)
    assert rib.stale_count(A.address) == 0


def test_claiming_a_block_drops_paths_for_it() -> None:
    rib = Rib(CTX)
    rib.apply_update(announce(A, P1, P2), A)
    r = rib.set_context(
        ImportContext(CTX.pools, own_blocks=CTX.own_blocks | {P1}, own_addresses=CTX.own_addresses)
    )
    assert r.changed == (P1,)
    assert not r.refresh_needed
    # releasing it: the path was not kept, a route refresh brings it back
    r = rib.set_context(CTX)
    assert r.changed == ()
    assert r.refresh_needed


def test_disabling_a_pool_drops_its_paths() -> None:
    rib = Rib(CTX)
    other = IPNetwork("10.250.0.0/26")
    ctx2 = ImportContext((*CTX.pools, PoolRule(IPNetwork("10.250.0.0/16"), 26)))
    rib.set_context(ctx2)
    rib.apply_update(announce(A, P1, other), A)
    r = rib.set_context(ImportContext((PoolRule(IPNetwork("10.250.0.0/16"), 26),)))
    assert r.changed == (P1,)
    assert not r.refresh_needed
    assert set(rib.best_routes()) == {other}


def test_our_new_address_as_next_hop_drops_those_paths() -> None:
    rib = Rib(CTX)
    moved = IPAddress("192.0.2.50")
    rib.apply_update(UpdateEvent(A.address, A.asn, ((P1, PathAttrs(moved)),)), A)
    rib.apply_update(announce(A, P2), A)
    r = rib.set_context(
        ImportContext(CTX.pools, own_blocks=CTX.own_blocks, own_addresses=frozenset({moved}))
    )
    assert r.changed == (P1,)
    assert r.refresh_needed  # SELF is no longer ours: paths through it may come back
    assert set(rib.best_routes()) == {P2}


def test_ipv6_and_ipv4_side_by_side() -> None:
    ctx = ImportContext(
        pools=(*CTX.pools, PoolRule(IPNetwork("fd00:10::/48"), 122)),
        own_addresses=frozenset({SELF}),
    )
    v6 = PeerInfo(IPAddress("2001:db8::2"), 64512, IPAddress("192.0.2.20"), ebgp=False)
    p6 = IPNetwork("fd00:10::40/122")
    rib = Rib(ctx, max_paths=2)
    rib.apply_update(announce(v6, p6), v6)
    rib.apply_update(announce(A, P1), A)
    # the same v4 prefix from the v6 session (RFC 8950 next hop): ECMP with A
    ev = UpdateEvent(v6.address, v6.asn, ((P1, PathAttrs(IPAddress("2001:db8::2"))),))
    assert rib.apply_update(ev, v6).changed == (P1,)
    assert rib.best(P1).next_hops == (A.address, IPAddress("2001:db8::2"))  # type: ignore[union-attr]
    assert rib.best(p6).next_hops == (v6.address,)  # type: ignore[union-attr]
    assert set(rib.peer_down(v6.address)) == {p6, P1}


def test_host_bits_name_the_same_prefix() -> None:
    rib = Rib(CTX)
    rib.apply_update(announce(A, IPNetwork("10.244.1.5/26")), A)
    assert rib.best(P1) is not None
    assert rib.apply_update(withdraw(A, P1), A).changed == (IPNetwork("10.244.1.5/26"),)


def test_update_from_the_wrong_peer_is_an_error() -> None:
    with pytest.raises(ValueError):
        Rib(CTX).apply_update(announce(A, P1), B)


# ---- Hypothesis: the Loc-RIB is a function of the Adj-RIBs-In --------------

PEERS = (A, B, C)
PREFIXES = (P1, P2, P3, OWN, IPNetwork("10.244.4.0/27"), IPNetwork("10.244.5.5/32"))
NEXT_HOPS = tuple(IPAddress(a) for a in ("192.0.2.2", "192.0.2.3", "192.0.2.9", "192.0.2.1"))

ops = st.one_of(
    st.tuples(
        st.just("announce"),
        st.sampled_from(PEERS),
        st.lists(st.sampled_from(PREFIXES), min_size=1, max_size=4),
        st.builds(
            PathAttrs,
            next_hop=st.sampled_from(NEXT_HOPS),
            as_path=st.sampled_from([(), (64513,), (64513, 64514)]),
            local_pref=st.sampled_from([None, 100, 200]),
            med=st.sampled_from([None, 5]),
        ),
    ),
    st.tuples(
        st.just("withdraw"), st.sampled_from(PEERS), st.lists(st.sampled_from(PREFIXES)), st.none()
    ),
    st.tuples(
        st.sampled_from(["down", "gr-down", "eor"]), st.sampled_from(PEERS), st.none(), st.none()
    ),
)


def recomputed(rib: Rib, max_paths: int) -> dict[IPNetwork, tuple[IPAddress, ...]]:
    by_prefix: dict[IPNetwork, list] = {}
    for peer in PEERS:
        for prefix, path in rib.adj_rib_in(peer.address).items():
            by_prefix.setdefault(prefix, []).append(path)
    out = {}
    for prefix, paths in by_prefix.items():
        hops: list[IPAddress] = []
        for p in rank(paths).equal_cost:
            if p.attrs.next_hop not in hops:
                hops.append(p.attrs.next_hop)
        out[prefix] = tuple(hops[:max_paths])
    return out


@settings(max_examples=200)
@given(st.lists(ops, max_size=25), st.integers(min_value=1, max_value=3))
def test_loc_rib_equals_recomputation_and_changed_sets_are_exact(ops_, max_paths: int) -> None:
    rib = Rib(CTX, max_paths=max_paths)
    for op, peer, prefixes, pattrs in ops_:
        before = {p: r.next_hops for p, r in rib.best_routes().items()}
        if op == "announce":
            changed = rib.apply_update(
                UpdateEvent(peer.address, peer.asn, tuple((p, pattrs) for p in prefixes)), peer
            ).changed
        elif op == "withdraw":
            changed = rib.apply_update(
                UpdateEvent(peer.address, peer.asn, withdrawn=tuple(prefixes)), peer
            ).changed
        elif op == "down":
            changed = rib.peer_down(peer.address)
        elif op == "gr-down":
            changed = rib.peer_down(peer.address, graceful=True)
        else:
            changed = rib.peer_eor(peer.address)
        after = {p: r.next_hops for p, r in rib.best_routes().items()}
        assert len(set(changed)) == len(changed)
        assert set(changed) == {
            p for p in before.keys() | after.keys() if before.get(p) != after.get(p)
        }
        assert after == recomputed(rib, max_paths)
        for prefix in after:
            assert rib.best(prefix) is not None
    # nothing refused is ever stored
    for peer in PEERS:
        for prefix, path in rib.adj_rib_in(peer.address).items():
            assert prefix != OWN and path.attrs.next_hop != SELF
            assert prefix != IPNetwork("10.244.4.0/27")


# ---- Hypothesis: the changes handed to the dataplane rebuild the Loc-RIB ----

CTX_MORE_OWN = ImportContext(
    pools=CTX.pools,
    own_blocks=frozenset({OWN, P2}),
    own_addresses=CTX.own_addresses,
)
ops_with_losses = st.one_of(
    ops,
    st.tuples(st.just("gr-expired"), st.sampled_from(PEERS), st.none(), st.none()),
    st.tuples(st.just("context"), st.sampled_from([CTX, CTX_MORE_OWN]), st.none(), st.none()),
)


def rebuilt(rib: Rib, max_paths: int) -> Rib:
    """A new RIB fed what the old one holds, peer by peer, from scratch."""
    fresh = Rib(rib.context, max_paths=max_paths)
    for peer in PEERS:
        paths = rib.adj_rib_in(peer.address)
        for prefix, path in paths.items():
            fresh.apply_update(
                UpdateEvent(peer.address, peer.asn, announced=((prefix, path.attrs),)), peer
            )
    return fresh


@settings(max_examples=200)
@given(st.lists(ops_with_losses, max_size=25), st.integers(min_value=1, max_value=3))
def test_taken_changes_keep_a_copy_equal_to_a_rebuild_from_scratch(ops_, max_paths: int) -> None:
    rib = Rib(CTX, max_paths=max_paths)
    copy: dict[IPNetwork, tuple[IPAddress, ...]] = {}
    for op, arg, prefixes, pattrs in ops_:
        if op == "announce":
            rib.apply_update(
                UpdateEvent(arg.address, arg.asn, tuple((p, pattrs) for p in prefixes)), arg
            )
        elif op == "withdraw":
            rib.apply_update(UpdateEvent(arg.address, arg.asn, withdrawn=tuple(prefixes)), arg)
        elif op == "down":
            rib.peer_down(arg.address)
        elif op == "gr-down":
            rib.peer_down(arg.address, graceful=True)
        elif op == "eor":
            rib.peer_eor(arg.address)
        elif op == "gr-expired":
            rib.peer_gr_expired(arg.address)
        else:
            rib.set_context(arg)
        taken = rib.take_changes()
        assert not rib.changes_pending
        for prefix, best in taken:
            if best is None:
                del copy[prefix]
            else:
                copy[prefix] = best.next_hops
        scratch = {p: r.next_hops for p, r in rebuilt(rib, max_paths).best_routes().items()}
        assert copy == scratch == {p: r.next_hops for p, r in rib.best_routes().items()}


def test_take_all_forgets_the_changes_not_taken() -> None:
    rib = Rib(CTX)
    rib.apply_update(announce(A, P1, P2), A)
    assert {p for p, _ in rib.take_all()} == {P1, P2}
    assert rib.take_changes() == []
    rib.apply_update(withdraw(A, P1), A)
    assert rib.take_changes() == [(P1, None)]
