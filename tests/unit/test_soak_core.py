"""The soak's pure parts (tests/soak/core.py): the fault plan, the
invariant checks and the growth of a series."""

import pytest

from tests.soak.core import (
    BLOCK_SIZES,
    FAULT_KINDS,
    NODE_KINDS,
    PoolMove,
    PoolState,
    distribution,
    duplicate_addresses,
    ended,
    failures_among_live,
    growth,
    measured_from,
    missing_block_routes,
    orphan_routes,
    overdue,
    plan_faults,
    plan_pool_move,
    pool_slots,
    rates_by_window,
    reachability_due,
    settled_pods,
    track_since,
    window_start,
)

NODES = ["n1", "n2", "n3", "n4"]


def test_fault_plan_is_reproducible_and_seed_dependent():
    assert plan_faults(7, 600, NODES) == plan_faults(7, 600, NODES)
    assert plan_faults(7, 600, NODES) != plan_faults(8, 600, NODES)


def test_fault_plan_has_every_kind_per_round_and_valid_targets():
    plan = plan_faults(3, 1800, NODES, gap_s=(10, 20))
    assert len(plan) == 1800 // 10 + 1
    n = len(FAULT_KINDS)
    for i in range(0, len(plan) - n + 1, n):
        assert sorted(f.kind for f in plan[i : i + n]) == sorted(FAULT_KINDS)
    for f in plan:
        assert 10 <= f.gap_s <= 20
        if f.kind in NODE_KINDS:
            assert f.target in NODES
        elif f.kind == "pool_block_size":
            assert int(f.target) in BLOCK_SIZES
        else:
            assert f.target == ""
    sizes = [f.target for f in plan if f.kind == "pool_block_size"]
    assert sizes[:2] == [str(s) for s in BLOCK_SIZES]


def test_fault_plan_refuses_nonsense():
    with pytest.raises(ValueError):
        plan_faults(1, 60, [])
    with pytest.raises(ValueError):
        plan_faults(1, 60, NODES, gap_s=(0, 5))
    with pytest.raises(ValueError):
        plan_faults(1, 60, NODES, gap_s=(9, 5))


def test_duplicate_addresses():
    assert duplicate_addresses({"a": "10.0.0.1", "b": "10.0.0.2"}) == {}
    pods = {"a": "10.0.0.1", "b": "10.0.0.2", "c": "10.0.0.1"}
    assert duplicate_addresses(pods) == {"10.0.0.1": ["a", "c"]}


def test_orphan_routes_are_pool_routes_outside_every_owned_block():
    routes = [
        ("n1", "10.244.0.0/26"),  # owned block
        ("n1", "10.244.0.5"),  # a pod /32 inside an owned block
        ("n2", "10.244.0.64/26"),  # nobody owns it
        ("n2", "10.244.0.70/32"),  # inside the unowned block
        ("n3", "192.0.2.0/26"),  # underlay: not IPAM's
        ("n3", "10.244.0.0/24"),  # wider than the owned block: not inside it
    ]
    got = orphan_routes(routes, ["10.244.0.0/26"], ["10.244.0.0/16"])
    assert got == {("n2", "10.244.0.64/26"), ("n2", "10.244.0.70/32"), ("n3", "10.244.0.0/24")}
    assert orphan_routes(routes, ["10.244.0.0/16"], ["10.244.0.0/16"]) == set()
    assert orphan_routes([("n1", "fd00::/64")], [], ["10.244.0.0/16"]) == set()


def test_persistence_tracking_overdue_and_ended():
    s1 = track_since({}, {"r1", "r2"}, 10.0)
    s2 = track_since(s1, {"r1", "r3"}, 20.0)
    assert s2 == {"r1": 10.0, "r3": 20.0}
    assert ended(s1, s2, 20.0) == [10.0]  # r2 lasted from 10 to 20
    assert overdue(s2, 129.0, 120.0) == []
    assert overdue(s2, 131.0, 120.0) == ["r1"]


def test_reachability_is_due_only_after_the_settle_time():
    assert not reachability_due(100.0, 98.0, False, 5.0)
    assert reachability_due(100.0, 95.0, False, 5.0)
    assert not reachability_due(100.0, 0.0, True, 5.0)


def test_settled_pods():
    assert settled_pods({"a": 1.0, "b": 8.0, "c": 5.0}, 10.0, 5.0) == ["a", "c"]


def test_growth_slope_and_percent():
    flat = growth([(0, 100.0), (60, 100.0), (120, 100.0)])
    assert flat is not None and flat.slope_per_min == 0 and flat.growth_pct == 0
    rising = growth([(0, 100.0), (60, 105.0), (120, 110.0)])
    assert rising is not None
    assert rising.slope_per_min == pytest.approx(5.0)
    assert rising.growth_pct == pytest.approx(10.0)
    assert rising.span_s == 120
    # noise around a flat line: the fit, not the last sample, decides
    noisy = growth([(0, 100.0), (30, 120.0), (60, 80.0), (90, 100.0)])
    assert noisy is not None and abs(noisy.growth_pct) < 15
    assert growth([(0, 1.0), (1, 2.0)]) is None
    assert growth([(5, 1.0), (5, 2.0), (5, 3.0)]) is None


def test_window_start():
    assert window_start(1800) == 300
    assert window_start(180) == 60


def test_a_restarted_process_is_measured_after_its_own_warm_up():
    assert measured_from(0.0, 300.0) == 300.0
    assert measured_from(100.0, 60.0) == 160.0


def test_block_sizes_go_away_from_the_labs_and_back():
    assert BLOCK_SIZES == (28, 26)
    sizes = [f.target for f in plan_faults(5, 1800, NODES) if f.kind == "pool_block_size"]
    assert sizes[:4] == ["28", "26", "28", "26"]


def test_failures_of_pods_deleted_meanwhile_do_not_count():
    failing = [("a", "b"), ("a", "c"), ("c", "a"), ("b", "b")]
    assert failures_among_live(failing, {"a", "b"}) == {("a", "b"), ("b", "b")}
    assert failures_among_live(failing, set()) == set()


def test_distribution():
    assert distribution([]) is None
    d = distribution([10.0, 10.2, 9.9, 30.0, 10.1])
    assert d == {"count": 5, "min": 9.9, "p50": 10.1, "p95": 30.0, "max": 30.0}
    assert distribution([3.0]) == {"count": 1, "min": 3.0, "p50": 3.0, "p95": 3.0, "max": 3.0}


def test_rates_by_window_count_whole_windows_only():
    times = [0.5, 1.0, 59.9, 60.0, 61.0, 125.0, 200.0]
    assert rates_by_window(times, 0.0, 130.0, 60.0) == [3 / 60, 2 / 60]
    assert rates_by_window(times, 10.0, 60.0, 60.0) == []


def test_pool_slots():
    assert pool_slots("10.244.0.0/16") == [
        "10.244.0.0/18",
        "10.244.64.0/18",
        "10.244.128.0/18",
        "10.244.192.0/18",
    ]
    assert pool_slots("10.244.0.0/16", 1) == ["10.244.0.0/16"]
    with pytest.raises(ValueError):
        pool_slots("10.244.0.0/16", 3)


SLOTS = pool_slots("10.244.0.0/16")


def test_pool_move_creates_in_the_next_slot_and_disables_the_pool_in_use():
    first = [PoolState("lab-pods", SLOTS[0], False, 4)]
    assert plan_pool_move(first, SLOTS, 28, "soak-1-b28") == PoolMove(
        (), "soak-1-b28", SLOTS[1], 28, ("lab-pods",)
    )
    # the old pool still holds blocks: kept; the next slot after the enabled one
    second = [PoolState("lab-pods", SLOTS[0], True, 2), PoolState("soak-1", SLOTS[1], False, 4)]
    assert plan_pool_move(second, SLOTS, 26, "soak-2-b26") == PoolMove(
        (), "soak-2-b26", SLOTS[2], 26, ("soak-1",)
    )


def test_pool_move_deletes_the_empty_disabled_pools_and_wraps_around():
    pools = [
        PoolState("lab-pods", SLOTS[0], True, 0),
        PoolState("soak-1", SLOTS[1], True, 1),
        PoolState("soak-2", SLOTS[2], True, 0),
        PoolState("soak-3", SLOTS[3], False, 4),
    ]
    assert plan_pool_move(pools, SLOTS, 28, "soak-4-b28") == PoolMove(
        ("lab-pods", "soak-2"), "soak-4-b28", SLOTS[0], 28, ("soak-3",)
    )


def test_pool_move_says_why_when_every_slot_is_held():
    pools = [PoolState(f"p{i}", s, i != 3, 1) for i, s in enumerate(SLOTS)]
    why = plan_pool_move(pools, SLOTS, 28, "soak-9-b28")
    assert isinstance(why, str) and "no free slot" in why and "p0 (1 blocks)" in why


def test_missing_block_routes_are_owned_blocks_another_node_does_not_route():
    routes = [("n1", "10.244.0.64/26"), ("n2", "10.244.0.0/26"), ("n3", "10.244.0.0/26")]
    owners = {"10.244.0.0/26": "n1", "10.244.0.64/26": "n2"}
    assert missing_block_routes(routes, owners, ["n1", "n2", "n3"]) == {("n3", "10.244.0.64/26")}
    assert missing_block_routes(routes, {}, ["n1"]) == set()
