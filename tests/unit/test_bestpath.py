"""Best path: each step with its reason, ECMP, and order independence."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from netaddr import IPAddress, IPNetwork

from bgpd import bestpath
from bgpd.bestpath import (
    COMPARATORS,
    ECMP_STEPS,
    Winner,
    compare,
    decide_best,
    decide_ecmp,
    rank,
)
from bgpd.model import Origin, Path, PathAttrs

PREFIX = IPNetwork("10.244.1.0/26")


def mk(
    peer: str,
    *,
    local_pref: int | None = None,
    as_path: tuple[int, ...] = (),
    origin: Origin = Origin.IGP,
    med: int | None = None,
    ebgp: bool = False,
    router_id: str | None = None,
    originator_id: str | None = None,
    cluster_list: tuple[str, ...] = (),
    next_hop: str | None = None,
) -> Path:
    return Path(
        prefix=PREFIX,
        peer=IPAddress(peer),
        peer_as=as_path[0] if as_path else 64512,
        peer_router_id=IPAddress(router_id or peer),
        ebgp=ebgp,
        attrs=PathAttrs(
            next_hop=IPAddress(next_hop or peer),
            as_path=as_path,
            origin=origin,
            local_pref=local_pref,
            med=med,
            originator_id=IPAddress(originator_id) if originator_id else None,
            cluster_list=tuple(IPAddress(c) for c in cluster_list),
        ),
    )


# (winner, loser, step name) where the step named is the first that separates them
STEP_CASES = [
    (mk("192.0.2.9", local_pref=200), mk("192.0.2.1"), "local-pref"),
    (mk("192.0.2.9"), mk("192.0.2.1", local_pref=99), "local-pref"),  # absent counts as 100
    (mk("192.0.2.9", as_path=(65001,)), mk("192.0.2.1", as_path=(65001, 65002)), "as-path"),
    (mk("192.0.2.9", origin=Origin.IGP), mk("192.0.2.1", origin=Origin.INCOMPLETE), "origin"),
    (mk("192.0.2.9", origin=Origin.EGP), mk("192.0.2.1", origin=Origin.INCOMPLETE), "origin"),
    (
        mk("192.0.2.9", as_path=(65001,), med=5),
        mk("192.0.2.1", as_path=(65001,), med=10),
        "med",
    ),
    (mk("192.0.2.9", as_path=(65001,)), mk("192.0.2.1", as_path=(65001,), med=1), "med"),
    (mk("192.0.2.9", ebgp=True), mk("192.0.2.1", ebgp=False), "ebgp"),
    (mk("192.0.2.9", router_id="1.1.1.1"), mk("192.0.2.1", router_id="2.2.2.2"), "router-id"),
    (
        mk("192.0.2.9", router_id="9.9.9.9", originator_id="1.1.1.1"),
        mk("192.0.2.1", router_id="2.2.2.2"),
        "router-id",
    ),
    (
        mk("192.0.2.9", router_id="1.1.1.1", cluster_list=("10.0.0.1",)),
        mk("192.0.2.1", router_id="1.1.1.1", cluster_list=("10.0.0.1", "10.0.0.2")),
        "cluster-list",
    ),
    (mk("192.0.2.1", router_id="1.1.1.1"), mk("192.0.2.9", router_id="1.1.1.1"), "peer-address"),
    (
        mk("192.0.2.200", router_id="1.1.1.1"),
        mk("2001:db8::1", router_id="1.1.1.1"),
        "peer-address",
    ),
]


@pytest.mark.parametrize(("winner", "loser", "step"), STEP_CASES)
def test_each_step_decides_with_its_reason(winner: Path, loser: Path, step: str) -> None:
    d = compare(winner, loser)
    assert d.winner is Winner.A
    assert d.reason.startswith(f"{step}: ")
    assert compare(loser, winner).winner is Winner.B
    best, reason = decide_best([loser, winner])
    assert best is winner
    assert reason == d.reason


def test_reason_names_the_values() -> None:
    d = compare(mk("192.0.2.9", local_pref=200), mk("192.0.2.1"))
    assert d.reason == "local-pref: higher local preference (200 vs 100)"
    d = compare(mk("192.0.2.1", router_id="1.1.1.1"), mk("192.0.2.9", router_id="1.1.1.1"))
    assert d.reason == "peer-address: lower peer address (192.0.2.1 vs 192.0.2.9)"


def test_med_is_not_compared_across_neighbour_ases() -> None:
    a = mk("192.0.2.9", as_path=(65001,), med=100, router_id="1.1.1.1")
    b = mk("192.0.2.1", as_path=(65002,), med=0, router_id="2.2.2.2")
    assert bestpath.med(a, b).winner is Winner.TIE
    assert decide_best([a, b]) == (a, compare(a, b).reason)
    assert compare(a, b).reason.startswith("router-id")


def test_unknown_router_id_loses() -> None:
    known = mk("192.0.2.9")
    unknown = Path(PREFIX, IPAddress("192.0.2.1"), 64512, None, False, known.attrs)
    assert decide_best([unknown, known])[0] is known


def test_only_path() -> None:
    p = mk("192.0.2.1")
    assert decide_best([p]) == (p, "only path")
    assert decide_ecmp([p], 4) == (p,)


def test_empty_and_duplicate_peers_are_errors() -> None:
    with pytest.raises(ValueError):
        decide_best([])
    with pytest.raises(ValueError, match="same peer"):
        decide_best([mk("192.0.2.1"), mk("192.0.2.1")])
    with pytest.raises(ValueError, match="same peer"):
        decide_best([mk("192.0.2.1"), mk("192.0.2.1"), mk("192.0.2.1")])
    with pytest.raises(ValueError):
        decide_ecmp([mk("192.0.2.1")], 0)


def test_ecmp_set_ties_through_ecmp_steps_only() -> None:
    a = mk("192.0.2.3", router_id="3.3.3.3")
    b = mk("192.0.2.1", router_id="1.1.1.1")
    c = mk("192.0.2.2", router_id="2.2.2.2", cluster_list=("10.0.0.1",))
    worse = mk("192.0.2.4", router_id="0.0.0.1", as_path=(65001,))
    paths = [a, worse, c, b]
    assert decide_best(paths)[0] is b
    assert decide_ecmp(paths, 8) == (b, c, a)  # best first, then router id order
    assert decide_ecmp(paths, 2) == (b, c)
    assert decide_ecmp(paths, 1) == (b,)
    assert [s.name for s in ECMP_STEPS] == ["local-pref", "as-path", "origin", "med", "ebgp"]


def test_ecmp_excludes_a_path_beaten_on_med_in_its_group() -> None:
    a = mk("192.0.2.1", as_path=(65001,), med=10)
    b = mk("192.0.2.2", as_path=(65001,), med=20)
    c = mk("192.0.2.3", as_path=(65002,), med=50)
    assert set(decide_ecmp([a, b, c], 8)) == {a, c}


def test_med_intransitivity_is_resolved_the_same_in_every_order() -> None:
    # a beats b on MED (same AS 65001); b beats c and c beats a on router id:
    # pairwise "keep the better" would depend on order; elimination does not.
    a = mk("192.0.2.1", as_path=(65001,), med=10, router_id="3.3.3.3")
    b = mk("192.0.2.2", as_path=(65001,), med=20, router_id="1.1.1.1")
    c = mk("192.0.2.3", as_path=(65002,), med=0, router_id="2.2.2.2")
    assert compare(a, b).winner is Winner.A
    assert compare(b, c).winner is Winner.A
    assert compare(c, a).winner is Winner.A
    results = {decide_best(list(p))[0].peer for p in itertools.permutations([a, b, c])}
    assert results == {c.peer}  # b eliminated by MED, then c beats a on router id


# ---- Hypothesis -------------------------------------------------------------

_peers = st.integers(min_value=1, max_value=250).map(lambda i: IPAddress(f"192.0.2.{i}"))


@st.composite
def paths(draw: st.DrawFn, min_size: int = 1, max_size: int = 6) -> list[Path]:
    peers = draw(st.lists(_peers, min_size=min_size, max_size=max_size, unique=True))
    out = []
    for peer in peers:
        as_path = draw(st.lists(st.sampled_from([65001, 65002, 65003]), max_size=3))
        cluster = draw(st.lists(st.sampled_from(["10.0.0.1", "10.0.0.2"]), max_size=2))
        out.append(
            Path(
                prefix=PREFIX,
                peer=peer,
                peer_as=as_path[0] if as_path else 64512,
                peer_router_id=draw(
                    st.one_of(st.none(), st.sampled_from(["1.1.1.1", "2.2.2.2"])).map(
                        lambda s: IPAddress(s) if s else None
                    )
                ),
                ebgp=draw(st.booleans()),
                attrs=PathAttrs(
                    next_hop=draw(st.sampled_from([peer, IPAddress("192.0.2.251")])),
                    as_path=tuple(as_path),
                    origin=draw(st.sampled_from(list(Origin))),
                    local_pref=draw(st.sampled_from([None, 50, 100, 200])),
                    med=draw(st.sampled_from([None, 0, 10, 20])),
                    originator_id=draw(
                        st.sampled_from([None, IPAddress("1.1.1.1"), IPAddress("3.3.3.3")])
                    ),
                    cluster_list=tuple(IPAddress(c) for c in cluster),
                ),
            )
        )
    return out


@settings(max_examples=300)
@given(paths(), st.randoms(use_true_random=False), st.integers(min_value=1, max_value=6))
def test_result_does_not_depend_on_arrival_order(ps: list[Path], rnd, max_paths: int) -> None:
    shuffled = list(ps)
    rnd.shuffle(shuffled)
    assert decide_best(ps) == decide_best(shuffled)
    assert decide_ecmp(ps, max_paths) == decide_ecmp(shuffled, max_paths)


@given(paths(min_size=2, max_size=2))
def test_pairwise_order_is_total_and_antisymmetric(ps: list[Path]) -> None:
    a, b = ps
    ab, ba = compare(a, b), compare(b, a)
    assert ab.winner is not Winner.TIE  # distinct peers: never a tie
    assert {ab.winner, ba.winner} == {Winner.A, Winner.B}
    assert ab.reason == ba.reason
    assert compare(a, a).winner is Winner.TIE


@given(paths(min_size=1, max_size=6))
def test_best_is_in_ecmp_set_and_ecmp_paths_tie_on_ecmp_steps(ps: list[Path]) -> None:
    r = rank(ps)
    assert r.equal_cost[0] is r.best
    assert len({p.peer for p in r.equal_cost}) == len(r.equal_cost)
    for p in r.equal_cost:
        # nothing in the set beats another member on a ranking step (MED groups aside)
        for q in r.equal_cost:
            for step in ECMP_STEPS:
                if step is not bestpath.med:
                    assert step(p, q).winner is Winner.TIE


@given(paths(min_size=1, max_size=6))
def test_without_med_groups_the_best_beats_every_other_pairwise(ps: list[Path]) -> None:
    # One neighbour AS for all paths: the order is lexicographic, hence transitive.
    same_as = [
        Path(
            p.prefix,
            p.peer,
            65001,
            p.peer_router_id,
            p.ebgp,
            dataclasses.replace(p.attrs, as_path=(65001,) * len(p.attrs.as_path or (1,))),
        )
        for p in ps
    ]
    best, _ = decide_best(same_as)
    for other in same_as:
        if other is not best:
            assert compare(best, other).winner is Winner.A


def test_comparator_tuple_is_the_documented_order() -> None:
    assert [s.name for s in COMPARATORS] == [
        "local-pref",
        "as-path",
        "origin",
        "med",
        "ebgp",
        "router-id",
        "cluster-list",
        "peer-address",
    ]
