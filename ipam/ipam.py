"""The IPAM shell: reads records from the KvStore, asks the pure allocator
what to change, and writes it back with compare-and-swap transactions that
retry only on conflict, a bounded number of times.

A block claim spans two keys (the host's affinity and the block) and goes
through a pending affinity so that a crash between the writes is visible and
repairable: PENDING, then the block is created, then CONFIRMED. Releasing a
block mirrors it with PENDING_DELETION. A block and the handle record of its
allocations always change in one transaction.

Who finishes a claim that stopped half way: the host's IPAM service when it
starts (``settle_own_claims``: nobody else can be finishing its claims), a
claimant of the same host that meets it once it is older than the grace
(until then it waits for it, as another process of the host may still be
making it), and ``gc`` for hosts that are gone.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence, Set
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from netaddr import IPAddress, IPNetwork

from datastore.port import Compare, Condition, Delete, KvStore, Op, Put, UnchangedSince
from ipam.allocator import (
    IpamError,
    PoolExhausted,
    addresses_of,
    block_cidr_of,
    decide_block_releasable,
    decide_pools_for_host,
    decide_reserved_ordinals,
    gateway_of,
    plan_assign,
    plan_assign_ip,
    plan_free_block,
    plan_handle_counts,
    plan_new_block,
    plan_release,
    plan_release_handle,
    pool_of,
)
from ipam.check import REPAIRABLE, Action, Issue, Repair, plan_check, plan_gc
from ipam.endpoint import WorkloadEndpoint, plan_relabel
from ipam.keys import Keys
from ipam.model import (
    RESERVED_HANDLE_PREFIX,
    Affinity,
    AffinityState,
    Block,
    Handle,
    IpamSettings,
    Pool,
    Snapshot,
    Use,
    dumps,
    loads,
)
from ipam.pool_rules import decide_pool_change, overlapping, pool_problems
from ipam.quoting import counted, quote

log = logging.getLogger(__name__)
T = TypeVar("T")

# A pending affinity younger than this may belong to a claim still running
# in another task or process; only older ones are finished or undone.
PENDING_GRACE_S = 30.0


class Conflict(IpamError):
    """Gave up after too many lost compare-and-swap races."""


def _node_of_handle(block: Block, handle: str) -> str | None:
    """The node that assigned a handle's addresses in ``block``."""
    for a in block.allocations.values():
        if a.handle == handle and a.attrs.get("node"):
            return str(a.attrs["node"])
    return None


@dataclass(frozen=True)
class AssignedAddress:
    ip: IPAddress
    block: IPNetwork
    pool: str
    gateway: IPAddress | None = None


@dataclass(frozen=True)
class AssignRequest:
    host: str
    handle: str
    attrs: Mapping[str, str] = field(default_factory=dict)
    num_v4: int = 1
    num_v6: int = 0
    pools: Sequence[str] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    use: Use = Use.WORKLOAD
    # The pod interface's record, written with the handle (its ips are filled in).
    endpoint: WorkloadEndpoint | None = None


@dataclass
class _KnownHandle:
    """What one assignment knows of its handle record (and endpoint record)
    between its writes."""

    handle: Handle | None = None
    rev: int = 0
    trusted: bool = True
    endpoint: WorkloadEndpoint | None = None
    endpoint_rev: int = 0


class _Claim(enum.Enum):
    CLAIMED = "claimed"
    CONFLICT = "conflict"
    LIMIT = "limit"
    EXHAUSTED = "exhausted"
    WAITED = "waited"  # met a claim of our host in progress and waited it out


# How often a claimant polls a claim of its host that another process is making.
CLAIM_POLL_S = 0.02


class Ipam:
    def __init__(
        self,
        store: KvStore,
        *,
        prefix: str = "/meshroute",
        clock: Callable[[], float] = time.time,
        l2_segment: bool = False,
        max_conflicts: int = 64,
        rng: random.Random | None = None,
        config_ttl_s: float = 1.0,
    ) -> None:
        self.store = store
        self.keys = Keys(prefix)
        self.clock = clock
        self.l2_segment = l2_segment
        self.max_conflicts = max_conflicts
        self.rng = rng or random.Random()
        self.conflicts = 0  # lost CAS races, for metrics
        self._claim_locks: dict[str, asyncio.Lock] = {}
        self._host_blocks: dict[str, dict[str, tuple[Block, int]]] = {}
        self.config_ttl_s = config_ttl_s
        self._config_cache: tuple[float, list[Pool], IpamSettings] | None = None

    # ---- reading ---------------------------------------------------------

    async def _read(self, key: bytes, decode: Callable[[Any], T]) -> tuple[T | None, int]:
        v = await self.store.get(key)
        if v is None:
            return None, 0
        return decode(loads(v.value)), v.mod_revision

    async def pools(self) -> list[Pool]:
        listing = await self.store.list(self.keys.pools)
        return [Pool.from_dict(loads(v.value)) for v in listing.items.values()]

    async def settings(self) -> IpamSettings:
        s, _ = await self._read(self.keys.settings, IpamSettings.from_dict)
        return s or IpamSettings()

    async def snapshot(self) -> Snapshot:
        listing = await self.store.list(self.keys.root.encode() + b"/")
        k = self.keys
        snap = Snapshot({}, {}, {}, {}, IpamSettings(), listing.revision)
        for key, v in listing.items.items():
            d = loads(v.value)
            if key.startswith(k.pools):
                p = Pool.from_dict(d)
                snap.pools[p.name] = p
            elif key.startswith(k.blocks):
                b = Block.from_dict(d)
                snap.blocks[str(b.cidr)] = (b, v.mod_revision)
            elif key.startswith(k.affinities):
                a = Affinity.from_dict(d)
                snap.affinities[(a.host, str(a.cidr))] = (a, v.mod_revision)
            elif key.startswith(k.handles):
                h = Handle.from_dict(d)
                snap.handles[h.handle] = (h, v.mod_revision)
            elif key.startswith(k.endpoints):
                ep = WorkloadEndpoint.from_dict(d)
                snap.endpoints[(ep.node, ep.handle)] = (ep, v.mod_revision)
            elif key == k.settings:
                snap = Snapshot(
                    snap.pools,
                    snap.blocks,
                    snap.affinities,
                    snap.handles,
                    IpamSettings.from_dict(d),
                    snap.revision,
                    snap.endpoints,
                )
        return snap

    async def host_affinities(self, host: str) -> list[tuple[Affinity, int]]:
        listing = await self.store.list(self.keys.host_affinities(host))
        return [
            (Affinity.from_dict(loads(v.value)), v.mod_revision) for v in listing.items.values()
        ]

    # ---- pools and settings ----------------------------------------------

    async def apply_pool(self, pool: Pool) -> bool:
        """Create or update a pool; True when it was created. Refuses invalid
        or overlapping pools, and changes that would orphan existing blocks."""
        problems = pool_problems(pool)
        if problems:
            raise IpamError(f"pool {pool.name}: " + "; ".join(map(str, problems)))
        for _ in range(self.max_conflicts):
            listing = await self.store.list(self.keys.pools)
            others = [Pool.from_dict(loads(v.value)) for v in listing.items.values()]
            clash = overlapping(pool, others)
            if clash:
                names = ", ".join(f"{o.name} ({o.cidr})" for o in clash)
                raise IpamError(f"pool {pool.name} ({pool.cidr}) overlaps {names}")
            cur = listing.items.get(self.keys.pool(pool.name))
            if cur is not None:
                old = Pool.from_dict(loads(cur.value))
                moved = (old.cidr, old.block_size) != (pool.cidr, pool.block_size)
                in_use = await self.blocks_of_pool(old.name) if moved else 0
                if problem := decide_pool_change(old, pool, in_use):
                    raise IpamError(f"pool {pool.name}: {problem}")
            # A concurrent create of an overlapping pool makes this one lose.
            key = self.keys.pool(pool.name)
            compares: list[Condition] = [
                UnchangedSince(self.keys.pools, listing.revision),
                Compare(key, cur.mod_revision if cur else 0),
            ]
            if await self.store.txn(compares, [Put(key, dumps(pool.to_dict()))]):
                self._config_cache = None
                return cur is None
            await self._backoff(1)
        raise Conflict(f"pool {pool.name}: too many concurrent changes")

    async def blocks_of_pool(self, name: str) -> int:
        """How many blocks are allocated from pool ``name``."""
        listing = await self.store.list(self.keys.blocks)
        blocks = (Block.from_dict(loads(v.value)) for v in listing.items.values())
        return sum(1 for b in blocks if b.pool == name)

    async def delete_pool(self, name: str) -> None:
        v = await self.store.get(self.keys.pool(name))
        if v is None:
            raise IpamError(f"pool {quote(name)} does not exist")
        pool = Pool.from_dict(loads(v.value))
        if await self.blocks_of_pool(pool.name):
            raise IpamError(
                f"pool {name} still has blocks; disable it (spec.disabled: true), "
                f"let its pods go, run 'meshroute ipam gc', then delete it"
            )
        if not await self.store.txn(
            [Compare(self.keys.pool(name), v.mod_revision)], [Delete(self.keys.pool(name))]
        ):
            raise Conflict(f"pool {name} changed while being deleted; try again")
        self._config_cache = None

    async def apply_settings(self, settings: IpamSettings) -> None:
        for _ in range(self.max_conflicts):
            v = await self.store.get(self.keys.settings)
            rev = v.mod_revision if v else 0
            if await self.store.txn(
                [Compare(self.keys.settings, rev)],
                [Put(self.keys.settings, dumps(settings.to_dict()))],
            ):
                self._config_cache = None
                return
        raise Conflict("IPAM settings: too many concurrent changes")

    # ---- assignment ------------------------------------------------------

    async def _backoff(self, attempt: int) -> None:
        self.conflicts += 1
        await asyncio.sleep(self.rng.uniform(0, 0.001 * (1 << min(attempt, 6))))

    async def assign(self, req: AssignRequest) -> list[AssignedAddress]:
        """Auto-assign addresses for a handle. All or nothing: when the second
        family cannot be served, what the first got is released again."""
        for fresh in (False, True):
            all_pools, settings, cached = await self._config(fresh)
            out: list[AssignedAddress] = []
            try:
                for version, n in ((4, req.num_v4), (6, req.num_v6)):
                    if n > 0:
                        out += await self._assign_version(req, all_pools, settings, version, n)
                return out
            except PoolExhausted:
                if out:
                    await self.release_ips([(a.ip, None) for a in out])
                if not cached:
                    raise
                # The pools may have changed since they were cached: ask again.
            except BaseException:
                if out:
                    await self.release_ips([(a.ip, None) for a in out])
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def _config(self, fresh: bool) -> tuple[list[Pool], IpamSettings, bool]:
        """Pools and settings, re-read at most every ``config_ttl_s``; the
        flag says whether the answer came from the cache."""
        now = time.monotonic()
        c = self._config_cache
        if not fresh and c is not None and now - c[0] < self.config_ttl_s:
            return c[1], c[2], True
        pools, settings = await self.pools(), await self.settings()
        self._config_cache = (now, pools, settings)
        return pools, settings, False

    async def _assign_version(
        self,
        req: AssignRequest,
        all_pools: list[Pool],
        settings: IpamSettings,
        version: int,
        n: int,
    ) -> list[AssignedAddress]:
        pools = decide_pools_for_host(all_pools, req.labels, req.use, version, req.pools)
        if not pools:
            raise PoolExhausted(
                f"no enabled IPv{version} pool for {req.use.value} matches host {req.host}"
                + (f" among {', '.join(req.pools)}" if req.pools else "")
            )
        got: list[AssignedAddress] = []
        try:
            await self._assign_more(req, pools, settings, version, n, got)
        except BaseException:
            if got:  # all or nothing: give back what this request already took
                await self.release_ips([(a.ip, None) for a in got])
            raise
        return got

    async def _assign_more(
        self,
        req: AssignRequest,
        pools: list[Pool],
        settings: IpamSettings,
        version: int,
        n: int,
        got: list[AssignedAddress],
    ) -> None:
        conflicts = 0
        # A handle is normally new: try the first write without reading it.
        known = _KnownHandle()
        while len(got) < n:
            if conflicts > self.max_conflicts:
                raise Conflict(f"assign for {req.handle}: lost {conflicts} races, giving up")
            want = n - len(got)
            step = await self._assign_affine(req, pools, want, known)
            if step is None:
                step = await self._claim_or_borrow(req, pools, settings, version, want, known)
            if not step:  # lost a race: read again
                conflicts += 1
                await self._backoff(conflicts)
                continue
            got += step

    async def _claim_or_borrow(
        self,
        req: AssignRequest,
        pools: list[Pool],
        settings: IpamSettings,
        version: int,
        want: int,
        known: _KnownHandle,
    ) -> list[AssignedAddress]:
        """The host's blocks are full: claim a new one, or borrow. Tasks of
        one host that find its blocks full together claim one block between
        them, not one each."""
        async with self._claim_locks.setdefault(req.host, asyncio.Lock()):
            step = await self._assign_affine(req, pools, want, known)
            if step is not None:
                return step
            if self.l2_segment:
                await self._refuse_second_l2_block(req.host, version)
            claim = await self._claim(req.host, pools, settings)
            if claim is _Claim.CLAIMED:
                self._forget_host_blocks(req.host)
                return (await self._assign_affine(req, pools, want, known)) or []
            if claim is _Claim.CONFLICT:
                return []
        names = ", ".join(p.name for p in pools)
        if self.l2_segment:
            raise PoolExhausted(
                f"IPv{version} pools {names}: no free block for host {req.host}, and "
                f"L2-segment mode cannot use an address borrowed from another host's block "
                f"(the pod bridge's subnet is the host's block); use routed mode (meshroute-cni)"
            )
        if settings.strict_affinity:
            why = "block limit reached" if claim is _Claim.LIMIT else "no free block"
            raise PoolExhausted(
                f"IPv{version} pools {names}: {why} for host {req.host} "
                f"and strictAffinity forbids borrowing"
            )
        step = await self._assign_borrowed(req, pools, want, known)
        if step is None:
            raise PoolExhausted(
                f"IPv{version} pools {names} are exhausted "
                f"({counted(want, 'address')} for {req.handle} not available)"
            )
        return step

    async def _affine_blocks(self, host: str) -> dict[str, tuple[Block, int]]:
        """The host's confirmed blocks with their revisions: cached, since
        this process is their main writer; every write compares the cached
        revision, and a lost race drops the cache."""
        cached = self._host_blocks.get(host)
        if cached is not None:
            return cached
        affs = await self.host_affinities(host)
        for aff, rev in affs:
            if aff.state is AffinityState.PENDING:
                await self._finish_stale_claim(aff, rev)
        blocks: dict[str, tuple[Block, int]] = {}
        for aff, _ in affs:
            if aff.state is not AffinityState.CONFIRMED:
                continue
            block, brev = await self._read(self.keys.block(aff.cidr), Block.from_dict)
            if block is not None and block.affinity == host:
                blocks[str(aff.cidr)] = (block, brev)
        self._host_blocks[host] = blocks
        return blocks

    async def _refuse_second_l2_block(self, host: str, version: int) -> None:
        """L2-segment mode gives a host one block per IP version: Debian's
        bridge plugin allows one address per family on the pod bridge, so a
        pod from a second block would fail there, obscurely."""
        mine = [
            b for b, _ in (await self._affine_blocks(host)).values() if b.cidr.version == version
        ]
        if mine:
            b = mine[0]
            raise PoolExhausted(
                f"host {host}'s block {b.cidr} is full ({b.workload_count} pods): L2-segment "
                f"mode uses one block per host (the pod bridge's subnet), so a pod cannot get "
                f"an address from a second block; use routed mode (meshroute-cni), or a pool "
                f"whose blockSize holds the node's maxPods"
            )

    def _forget_host_blocks(self, host: str | None) -> None:
        if host is not None:
            self._host_blocks.pop(host, None)

    async def _assign_affine(
        self, req: AssignRequest, pools: list[Pool], want: int, known: _KnownHandle
    ) -> list[AssignedAddress] | None:
        """Addresses from the host's own blocks; [] on a lost race, None when
        they are full (checked against a fresh read, not only the cache)."""
        order = {p.name: i for i, p in enumerate(pools)}
        for fresh in (False, True):
            if fresh:
                self._forget_host_blocks(req.host)
            blocks = await self._affine_blocks(req.host)
            candidates = sorted(
                (order[b.pool], int(b.cidr.first), b, rev)
                for b, rev in blocks.values()
                if b.pool in order and b.free_count > 0
            )
            if candidates:
                _, _, block, brev = candidates[0]
                pool = pools[order[block.pool]]
                return await self._write_assign(req, block, brev, pool, want, known)
        return None

    async def _assign_borrowed(
        self, req: AssignRequest, pools: list[Pool], want: int, known: _KnownHandle
    ) -> list[AssignedAddress] | None:
        listing = await self.store.list(self.keys.blocks)
        names = {p.name: p for p in pools}
        for v in listing.items.values():
            block = Block.from_dict(loads(v.value))
            if block.pool in names and block.free_count > 0:
                log.info(
                    "host %s borrows from block %s (affine to %s)",
                    req.host,
                    block.cidr,
                    block.affinity,
                )
                return await self._write_assign(
                    req, block, v.mod_revision, names[block.pool], want, known
                )
        return None

    async def _write_assign(
        self,
        req: AssignRequest,
        block: Block,
        brev: int,
        pool: Pool,
        want: int,
        known: _KnownHandle,
    ) -> list[AssignedAddress]:
        res = plan_assign(block, want, req.handle, {**req.attrs, "node": req.host})
        if not res.addresses:
            return []
        rev = await self._write_block_and_handle(
            block.cidr,
            brev,
            res.block,
            req.handle,
            len(res.addresses),
            known,
            endpoint=req.endpoint,
            added=res.addresses,
        )
        if not rev:
            self._forget_host_blocks(block.affinity)
            return []
        if block.affinity in self._host_blocks:
            self._host_blocks[block.affinity][str(block.cidr)] = (res.block, rev)
        gw = gateway_of(res.block, self.l2_segment) if res.block.affinity == req.host else None
        return [AssignedAddress(ip, block.cidr, pool.name, gw) for ip in res.addresses]

    async def _write_block_and_handle(
        self,
        cidr: IPNetwork,
        brev: int,
        block: Block | None,
        handle: str,
        delta: int,
        known: _KnownHandle | None = None,
        *,
        endpoint: WorkloadEndpoint | None = None,
        added: Sequence[IPAddress] = (),
        endpoint_node: str | None = None,
    ) -> int:
        """One transaction: the block (None: delete it), the handle's count
        for this block and the pod's endpoint record, all compared on their
        mod_revision. An assignment with an ``endpoint`` writes it holding
        ``added`` too; a release deletes the endpoint of ``endpoint_node``
        with the handle's last address. ``known`` saves reading the handle
        and endpoint when their state is known (a new handle does not exist
        yet); it is updated, or marked unknown after a lost race."""
        trusted = known is not None and known.trusted
        if known is not None and trusted:
            h, hrev = known.handle, known.rev
        else:
            h, hrev = await self._read(self.keys.handle(handle), Handle.from_dict)
        counts = plan_handle_counts(h.blocks if h else {}, {str(cidr): delta})
        new_h = Handle(handle, counts) if counts else None
        ops: list[Op] = [
            Put(self.keys.block(cidr), dumps(block.to_dict()))
            if block is not None
            else Delete(self.keys.block(cidr))
        ]
        if new_h is not None:
            ops.append(Put(self.keys.handle(handle), dumps(new_h.to_dict())))
        elif h is not None:
            ops.append(Delete(self.keys.handle(handle)))
        compares = [Compare(self.keys.block(cidr), brev), Compare(self.keys.handle(handle), hrev)]
        new_ep: WorkloadEndpoint | None = None
        if endpoint is not None:
            ekey = self.keys.endpoint(endpoint.node, handle)
            if known is not None and trusted:
                cur, erev = known.endpoint, known.endpoint_rev
            else:
                cur, erev = await self._read(ekey, WorkloadEndpoint.from_dict)
            # The template's fields; the addresses this assignment wrote before.
            new_ep = replace(endpoint, ips=cur.ips if cur else ()).with_ips(added)
            compares.append(Compare(ekey, erev))
            ops.append(Put(ekey, dumps(new_ep.to_dict())))
        elif endpoint_node is not None and new_h is None:
            ekey = self.keys.endpoint(endpoint_node, handle)
            erev = (await self._rev(ekey)) or 0
            if erev:
                compares.append(Compare(ekey, erev))
                ops.append(Delete(ekey))
        rev = await self.store.txn(compares, ops)
        if known is not None:
            known.trusted = bool(rev)
            if rev:
                known.handle, known.rev = new_h, (rev if new_h is not None else 0)
                if new_ep is not None:
                    known.endpoint, known.endpoint_rev = new_ep, rev
        return rev

    async def assign_ip(
        self,
        host: str,
        ip: IPAddress,
        handle: str,
        attrs: Mapping[str, str] | None = None,
        endpoint: WorkloadEndpoint | None = None,
    ) -> AssignedAddress:
        """Assign one requested address (claiming its block for the host
        when the block does not exist yet)."""
        pools = await self.pools()
        pool = pool_of(pools, ip)
        if pool is None:
            raise IpamError(f"{ip} is not in any pool")
        if pool.disabled:
            raise IpamError(f"{ip} is in pool {pool.name}, which is disabled")
        cidr = block_cidr_of(pool, ip)
        for attempt in range(self.max_conflicts):
            block, brev = await self._read(self.keys.block(cidr), Block.from_dict)
            if self.l2_segment and (block is None or block.affinity != host):
                mine = {b.cidr for b, _ in (await self._affine_blocks(host)).values()}
                if block is not None or any(c.version == ip.version for c in mine):
                    raise IpamError(
                        f"{ip} is in block {cidr}, not in host {host}'s block: in L2-segment "
                        f"mode a pod's address must be on the pod bridge's subnet"
                    )
            if block is None:
                await self._claim_cidr(host, pool, cidr)
                continue
            self._forget_host_blocks(block.affinity)
            new = plan_assign_ip(block, ip, handle, {**(attrs or {}), "node": host})
            if new is block:
                return AssignedAddress(ip, cidr, pool.name, gateway_of(block, self.l2_segment))
            if await self._write_block_and_handle(
                cidr, brev, new, handle, 1, endpoint=endpoint, added=(ip,)
            ):
                gw = gateway_of(new, self.l2_segment) if new.affinity == host else None
                return AssignedAddress(ip, cidr, pool.name, gw)
            await self._backoff(attempt)
        raise Conflict(f"assign {ip}: too many concurrent changes")

    async def addresses_of(self, handle: str, host: str | None = None) -> list[AssignedAddress]:
        """A handle's addresses, described as ``assign`` described them to
        ``host``: a gateway only for addresses in that host's own blocks."""
        h, _ = await self._read(self.keys.handle(handle), Handle.from_dict)
        if h is None:
            return []
        out = []
        for cidr in h.blocks:
            block, _ = await self._read(self.keys.block(IPNetwork(cidr)), Block.from_dict)
            if block is None:
                continue
            mine = host is None or block.affinity == host
            gw = gateway_of(block, self.l2_segment) if mine else None
            out += [
                AssignedAddress(ip, block.cidr, block.pool, gw)
                for ip in addresses_of(block, handle)
            ]
        return out

    async def tunnel_address(
        self, host: str, labels: Mapping[str, str], version: int = 4
    ) -> AssignedAddress | None:
        """The host's tunnel address (tunl0 / VTEP) from pools that allow
        Tunnel; the same one every time. None when no pool allows it."""
        handle = f"tunnel.{host}"
        have = [a for a in await self.addresses_of(handle) if a.ip.version == version]
        if have:
            return have[0]
        req = AssignRequest(
            host=host,
            handle=handle,
            attrs={"type": "tunnel"},
            labels=labels,
            use=Use.TUNNEL,
            num_v4=1 if version == 4 else 0,
            num_v6=1 if version == 6 else 0,
        )
        try:
            got = await self.assign(req)
        except PoolExhausted:
            if not decide_pools_for_host(await self.pools(), labels, Use.TUNNEL, version):
                return None
            raise
        return got[0]

    # ---- block claims ----------------------------------------------------

    async def _claim(self, host: str, pools: list[Pool], settings: IpamSettings) -> _Claim:
        for _ in range(self.max_conflicts):
            claim = await self._claim_once(host, pools, settings)
            if claim is not _Claim.WAITED:
                return claim
        return _Claim.CONFLICT

    async def _claim_once(self, host: str, pools: list[Pool], settings: IpamSettings) -> _Claim:
        affs = await self.host_affinities(host)
        if settings.max_blocks_per_host and len(affs) >= settings.max_blocks_per_host:
            return _Claim.LIMIT
        listing = await self.store.list(self.keys.blocks)
        taken = [Keys.cidr_from_key(k) for k in listing.items]
        for pool in pools:
            cidr = plan_free_block(pool, taken, host)
            if cidr is not None:
                return await self._claim_cidr(host, pool, cidr)
        return _Claim.EXHAUSTED

    async def _claim_cidr(self, host: str, pool: Pool, cidr: IPNetwork) -> _Claim:
        self._forget_host_blocks(host)
        now = self.clock()
        akey, bkey = self.keys.affinity(host, cidr), self.keys.block(cidr)
        pending = Affinity(host, cidr, AffinityState.PENDING, now)
        if not await self.store.txn([Compare(akey, 0)], [Put(akey, dumps(pending.to_dict()))]):
            return await self._meet_own_claim(akey)
        reserved = decide_reserved_ordinals(int(cidr.size), self.l2_segment)
        block = plan_new_block(cidr, pool, host, now, reserved)
        if not await self.store.txn([Compare(bkey, 0)], [Put(bkey, dumps(block.to_dict()))]):
            # Another host created this block first: undo our half of the claim.
            await self._settle_affinity(akey, None)
            return _Claim.CONFLICT
        await self._settle_affinity(akey, Affinity(host, cidr, AffinityState.CONFIRMED, now))
        log.info("host %s claimed block %s from pool %s", host, cidr, pool.name)
        return _Claim.CLAIMED

    async def _meet_own_claim(self, akey: bytes) -> _Claim:
        """Our host already has an affinity for the block we chose. A pending
        one is a claim another process of this host is making (a dead
        predecessor's were settled when the service started): wait for it
        rather than burn retries racing it, up to the grace; one older than
        that is finished or undone here."""
        waited_since = time.monotonic()
        while True:
            aff, rev = await self._read(akey, Affinity.from_dict)
            if aff is None:
                return _Claim.WAITED
            if aff.state is AffinityState.CONFIRMED:
                return _Claim.CLAIMED
            stale = self.clock() - aff.since >= PENDING_GRACE_S
            if stale or time.monotonic() - waited_since >= PENDING_GRACE_S:
                done = await self._finish_stale_claim(aff, rev, force=True)
                log.warning("finished a claim of %s left half way: %s", akey.decode(), done)
                return _Claim.WAITED
            await asyncio.sleep(CLAIM_POLL_S)

    async def settle_own_claims(self, host: str) -> list[tuple[IPNetwork, str]]:
        """Finish or undo at once every claim and release of ``host`` that
        stopped half way. For the host's IPAM service when it starts: it is
        the host's only claimant, so no one else can be finishing them (a
        claim of this process holds the host's claim lock meanwhile)."""
        done = []
        async with self._claim_locks.setdefault(host, asyncio.Lock()):
            self._forget_host_blocks(host)
            for aff, rev in await self.host_affinities(host):
                if aff.state is not AffinityState.CONFIRMED:
                    outcome = await self._finish_stale_claim(aff, rev, force=True)
                    done.append((aff.cidr, outcome))
        return done

    async def _settle_affinity(self, akey: bytes, final: Affinity | None) -> None:
        """Move an affinity we own to its final state (None: delete it),
        whatever revision it has now; a lost race is retried."""
        for attempt in range(self.max_conflicts):
            rev = (await self._rev(akey)) or 0
            if final is None:
                if rev == 0 or await self.store.txn([Compare(akey, rev)], [Delete(akey)]):
                    return
            elif await self.store.txn([Compare(akey, rev)], [Put(akey, dumps(final.to_dict()))]):
                return
            await self._backoff(attempt)
        raise Conflict(f"{akey.decode()}: too many concurrent changes")

    async def _rev(self, key: bytes) -> int | None:
        v = await self.store.get(key)
        return v.mod_revision if v else None

    async def _finish_stale_claim(self, aff: Affinity, arev: int, *, force: bool = False) -> str:
        """Finish or undo a claim or release that stopped half way (its
        process died). Returns what was done."""
        if not force and self.clock() - aff.since < PENDING_GRACE_S:
            return "young"
        akey, bkey = self.keys.affinity(aff.host, aff.cidr), self.keys.block(aff.cidr)
        block, brev = await self._read(bkey, Block.from_dict)
        if aff.state is AffinityState.PENDING:
            if block is not None and block.affinity == aff.host:
                done = Affinity(aff.host, aff.cidr, AffinityState.CONFIRMED, aff.since)
                ok = await self.store.txn([Compare(akey, arev)], [Put(akey, dumps(done.to_dict()))])
                return "confirmed" if ok else "conflict"
            ok = await self.store.txn([Compare(akey, arev)], [Delete(akey)])
            return "undone" if ok else "conflict"
        if aff.state is AffinityState.PENDING_DELETION:
            if block is not None and block.affinity == aff.host and block.workload_count:
                back = Affinity(aff.host, aff.cidr, AffinityState.CONFIRMED, aff.since)
                ok = await self.store.txn([Compare(akey, arev)], [Put(akey, dumps(back.to_dict()))])
                return "restored" if ok else "conflict"
            ops: list[Op] = [Delete(akey)]
            compares = [Compare(akey, arev)]
            if block is not None and block.affinity == aff.host:
                ops.append(Delete(bkey))
                compares.append(Compare(bkey, brev))
            ok = await self.store.txn(compares, ops)
            return "released" if ok else "conflict"
        return "nothing"

    async def release_empty_blocks(self, host: str) -> list[IPNetwork]:
        """Give back the host's affine blocks that hold no workload and are
        older than the configured minimum age."""
        settings = await self.settings()
        released = []
        self._forget_host_blocks(host)
        for aff, arev in await self.host_affinities(host):
            if aff.state is not AffinityState.CONFIRMED:
                continue
            bkey, akey = self.keys.block(aff.cidr), self.keys.affinity(host, aff.cidr)
            block, brev = await self._read(bkey, Block.from_dict)
            if block is None or not decide_block_releasable(
                block, self.clock(), settings.min_block_age_s
            ):
                continue
            going = Affinity(host, aff.cidr, AffinityState.PENDING_DELETION, self.clock())
            if not await self.store.txn([Compare(akey, arev)], [Put(akey, dumps(going.to_dict()))]):
                continue
            if await self.store.txn([Compare(bkey, brev)], [Delete(bkey)]):
                await self._settle_affinity(akey, None)
                released.append(aff.cidr)
                log.info("host %s released empty block %s", host, aff.cidr)
            else:
                # Someone assigned into it meanwhile: keep it.
                back = Affinity(host, aff.cidr, AffinityState.CONFIRMED, aff.since)
                await self._settle_affinity(akey, back)
        return released

    # ---- release ---------------------------------------------------------

    async def release_handle(self, handle: str, node: str | None = None) -> list[IPAddress]:
        """Free every address of a handle, and delete its endpoint record
        (of ``node``, else of the node its addresses name) with the last
        one. Idempotent: an unknown handle frees nothing and returns []."""
        freed: list[IPAddress] = []
        conflicts = 0
        while True:
            h, hrev = await self._read(self.keys.handle(handle), Handle.from_dict)
            if h is None or not h.blocks:
                if node is not None:
                    await self._drop_endpoint(node, handle, hrev)
                return freed
            # One block per round: each round either frees a block's share
            # of the handle in one transaction or lost a race and retries.
            cidr_s, count = next(iter(sorted(h.blocks.items())))
            cidr = IPNetwork(cidr_s)
            block, brev = await self._read(self.keys.block(cidr), Block.from_dict)
            new: Block | None = None
            addresses: tuple[IPAddress, ...] = ()
            if block is not None:
                self._forget_host_blocks(block.affinity)
                res = plan_release_handle(block, handle)
                new, addresses = res.block, res.addresses
                if new.affinity is None and not new.allocations:
                    new = None  # nobody's block and empty: drop it
                node = node or _node_of_handle(block, handle)
            if await self._write_block_and_handle(
                cidr, brev, new, handle, -count, endpoint_node=node
            ):
                freed += addresses
                continue
            conflicts += 1
            if conflicts > self.max_conflicts:
                raise Conflict(f"release of {handle}: too many concurrent changes")
            await self._backoff(conflicts)

    async def drop_stale_endpoint(self, node: str, handle: str) -> None:
        """Delete the endpoint record of a handle that holds no address."""
        await self._drop_endpoint(node, handle, (await self._rev(self.keys.handle(handle))) or 0)

    async def _drop_endpoint(self, node: str, handle: str, hrev: int) -> None:
        """Delete an endpoint record whose handle is gone (a rollback freed
        its addresses one by one), unless the handle came back meanwhile."""
        ekey = self.keys.endpoint(node, handle)
        for attempt in range(self.max_conflicts):
            erev = await self._rev(ekey)
            if erev is None:
                return
            compares = [Compare(ekey, erev), Compare(self.keys.handle(handle), hrev)]
            if await self.store.txn(compares, [Delete(ekey)]):
                return
            if await self._rev(self.keys.handle(handle)):
                return
            await self._backoff(attempt)
        raise Conflict(f"endpoint {node}/{handle}: too many concurrent changes")

    async def release_ips(
        self, targets: Sequence[tuple[IPAddress, int | None]]
    ) -> tuple[list[IPAddress], list[IPAddress]]:
        """Free addresses (each with an optional sequence number). Returns
        (freed, not allocated). Addresses of one block change in one txn."""
        pools = await self.pools()
        by_block: dict[str, list[tuple[IPAddress, int | None]]] = {}
        unknown: list[IPAddress] = []
        for ip, seq in targets:
            pool = pool_of(pools, ip)
            if pool is None:
                unknown.append(ip)
                continue
            by_block.setdefault(str(block_cidr_of(pool, ip)), []).append((ip, seq))
        freed: list[IPAddress] = []
        for cidr_s, ts in by_block.items():
            cidr = IPNetwork(cidr_s)
            for attempt in range(self.max_conflicts):
                block, brev = await self._read(self.keys.block(cidr), Block.from_dict)
                if block is None:
                    unknown += [ip for ip, _ in ts]
                    break
                res = plan_release(block, ts)
                if not res.addresses:
                    unknown += [ip for ip, _ in ts]
                    break
                nodes = {h: _node_of_handle(block, h) for h in res.per_handle}
                if await self._write_release(cidr, brev, res.block, res.per_handle, nodes):
                    freed += res.addresses
                    unknown += [ip for ip, _ in ts if ip not in res.addresses]
                    break
                await self._backoff(attempt)
            else:
                raise Conflict(f"release in {cidr}: too many concurrent changes")
        return freed, unknown

    async def _write_release(
        self,
        cidr: IPNetwork,
        brev: int,
        block: Block,
        per_handle: Mapping[str, int],
        nodes: Mapping[str, str | None],
    ) -> int:
        self._forget_host_blocks(block.affinity)
        compares = [Compare(self.keys.block(cidr), brev)]
        ops: list[Op] = []
        if block.affinity is None and not block.allocations:
            ops.append(Delete(self.keys.block(cidr)))
        else:
            ops.append(Put(self.keys.block(cidr), dumps(block.to_dict())))
        for handle, n in per_handle.items():
            h, hrev = await self._read(self.keys.handle(handle), Handle.from_dict)
            compares.append(Compare(self.keys.handle(handle), hrev))
            counts = plan_handle_counts(h.blocks if h else {}, {str(cidr): -n})
            if counts:
                ops.append(Put(self.keys.handle(handle), dumps(Handle(handle, counts).to_dict())))
                continue
            if h is not None:
                ops.append(Delete(self.keys.handle(handle)))
            node = nodes.get(handle)
            ekey = self.keys.endpoint(node, handle) if node else None
            erev = (await self._rev(ekey)) if ekey else None
            if ekey and erev:  # the handle's last address: its endpoint goes with it
                compares.append(Compare(ekey, erev))
                ops.append(Delete(ekey))
        return await self.store.txn(compares, ops)

    # ---- check and repair ------------------------------------------------

    async def check(
        self, live_hosts: Set[str], pending_grace_s: float = PENDING_GRACE_S
    ) -> list[Issue]:
        return plan_check(await self.snapshot(), live_hosts, self.clock(), pending_grace_s)

    async def gc(
        self, live_hosts: Set[str], pending_grace_s: float = PENDING_GRACE_S, rounds: int = 4
    ) -> list[tuple[Repair, str]]:
        """Repair what ``check`` finds, re-checking after each round (a repair
        can reveal the next one, e.g. a gone host's block empties once its
        addresses are released)."""
        done: list[tuple[Repair, str]] = []
        self._host_blocks.clear()
        for _ in range(rounds):
            snap = await self.snapshot()
            issues = [
                i
                for i in plan_check(snap, live_hosts, self.clock(), pending_grace_s)
                if i.kind in REPAIRABLE
            ]
            repairs = plan_gc(snap, issues)
            if not repairs:
                break
            for r in repairs:
                done.append((r, await self._apply_repair(r)))
        return done

    async def _apply_repair(self, r: Repair) -> str:
        if r.action is Action.RELEASE_ADDRESS:
            freed, _ = await self.release_ips([(IPAddress(r.subject), r.seq or None)])
            return "released" if freed else "skipped (changed since check)"
        if r.action is Action.DROP_BLOCK_AFFINITY:
            return await self._drop_block_affinity(IPNetwork(r.subject))
        if r.action is Action.REBUILD_HANDLE:
            return await self._rebuild_handle(r.subject)
        if r.action is Action.DELETE_ENDPOINT:
            node, _, handle = r.subject.partition("/")
            return await self._delete_orphan_endpoint(node, handle)
        if r.action is Action.REBUILD_ENDPOINT:
            node, _, handle = r.subject.partition("/")
            return await self._rebuild_endpoint(node, handle)
        host, _, cidr_s = r.subject.partition("/")
        cidr = IPNetwork(cidr_s)
        akey = self.keys.affinity(host, cidr)
        aff, arev = await self._read(akey, Affinity.from_dict)
        if r.action is Action.SETTLE_CLAIM:
            return "gone" if aff is None else await self._finish_stale_claim(aff, arev, force=True)
        if r.action is Action.DELETE_AFFINITY:
            block, _ = await self._read(self.keys.block(cidr), Block.from_dict)
            if aff is None or (block is not None and block.affinity == host):
                return "skipped (changed since check)"
            ok = await self.store.txn([Compare(akey, arev)], [Delete(akey)])
            return "deleted" if ok else "conflict"
        if r.action is Action.RESTORE_AFFINITY:
            block, _ = await self._read(self.keys.block(cidr), Block.from_dict)
            if aff is not None or block is None or block.affinity is None:
                return "skipped (changed since check)"
            restored = Affinity(block.affinity, cidr, AffinityState.CONFIRMED, self.clock())
            akey = self.keys.affinity(block.affinity, cidr)
            ok = await self.store.txn([Compare(akey, 0)], [Put(akey, dumps(restored.to_dict()))])
            return "restored" if ok else "conflict"
        raise AssertionError(r.action)  # pragma: no cover

    async def _drop_block_affinity(self, cidr: IPNetwork) -> str:
        """A gone host's block: deleted when no workload is left in it, else
        kept for the addresses other hosts borrowed, without an owner."""
        bkey = self.keys.block(cidr)
        block, brev = await self._read(bkey, Block.from_dict)
        if block is None or block.affinity is None:
            return "skipped (changed since check)"
        akey = self.keys.affinity(block.affinity, cidr)
        arev = (await self._rev(akey)) or 0
        compares = [Compare(bkey, brev), Compare(akey, arev)]
        ops: list[Op] = [Delete(akey)] if arev else []
        if block.workload_count == 0:
            ops.append(Delete(bkey))
            outcome = "block deleted"
        else:
            kept = {
                o: a
                for o, a in block.allocations.items()
                if not a.handle.startswith(RESERVED_HANDLE_PREFIX)
            }
            orphan = replace(block.with_allocations(kept, block.seq), affinity=None)
            ops.append(Put(bkey, dumps(orphan.to_dict())))
            outcome = f"affinity dropped, {counted(len(kept), 'borrowed address')} kept"
        ok = await self.store.txn(compares, ops)
        return outcome if ok else "conflict"

    async def _rebuild_handle(self, handle: str) -> str:
        for attempt in range(self.max_conflicts):
            listing = await self.store.list(self.keys.blocks)
            counts: dict[str, int] = {}
            compares = []
            for k, v in listing.items.items():
                b = Block.from_dict(loads(v.value))
                n = sum(1 for a in b.allocations.values() if a.handle == handle)
                if n:
                    counts[str(b.cidr)] = n
                    compares.append(Compare(k, v.mod_revision))
            hkey = self.keys.handle(handle)
            # A racing assignment writes the handle too, so comparing it (and
            # the blocks counted) is enough to lose against it rather than undo it.
            compares.append(Compare(hkey, (await self._rev(hkey)) or 0))
            op: Op = Put(hkey, dumps(Handle(handle, counts).to_dict())) if counts else Delete(hkey)
            if await self.store.txn(compares, [op]):
                if not counts:
                    return "deleted"
                return f"rebuilt ({counted(sum(counts.values()), 'address')})"
            await self._backoff(attempt)
        return "conflict"

    async def _handle_allocations(self, handle: str) -> tuple[list[IPAddress], dict[str, str]]:
        """A handle's addresses in every block, and the attributes of one."""
        listing = await self.store.list(self.keys.blocks)
        ips: list[IPAddress] = []
        attrs: dict[str, str] = {}
        for v in listing.items.values():
            b = Block.from_dict(loads(v.value))
            for o, a in b.allocations.items():
                if a.handle == handle:
                    ips.append(b.address(o))
                    attrs = dict(a.attrs)
        return ips, attrs

    async def _delete_orphan_endpoint(self, node: str, handle: str) -> str:
        ekey, hkey = self.keys.endpoint(node, handle), self.keys.handle(handle)
        erev = await self._rev(ekey)
        if erev is None:
            return "gone"
        ips, _ = await self._handle_allocations(handle)
        if ips:
            return "skipped (changed since check)"
        # The handle is compared absent: an ADD writes it with its endpoint, and wins.
        ok = await self.store.txn([Compare(ekey, erev), Compare(hkey, 0)], [Delete(ekey)])
        return "deleted" if ok else "conflict"

    async def _rebuild_endpoint(self, node: str, handle: str) -> str:
        """Make a pod's endpoint record hold its allocated addresses. A lost
        record is rebuilt from the allocations' attributes; labels and named
        ports it had are lost with it (``meshroute label pod`` sets them)."""
        ekey, hkey = self.keys.endpoint(node, handle), self.keys.handle(handle)
        hrev = (await self._rev(hkey)) or 0
        ips, attrs = await self._handle_allocations(handle)
        cur, erev = await self._read(ekey, WorkloadEndpoint.from_dict)
        if not ips or "containerId" not in attrs or attrs.get("node") != node:
            return "skipped (changed since check)"
        cid = attrs["containerId"]
        if cur is None:
            cur = WorkloadEndpoint(
                node=node,
                namespace=attrs.get("namespace") or "default",
                pod=attrs.get("pod") or cid,
                container_id=cid,
                ifname=handle[len(cid) + 1 :],
                host_iface=attrs.get("hostIface", ""),
            )
        new = replace(cur, ips=()).with_ips(ips)
        ok = await self.store.txn(
            [Compare(ekey, erev), Compare(hkey, hrev)], [Put(ekey, dumps(new.to_dict()))]
        )
        return ("rebuilt" if erev else "recreated") if ok else "conflict"

    # ---- endpoints -------------------------------------------------------

    async def endpoints(self, node: str | None = None) -> list[tuple[WorkloadEndpoint, int]]:
        prefix = self.keys.endpoints + (f"{node}/".encode() if node else b"")
        listing = await self.store.list(prefix)
        return [
            (WorkloadEndpoint.from_dict(loads(v.value)), v.mod_revision)
            for v in listing.items.values()
        ]

    async def relabel_pod(
        self, namespace: str, pod: str, set_: Mapping[str, str], remove: Sequence[str]
    ) -> list[WorkloadEndpoint]:
        """Change the labels of every endpoint of one pod, each with a
        compare-and-swap write (retried on conflict). Raises IpamError when
        the pod has no endpoint."""
        out: list[WorkloadEndpoint] = []
        for attempt in range(self.max_conflicts):
            mine = [
                (ep, rev)
                for ep, rev in await self.endpoints()
                if ep.namespace == namespace and ep.pod == pod
            ]
            if not mine:
                raise IpamError(f"pod {namespace}/{pod} has no endpoint")
            out = []
            lost = False
            for ep, rev in mine:
                new = replace(ep, labels=plan_relabel(ep.labels, set_, remove))
                key = self.keys.endpoint(ep.node, ep.handle)
                if new == ep or await self.store.txn(
                    [Compare(key, rev)], [Put(key, dumps(new.to_dict()))]
                ):
                    out.append(new)
                else:
                    lost = True
            if not lost:
                return out
            await self._backoff(attempt)
        raise Conflict(f"pod {namespace}/{pod}: too many concurrent changes")
