"""The IPAM shell behaves the same on the memory store and on real etcd:
claims, borrowing, strict affinity, requested addresses, releases, block
limits, tunnel addresses, and repairs of half-finished claims."""

from __future__ import annotations

import os

import pytest
from netaddr import IPAddress, IPNetwork

from datastore.port import KvStore, Put
from ipam.allocator import AddressInUse, IpamError, PoolExhausted
from ipam.ipam import AssignRequest, Ipam
from ipam.model import Affinity, AffinityState, IpamSettings, Pool, Use, dumps

pytestmark = pytest.mark.etcd


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def make(kv: KvStore, clock: Clock | None = None, **kw: object) -> Ipam:
    return Ipam(kv, prefix=f"/c/{os.urandom(4).hex()}", clock=clock or Clock(), **kw)  # type: ignore[arg-type]


def req(host: str, handle: str, **kw: object) -> AssignRequest:
    return AssignRequest(host=host, handle=handle, **kw)  # type: ignore[arg-type]


async def test_assign_claims_affine_blocks_and_never_repeats(kv: KvStore) -> None:
    ipam = make(kv)
    await ipam.apply_pool(Pool("p", IPNetwork("10.244.0.0/24"), 26))
    seen: set[IPAddress] = set()
    for i in range(70):
        (a,) = await ipam.assign(req("h1", f"c{i}"))
        assert a.ip not in seen and a.pool == "p"
        seen.add(a.ip)
    snap = await ipam.snapshot()
    mine = [b for b, _ in snap.blocks.values() if b.affinity == "h1"]
    assert len(mine) == 2  # a second block once the first was full
    assert {a.state for a, _ in snap.affinities.values()} == {AffinityState.CONFIRMED}
    assert await ipam.check({"h1"}) == []


async def test_borrow_when_pool_has_no_free_block_unless_strict(kv: KvStore) -> None:
    ipam = make(kv)
    await ipam.apply_pool(Pool("p", IPNetwork("10.244.0.0/26"), 27))  # two blocks
    await ipam.assign(req("h1", "a", num_v4=1))
    await ipam.assign(req("h2", "b", num_v4=32))  # h2 fills its block
    (borrowed,) = await ipam.assign(req("h2", "c"))
    snap = await ipam.snapshot()
    owner = next(b for b, _ in snap.blocks.values() if borrowed.ip in b.cidr)
    assert owner.affinity == "h1"
    await ipam.apply_settings(IpamSettings(strict_affinity=True))
    with pytest.raises(PoolExhausted, match="strictAffinity"):
        await ipam.assign(req("h2", "d"))


async def test_pool_exhausted_is_clear_and_leaves_nothing(kv: KvStore) -> None:
    ipam = make(kv)
    await ipam.apply_pool(Pool("p", IPNetwork("10.244.0.0/30"), 30))
    await ipam.apply_pool(Pool("p6", IPNetwork("fd00::/126"), 126))
    await ipam.assign(req("h", "a", num_v4=4))
    with pytest.raises(PoolExhausted, match="exhausted"):
        await ipam.assign(req("h", "b"))
    # Dual-stack: v6 fits, v4 does not -> nothing of "c" stays behind.
    with pytest.raises(PoolExhausted):
        await ipam.assign(req("h", "c", num_v4=1, num_v6=1))
    assert await ipam.addresses_of("c") == []
    assert await ipam.check({"h"}) == []


async def test_no_pool_for_host(kv: KvStore) -> None:
    ipam = make(kv)
    await ipam.apply_pool(Pool("p", IPNetwork("10.244.0.0/24"), 26, node_selector="rack == 'r9'"))
    with pytest.raises(PoolExhausted, match="no enabled IPv4 pool"):
        await ipam.assign(req("h", "a", labels={"rack": "r1"}))


async def test_dual_stack_and_requested_address(kv: KvStore) -> None:
    ipam = make(kv)
    await ipam.apply_pool(Pool("v4", IPNetwork("10.244.0.0/24"), 26))
    await ipam.apply_pool(Pool("v6", IPNetwork("fd00:10::/120"), 122))
    got = await ipam.assign(req("h", "pod", num_v4=1, num_v6=1))
    assert sorted(a.ip.version for a in got) == [4, 6]
    a = await ipam.assign_ip("h", IPAddress("10.244.0.200"), "fixed")
    assert a.ip == IPAddress("10.244.0.200")
    with pytest.raises(AddressInUse):
        await ipam.assign_ip("h2", IPAddress("10.244.0.200"), "other")
    with pytest.raises(IpamError, match="not in any pool"):
        await ipam.assign_ip("h", IPAddress("192.0.2.1"), "x")


async def test_release_by_handle_and_address_is_idempotent(kv: KvStore) -> None:
    ipam = make(kv)
    await ipam.apply_pool(Pool("p", IPNetwork("10.244.0.0/24"), 26))
    got = await ipam.assign(req("h", "pod1", num_v4=3))
    assert len(await ipam.release_handle("pod1")) == 3
    assert await ipam.release_handle("pod1") == []
    assert await ipam.release_handle("never-existed") == []
    (x,) = await ipam.assign(req("h", "pod2"))
    freed, unknown = await ipam.release_ips([(x.ip, None), (got[0].ip, None)])
    assert freed == [x.ip] and unknown == [got[0].ip]
    assert await ipam.addresses_of("pod2") == []
    assert await ipam.check({"h"}) == []


async def test_empty_block_released_after_min_age(kv: KvStore) -> None:
    clock = Clock()
    ipam = make(kv, clock)
    await ipam.apply_pool(Pool("p", IPNetwork("10.244.0.0/24"), 26))
    await ipam.apply_settings(IpamSettings(min_block_age_s=60))
    await ipam.assign(req("h", "a"))
    await ipam.release_handle("a")
    assert await ipam.release_empty_blocks("h") == []  # too young
    clock.now += 61
    assert len(await ipam.release_empty_blocks("h")) == 1
    snap = await ipam.snapshot()
    assert snap.blocks == {} and snap.affinities == {}


async def test_block_limit_per_host(kv: KvStore) -> None:
    ipam = make(kv)
    await ipam.apply_pool(Pool("p", IPNetwork("10.244.0.0/24"), 28))
    await ipam.apply_settings(IpamSettings(max_blocks_per_host=1, strict_affinity=True))
    await ipam.assign(req("h", "a", num_v4=16))
    with pytest.raises(PoolExhausted, match="block limit"):
        await ipam.assign(req("h", "b"))


async def test_tunnel_address_is_stable_and_from_tunnel_pools(kv: KvStore) -> None:
    ipam = make(kv)
    await ipam.apply_pool(
        Pool("pods", IPNetwork("10.244.0.0/24"), 26, allowed_uses=(Use.WORKLOAD,))
    )
    assert await ipam.tunnel_address("h", {}) is None
    await ipam.apply_pool(Pool("tun", IPNetwork("10.245.0.0/24"), 26, allowed_uses=(Use.TUNNEL,)))
    t1 = await ipam.tunnel_address("h", {})
    t2 = await ipam.tunnel_address("h", {})
    assert t1 is not None and t1 == t2 and t1.ip in IPNetwork("10.245.0.0/24")
    (w,) = await ipam.assign(req("h", "pod"))
    assert w.ip in IPNetwork("10.244.0.0/24")


async def test_l2_segment_reserves_gateway(kv: KvStore) -> None:
    ipam = make(kv, l2_segment=True)
    await ipam.apply_pool(Pool("p", IPNetwork("10.244.0.0/24"), 26))
    got = [(await ipam.assign(req("h", f"c{i}")))[0] for i in range(61)]
    blocks = {a.block for a in got}
    assert len(blocks) == 1
    block = blocks.pop()
    assert all(a.gateway == IPAddress(int(block.first) + 1) for a in got)
    assert {a.ip for a in got}.isdisjoint(
        {IPAddress(block.first), IPAddress(block.first + 1), IPAddress(block.last)}
    )
    assert await ipam.check({"h"}) == []


async def test_l2_segment_one_block_per_host(kv: KvStore) -> None:
    """Debian's bridge plugin gives the pod bridge one subnet: a pod from a
    host's second block, or a borrowed address, is refused clearly here
    instead of failing in the bridge plugin."""
    ipam = make(kv, l2_segment=True)
    await ipam.apply_pool(Pool("p", IPNetwork("10.244.0.0/28"), 29))  # 5 pods a block
    got = [(await ipam.assign(req("h", f"c{i}")))[0] for i in range(5)]
    assert len({a.block for a in got}) == 1
    with pytest.raises(PoolExhausted, match=r"is full \(5 pods\): L2-segment mode uses one block"):
        await ipam.assign(req("h", "c5"))
    [other] = {IPNetwork("10.244.0.0/29"), IPNetwork("10.244.0.8/29")} - {got[0].block}
    with pytest.raises(IpamError, match="must be on the pod bridge's subnet"):
        await ipam.assign_ip("h", other[2], "c6")
    # another host takes the last block; a third finds none and may not borrow
    await ipam.assign(req("h2", "d0"))
    with pytest.raises(PoolExhausted, match="cannot use an address borrowed"):
        await ipam.assign(req("h3", "e0"))
    assert await ipam.check({"h", "h2", "h3"}) == []


async def test_overlapping_and_invalid_pools_are_refused(kv: KvStore) -> None:
    ipam = make(kv)
    await ipam.apply_pool(Pool("a", IPNetwork("10.244.0.0/16"), 26))
    with pytest.raises(IpamError, match="overlaps a"):
        await ipam.apply_pool(Pool("b", IPNetwork("10.244.128.0/17"), 26))
    with pytest.raises(IpamError, match="blockSize: 33 is out of range"):
        await ipam.apply_pool(Pool("c", IPNetwork("10.9.0.0/16"), 33))
    assert [p.name for p in await ipam.pools()] == ["a"]
    await ipam.assign(req("h", "x"))
    with pytest.raises(IpamError, match="still has blocks"):
        await ipam.delete_pool("a")
    with pytest.raises(IpamError, match="cannot change"):
        await ipam.apply_pool(Pool("a", IPNetwork("10.244.0.0/16"), 28))


async def test_half_finished_claim_is_found_and_finished_or_undone(kv: KvStore) -> None:
    clock = Clock()
    ipam = make(kv, clock)
    await ipam.apply_pool(Pool("p", IPNetwork("10.244.0.0/24"), 26))
    (a,) = await ipam.assign(req("h", "a"))
    # A claim that died after the pending affinity, before the block.
    free = next(c for c in IPNetwork("10.244.0.0/24").subnet(26) if c != a.block)
    dead = Affinity("h", free, AffinityState.PENDING, clock.now)
    await kv.txn([], [Put(ipam.keys.affinity("h", dead.cidr), dumps(dead.to_dict()))])
    # A claim that died after the block, before confirming.
    block_key = ipam.keys.block(a.block)
    aff_key = ipam.keys.affinity("h", a.block)
    pend = Affinity("h", a.block, AffinityState.PENDING, clock.now)
    await kv.txn([], [Put(aff_key, dumps(pend.to_dict()))])
    young = await ipam.check({"h"})  # may still be running: shown, not repaired
    assert {i.kind.value for i in young} == {"claim-in-progress"}
    assert sorted(i.subject for i in young) == sorted([f"h/{a.block}", f"h/{free}"])
    assert await ipam.gc({"h"}) == []
    clock.now += 31
    issues = await ipam.check({"h"})
    assert {i.kind.value for i in issues} == {"half-finished-claim"}
    assert sorted(i.subject for i in issues) == sorted([f"h/{a.block}", f"h/{free}"])
    await ipam.gc({"h"})
    assert await ipam.check({"h"}) == []
    snap = await ipam.snapshot()
    assert set(snap.affinities) == {("h", str(a.block))}
    assert snap.affinities[("h", str(a.block))][0].state is AffinityState.CONFIRMED
    assert await kv.get(block_key) is not None


async def test_gc_of_a_gone_host_keeps_borrowed_addresses(kv: KvStore) -> None:
    ipam = make(kv)
    await ipam.apply_pool(Pool("p", IPNetwork("10.244.0.0/26"), 27))
    await ipam.assign(req("gone", "g1"))
    await ipam.assign(req("live", "l1", num_v4=32))
    (borrowed,) = await ipam.assign(req("live", "l2"))  # from gone's block
    issues = await ipam.check({"live"})
    kinds = {i.kind.value for i in issues}
    assert kinds == {"block-of-missing-host", "allocation-of-missing-host"}
    await ipam.gc({"live"})
    remaining = await ipam.check({"live"})
    assert {i.kind.value for i in remaining} == {"allocation-without-affinity"}
    assert [a.ip for a in await ipam.addresses_of("l2")] == [borrowed.ip]
    assert await ipam.addresses_of("g1") == []
    await ipam.release_handle("l2")
    assert await ipam.check({"live"}) == []
    snap = await ipam.snapshot()
    assert all(b.affinity == "live" for b, _ in snap.blocks.values())
