"""The pure allocator core: which pools serve a host, which block to claim
next, which addresses of a block to hand out, what a release frees. No I/O;
the shell in ``ipam.ipam`` reads records, calls these and CAS-writes them."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from netaddr import IPAddress, IPNetwork

from ipam.model import RESERVED_HANDLE_PREFIX, Allocation, Block, Pool, Use
from ipam.selector import matches


class IpamError(Exception):
    """A request IPAM refuses, with a message for the operator."""


class PoolExhausted(IpamError):
    pass


class AddressInUse(IpamError):
    pass


def decide_pools_for_host(
    pools: Iterable[Pool],
    labels: Mapping[str, str],
    use: Use,
    version: int,
    names: Sequence[str] = (),
) -> list[Pool]:
    """Enabled pools of the IP version that allow ``use`` and whose
    nodeSelector matches the host, in a stable order. ``names`` narrows the
    choice (a CNI network may list its pools), keeping the given order."""
    ok = [
        p
        for p in pools
        if p.version == version
        and not p.disabled
        and use in p.allowed_uses
        and matches(p.node_selector, labels)
    ]
    if names:
        by_name = {p.name: p for p in ok}
        return [by_name[n] for n in names if n in by_name]
    return sorted(ok, key=lambda p: (int(p.cidr.first), p.name))


def block_cidr_of(pool: Pool, ip: IPAddress) -> IPNetwork:
    """The block of ``pool`` that holds ``ip``."""
    return IPNetwork(f"{ip}/{pool.block_size}").cidr


def pool_of(pools: Iterable[Pool], ip: IPAddress) -> Pool | None:
    for p in pools:
        if ip in p.cidr:
            return p
    return None


def _start_index(host: str, count: int) -> int:
    # Hosts start their search at different places so that racing claims
    # rarely pick the same block; stable per host so its blocks stay close.
    digest = hashlib.sha256(host.encode()).digest()
    return int.from_bytes(digest[:8], "big") % count


def plan_free_block(pool: Pool, taken: Iterable[IPNetwork], host: str) -> IPNetwork | None:
    """The next block of ``pool`` that no existing block occupies, searched
    from a per-host starting point; None when the pool is full."""
    bits = 32 if pool.version == 4 else 128
    step = 1 << (bits - pool.block_size)
    count = 1 << (pool.block_size - pool.cidr.prefixlen)
    base = int(pool.cidr.first)
    used = {(int(c.first) - base) // step for c in taken if c in pool.cidr}
    if len(used) >= count:
        return None
    start = _start_index(host, count)
    for i in range(count):
        idx = (start + i) % count
        if idx not in used:
            return IPNetwork(f"{IPAddress(base + idx * step, pool.version)}/{pool.block_size}")
    return None  # pragma: no cover - len(used) < count guarantees a hit


def decide_reserved_ordinals(block_size_addresses: int, l2_segment: bool) -> tuple[int, ...]:
    """Ordinals a new block keeps from workloads. On an L2 segment (pods on a
    bridge with the block as their subnet) the network address, the gateway
    (first host address) and the broadcast address; in routed /32 mode none."""
    if not l2_segment or block_size_addresses < 4:
        return ()
    return (0, 1, block_size_addresses - 1)


def gateway_of(block: Block, l2_segment: bool) -> IPAddress | None:
    return block.address(1) if l2_segment and block.size >= 4 else None


def plan_new_block(
    cidr: IPNetwork, pool: Pool, host: str, now: float, reserved: Sequence[int]
) -> Block:
    allocations = {
        o: Allocation(handle=f"{RESERVED_HANDLE_PREFIX}{host}", seq=0, attrs={"node": host})
        for o in reserved
    }
    return Block(cidr=cidr, pool=pool.name, affinity=host, created=now, allocations=allocations)


@dataclass(frozen=True)
class Assigned:
    block: Block
    addresses: tuple[IPAddress, ...]


def plan_assign(block: Block, count: int, handle: str, attrs: Mapping[str, str]) -> Assigned:
    """Take up to ``count`` free addresses, continuing after the most recently
    assigned one so a just-released address is the last to be reused."""
    if count <= 0 or block.free_count == 0:
        return Assigned(block, ())
    size = block.size
    last = block.cursor
    new = dict(block.allocations)
    seq = block.seq
    picked: list[IPAddress] = []
    last_o = last
    for i in range(size):
        o = (last + 1 + i) % size
        if o in new:
            continue
        seq += 1
        new[o] = Allocation(handle=handle, seq=seq, attrs=dict(attrs))
        picked.append(block.address(o))
        last_o = o
        if len(picked) == count:
            break
    return Assigned(block.with_allocations(new, seq, last_o), tuple(picked))


def plan_assign_ip(block: Block, ip: IPAddress, handle: str, attrs: Mapping[str, str]) -> Block:
    o = block.ordinal(ip)
    if not 0 <= o < block.size:
        raise IpamError(f"{ip} is not in block {block.cidr}")
    current = block.allocations.get(o)
    if current is not None:
        if current.handle == handle:
            return block
        raise AddressInUse(f"{ip} is already assigned to {current.handle}")
    new = dict(block.allocations)
    new[o] = Allocation(handle=handle, seq=block.seq + 1, attrs=dict(attrs))
    return block.with_allocations(new, block.seq + 1)


@dataclass(frozen=True)
class Released:
    block: Block
    addresses: tuple[IPAddress, ...]
    per_handle: Mapping[str, int]  # how many addresses each handle lost


def plan_release(block: Block, targets: Iterable[tuple[IPAddress, int | None]]) -> Released:
    """Free the given addresses. A target with a sequence number frees only
    the allocation made at that number: a stale release leaves a newer one."""
    new = dict(block.allocations)
    freed: list[IPAddress] = []
    per_handle: dict[str, int] = {}
    for ip, seq in targets:
        o = block.ordinal(ip)
        a = new.get(o)
        if a is None or a.handle.startswith(RESERVED_HANDLE_PREFIX):
            continue
        if seq is not None and a.seq != seq:
            continue
        del new[o]
        freed.append(ip)
        per_handle[a.handle] = per_handle.get(a.handle, 0) + 1
    return Released(block.with_allocations(new, block.seq), tuple(freed), per_handle)


def plan_release_handle(block: Block, handle: str) -> Released:
    targets = [(block.address(o), None) for o, a in block.allocations.items() if a.handle == handle]
    return plan_release(block, targets)


def addresses_of(block: Block, handle: str) -> list[IPAddress]:
    return [block.address(o) for o, a in sorted(block.allocations.items()) if a.handle == handle]


def decide_block_releasable(block: Block, now: float, min_age_s: float) -> bool:
    """An affine block with no workload left, old enough to let it go."""
    return block.workload_count == 0 and now - block.created >= min_age_s


def plan_handle_counts(blocks: Mapping[str, int], delta: Mapping[str, int]) -> dict[str, int]:
    """A handle's per-block counts after adding ``delta`` (negative frees)."""
    out = dict(blocks)
    for k, v in delta.items():
        n = out.get(k, 0) + v
        if n > 0:
            out[k] = n
        else:
            out.pop(k, None)
    return out
