"""Hypothesis stateful test: several hosts race on the memory store, which
interleaves their reads and writes and injects lost CAS races. Whatever the
sequence, addresses are never assigned twice, blocks stay inside their pool
and apart, every allocation belongs to the handle that asked for it,
releases free exactly what they should, and the records stay consistent."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Coroutine
from typing import Any, TypeVar

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    multiple,
    rule,
)
from netaddr import IPAddress, IPNetwork

from datastore.memory import MemoryStore
from ipam.allocator import PoolExhausted
from ipam.ipam import AssignRequest, Ipam
from ipam.model import RESERVED_HANDLE_PREFIX, IpamSettings, Pool

T = TypeVar("T")
HOSTS = ("h0", "h1", "h2")
POOLS = (
    Pool("small", IPNetwork("10.244.0.0/26"), 29),  # 8 blocks of 8
    Pool("v6", IPNetwork("fd00:44::/122"), 124),  # 4 blocks of 16
)


class RacingHosts(RuleBasedStateMachine):
    handles = Bundle("handles")

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.now = 1000.0
        self.store = MemoryStore(conflict_rate=0.15, interleave=True, rng=random.Random(7))
        self.ipam = Ipam(self.store, clock=lambda: self.now, rng=random.Random(3))
        self.model: dict[str, set[IPAddress]] = {}
        self.counter = 0

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        self.loop.close()

    @initialize(strict=st.booleans())
    def setup(self, strict: bool) -> None:
        for p in POOLS:
            self.run(self.ipam.apply_pool(p))
        self.run(self.ipam.apply_settings(IpamSettings(strict_affinity=strict, min_block_age_s=5)))

    @rule(
        target=handles,
        batch=st.lists(
            st.tuples(st.sampled_from(HOSTS), st.integers(0, 3), st.integers(0, 2)),
            min_size=1,
            max_size=4,
        ),
    )
    def assign_concurrently(self, batch: list[tuple[str, int, int]]) -> Any:
        names = []
        reqs = []
        for host, n4, n6 in batch:
            self.counter += 1
            name = f"c{self.counter}.eth0"
            names.append(name)
            reqs.append(AssignRequest(host=host, handle=name, num_v4=n4, num_v6=n6))

        async def all_() -> list[Any]:
            return await asyncio.gather(
                *(self.ipam.assign(r) for r in reqs), return_exceptions=True
            )

        results = self.run(all_())
        made = []
        for name, r, (_, n4, n6) in zip(names, results, batch, strict=True):
            if isinstance(r, PoolExhausted):
                continue  # all or nothing: checked by the invariants
            if isinstance(r, BaseException):
                raise r
            ips = {a.ip for a in r}
            assert len(ips) == n4 + n6
            for other in self.model.values():
                assert not (ips & other), "an address was handed out twice"
            self.model[name] = ips
            made.append(name)
        return multiple(*made)

    @rule(handle=consumes(handles))
    def release_handle(self, handle: str) -> None:
        freed = self.run(self.ipam.release_handle(handle))
        assert set(freed) == self.model.pop(handle)
        assert self.run(self.ipam.release_handle(handle)) == []

    @rule(handle=handles, data=st.data())
    def release_one_address(self, handle: str, data: st.DataObject) -> None:
        ips = sorted(self.model.get(handle, set()))
        if not ips:
            return
        ip = data.draw(st.sampled_from(ips))
        freed, unknown = self.run(self.ipam.release_ips([(ip, None)]))
        assert freed == [ip] and unknown == []
        self.model[handle].discard(ip)

    @rule(host=st.sampled_from(HOSTS))
    def release_empty_blocks(self, host: str) -> None:
        self.now += 10
        self.run(self.ipam.release_empty_blocks(host))

    @invariant()
    def consistent(self) -> None:
        snap = self.run(self.ipam.snapshot())
        blocks = [b for b, _ in snap.blocks.values()]
        pools = {p.name: p for p in POOLS}
        for b in blocks:
            assert b.cidr in pools[b.pool].cidr
            assert b.cidr.prefixlen == pools[b.pool].block_size
        ordered = sorted(blocks, key=lambda b: (b.cidr.version, int(b.cidr.first)))
        for a, b in itertools.pairwise(ordered):
            if a.cidr.version == b.cidr.version:
                assert a.cidr.last < b.cidr.first, f"{a.cidr} overlaps {b.cidr}"
        actual: dict[str, set[IPAddress]] = {}
        for b in blocks:
            for o, alloc in b.allocations.items():
                if not alloc.handle.startswith(RESERVED_HANDLE_PREFIX):
                    actual.setdefault(alloc.handle, set()).add(b.address(o))
        assert actual == {h: ips for h, ips in self.model.items() if ips}
        assert self.run(self.ipam.check(set(HOSTS), pending_grace_s=0)) == []


RacingHosts.TestCase.settings = settings(max_examples=50, stateful_step_count=25, deadline=None)
test_racing_hosts = RacingHosts.TestCase
