"""The pure allocator core: pool choice, free blocks, assignment order,
releases with sequence numbers."""

from __future__ import annotations

import pytest
from netaddr import IPAddress, IPNetwork

from ipam.allocator import (
    AddressInUse,
    decide_block_releasable,
    decide_pools_for_host,
    decide_reserved_ordinals,
    plan_assign,
    plan_assign_ip,
    plan_free_block,
    plan_handle_counts,
    plan_new_block,
    plan_release,
    plan_release_handle,
)
from ipam.model import Pool, Use


def pool(name: str = "p", cidr: str = "10.244.0.0/24", bs: int = 26, **kw: object) -> Pool:
    return Pool(name, IPNetwork(cidr), bs, **kw)  # type: ignore[arg-type]


def test_pools_for_host_filters_by_version_use_selector_and_disabled() -> None:
    pools = [
        pool("b", "10.1.0.0/16"),
        pool("a", "10.0.0.0/16"),
        pool("off", "10.2.0.0/16", disabled=True),
        pool("r2", "10.3.0.0/16", node_selector="rack == 'r2'"),
        pool("tun", "10.4.0.0/16", allowed_uses=(Use.TUNNEL,)),
        pool("v6", "fd00::/48", bs=122),
    ]
    got = decide_pools_for_host(pools, {"rack": "r1"}, Use.WORKLOAD, 4)
    assert [p.name for p in got] == ["a", "b"]
    assert [p.name for p in decide_pools_for_host(pools, {"rack": "r2"}, Use.WORKLOAD, 4)] == [
        "a",
        "b",
        "r2",
    ]
    assert [p.name for p in decide_pools_for_host(pools, {}, Use.TUNNEL, 4)] == ["a", "b", "tun"]
    assert [p.name for p in decide_pools_for_host(pools, {}, Use.WORKLOAD, 6)] == ["v6"]
    assert [p.name for p in decide_pools_for_host(pools, {}, Use.WORKLOAD, 4, ["b", "x"])] == ["b"]


def test_free_block_skips_taken_and_reports_full() -> None:
    p = pool(cidr="10.244.0.0/25", bs=26)  # two blocks
    first = plan_free_block(p, [], "h1")
    assert first in (IPNetwork("10.244.0.0/26"), IPNetwork("10.244.0.64/26"))
    second = plan_free_block(p, [first], "h1")  # type: ignore[list-item]
    assert second is not None and second != first
    assert plan_free_block(p, [first, second], "h1") is None  # type: ignore[list-item]


def test_free_block_for_slash32_blocks_and_ipv6() -> None:
    assert plan_free_block(pool(cidr="10.9.9.9/32", bs=32), [], "h") == IPNetwork("10.9.9.9/32")
    b6 = plan_free_block(pool(cidr="fd00:1::/120", bs=122), [], "h")
    assert b6 is not None and b6.prefixlen == 122 and b6 in IPNetwork("fd00:1::/120")


def test_free_block_ignores_blocks_of_other_pools() -> None:
    p = pool(cidr="10.244.0.0/26", bs=26)
    assert plan_free_block(p, [IPNetwork("10.0.0.0/26")], "h") == IPNetwork("10.244.0.0/26")


def test_assign_resumes_after_last_assigned() -> None:
    p = pool()
    b = plan_new_block(IPNetwork("10.244.0.0/26"), p, "h", 0.0, ())
    r1 = plan_assign(b, 2, "c1", {})
    assert r1.addresses == (IPAddress("10.244.0.0"), IPAddress("10.244.0.1"))
    freed = plan_release_handle(r1.block, "c1")
    assert set(freed.addresses) == set(r1.addresses)
    r2 = plan_assign(freed.block, 1, "c2", {})
    # The just-released .0 and .1 are the last to be reused.
    assert r2.addresses == (IPAddress("10.244.0.2"),)
    assert r2.block.seq == 3


def test_assign_stops_when_block_full() -> None:
    b = plan_new_block(IPNetwork("10.244.0.0/30"), pool(cidr="10.244.0.0/24", bs=30), "h", 0, ())
    r = plan_assign(b, 10, "c", {})
    assert len(r.addresses) == 4 and r.block.free_count == 0
    assert plan_assign(r.block, 1, "d", {}).addresses == ()


def test_reserved_ordinals_for_l2_segment() -> None:
    assert decide_reserved_ordinals(64, True) == (0, 1, 63)
    assert decide_reserved_ordinals(64, False) == ()
    b = plan_new_block(IPNetwork("10.244.0.0/26"), pool(), "h", 0, (0, 1, 63))
    r = plan_assign(b, 61, "c", {})
    assert len(r.addresses) == 61
    assert IPAddress("10.244.0.1") not in r.addresses
    assert r.block.workload_count == 61 and r.block.free_count == 0


def test_assign_requested_ip() -> None:
    b = plan_new_block(IPNetwork("10.244.0.0/26"), pool(), "h", 0, ())
    b2 = plan_assign_ip(b, IPAddress("10.244.0.7"), "c", {})
    assert b2.allocations[7].handle == "c"
    assert plan_assign_ip(b2, IPAddress("10.244.0.7"), "c", {}) is b2  # idempotent
    with pytest.raises(AddressInUse):
        plan_assign_ip(b2, IPAddress("10.244.0.7"), "other", {})


def test_stale_release_by_sequence_number_keeps_the_new_owner() -> None:
    b = plan_new_block(IPNetwork("10.244.0.0/26"), pool(), "h", 0, ())
    r = plan_assign(b, 1, "old", {})
    ip = r.addresses[0]
    old_seq = r.block.allocations[0].seq
    b2 = plan_release(r.block, [(ip, None)]).block
    b3 = plan_assign_ip(b2, ip, "new", {})
    stale = plan_release(b3, [(ip, old_seq)])
    assert stale.addresses == () and stale.block.allocations[0].handle == "new"
    fresh = plan_release(b3, [(ip, b3.allocations[0].seq)])
    assert fresh.addresses == (ip,) and fresh.per_handle == {"new": 1}


def test_release_never_frees_reserved_addresses() -> None:
    b = plan_new_block(IPNetwork("10.244.0.0/26"), pool(), "h", 0, (0, 1, 63))
    r = plan_release(b, [(IPAddress("10.244.0.1"), None)])
    assert r.addresses == () and 1 in r.block.allocations


def test_block_releasable_only_when_empty_and_old() -> None:
    b = plan_new_block(IPNetwork("10.244.0.0/26"), pool(), "h", 100.0, (0, 1, 63))
    assert not decide_block_releasable(b, 150.0, 300.0)
    assert decide_block_releasable(b, 400.0, 300.0)
    used = plan_assign(b, 1, "c", {}).block
    assert not decide_block_releasable(used, 10_000.0, 300.0)


def test_handle_counts() -> None:
    assert plan_handle_counts({"a": 1}, {"a": 2, "b": 1}) == {"a": 3, "b": 1}
    assert plan_handle_counts({"a": 1}, {"a": -1}) == {}
