"""The soak's pure parts (tests/soak/core.py): the fault plan, the
invariant checks and the growth of a series."""

import pytest

from tests.soak.core import (
    BLOCK_SIZES,
    FAULT_KINDS,
    NODE_KINDS,
    duplicate_addresses,
    ended,
    growth,
    measured_from,
    orphan_routes,
    overdue,
    plan_faults,
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
