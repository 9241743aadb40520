"""``meshroute apply``: all or nothing, in one etcd transaction.

Each resource kind declares a ``KindApply``: the key and value it is stored
as, and the checks it needs against the datastore (an IPPool must not
overlap another pool, nor change its block size while it has blocks). The
checks read through ``Reads``, which remembers the revision of every key
and every listing they looked at; every check of every file runs before
anything is written, and then all writes go in one transaction that
compares those revisions (a listing: no key under its prefix created or
changed since). So nothing is written when a check fails, and a concurrent
change to what a check read makes the transaction fail and the whole plan
run again.

A new kind joins by adding its ``KindApply`` to ``APPLIERS``.

etcd bounds one transaction (``--max-txn-ops``, 128 operations by default,
and ``--max-request-bytes``): a larger apply is refused whole, asking for
the files to be split, rather than written in batches that a failure could
leave half applied.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from netaddr import AddrFormatError, IPAddress

from datastore.port import (
    Compare,
    Condition,
    KvStore,
    Listing,
    Put,
    RequestTooLarge,
    UnchangedSince,
    Versioned,
)
from ipam.keys import Keys
from ipam.model import Pool, dumps, loads
from ipam.pool_rules import decide_pool_change
from meshroute.bgp_store import BgpStore, encode_spec
from meshroute.errors import UserError
from meshroute.policy_resources import (
    GlobalNetworkPolicyResource,
    NamespaceResource,
    NetworkPolicyResource,
)
from meshroute.policy_store import PolicyStore, encode_resource
from meshroute.resources import (
    BFDProfileResource,
    BGPConfigurationResource,
    BGPPeerResource,
    IPAMConfigurationResource,
    IPPoolResource,
    Loaded,
    ServiceAddressResource,
    missing_profile_problems,
    overlap_problems,
)
from meshroute.service_rules import service_conflicts
from meshroute.service_store import ServiceStore, encode_service

MAX_ROUNDS = 8


class Reads:
    """The datastore as the checks see it: each key read, present or not,
    and each listing becomes a condition of the transaction."""

    def __init__(self, store: KvStore) -> None:
        self.store = store
        self.keys: dict[bytes, int] = {}
        self.listings: dict[bytes, int] = {}

    async def get(self, key: bytes) -> Versioned | None:
        v = await self.store.get(key)
        self.keys[key] = v.mod_revision if v else 0
        return v

    async def list(self, prefix: bytes) -> Listing:
        listing = await self.store.list(prefix)
        self.listings[prefix] = listing.revision
        return listing

    def conditions(self) -> Sequence[Condition]:
        return [Compare(k, rev) for k, rev in self.keys.items()] + [
            UnchangedSince(p, rev) for p, rev in self.listings.items()
        ]


@dataclass(frozen=True)
class Context:
    store: KvStore
    prefix: str

    @property
    def ipam_keys(self) -> Keys:
        return Keys(self.prefix)

    @property
    def bgp(self) -> BgpStore:
        return BgpStore(self.store, self.prefix)


Check = Callable[[Sequence[Loaded], Reads, Context], Awaitable[list[str]]]


async def _no_check(items: Sequence[Loaded], reads: Reads, ctx: Context) -> list[str]:
    return []


@dataclass(frozen=True)
class KindApply:
    """How one resource kind is applied."""

    label: str  # as the output names it: "ippool/NAME created"
    key: Callable[[Any, Context], bytes]
    value: Callable[[Any], bytes]
    # Every resource of this kind in the apply at once (for rules across them).
    check: Check = _no_check


async def _check_pools(items: Sequence[Loaded], reads: Reads, ctx: Context) -> list[str]:
    listing = await reads.list(ctx.ipam_keys.pools)
    existing = {p.name: p for p in (Pool.from_dict(loads(v.value)) for v in listing.items.values())}
    problems = overlap_problems(list(items), list(existing.values()))
    blocks: dict[str, int] | None = None
    for item in items:
        new = item.resource.to_pool()  # type: ignore[union-attr]
        old = existing.get(new.name)
        if old is None or (old.cidr, old.block_size) == (new.cidr, new.block_size):
            continue
        if blocks is None:
            # Blocks are not compared (a cluster has thousands); a block
            # claimed in between is the race ``apply_pool`` has too.
            blocks = {}
            for v in (await ctx.store.list(ctx.ipam_keys.blocks)).items.values():
                name = loads(v.value).get("pool", "")
                blocks[name] = blocks.get(name, 0) + 1
        if problem := decide_pool_change(old, new, blocks.get(new.name, 0)):
            problems.append(f"{item.source}: {problem}")
    return problems


async def _check_services(items: Sequence[Loaded], reads: Reads, ctx: Context) -> list[str]:
    """No two ServiceAddresses share an address, and none lies in an IP pool
    (pod routes and the service's host routes would fight)."""
    services = ServiceStore(ctx.store, ctx.prefix)
    listing = await reads.list(services.root)
    existing = {}
    for k, v in listing.items.items():
        with contextlib.suppress(ValueError, KeyError, TypeError, AddrFormatError):
            existing[k[len(services.root) :].decode()] = IPAddress(loads(v.value)["address"])
    pools = await reads.list(ctx.ipam_keys.pools)
    cidrs = {p.name: p.cidr for p in (Pool.from_dict(loads(v.value)) for v in pools.items.values())}
    new = [
        (i.source, r.metadata.name, r.spec.address)
        for i in items
        if isinstance(r := i.resource, ServiceAddressResource)
    ]
    return service_conflicts(new, existing, cidrs)


APPLIERS: dict[type, KindApply] = {
    IPPoolResource: KindApply(
        "ippool",
        key=lambda r, ctx: ctx.ipam_keys.pool(r.metadata.name),
        value=lambda r: dumps(r.to_pool().to_dict()),
        check=_check_pools,
    ),
    IPAMConfigurationResource: KindApply(
        "ipamconfiguration",
        key=lambda r, ctx: ctx.ipam_keys.settings,
        value=lambda r: dumps(r.to_settings().to_dict()),
    ),
    BGPConfigurationResource: KindApply(
        "bgpconfiguration",
        key=lambda r, ctx: ctx.bgp.config_key,
        value=lambda r: encode_spec(r.spec),
    ),
    BGPPeerResource: KindApply(
        "bgppeer",
        key=lambda r, ctx: ctx.bgp.peer_key(r.metadata.name),
        value=lambda r: encode_spec(r.spec),
    ),
    **{
        kind: KindApply(
            label,
            key=lambda r, ctx: PolicyStore(ctx.store, ctx.prefix).key(r),
            value=encode_resource,
        )
        for kind, label in (
            (NetworkPolicyResource, "networkpolicy"),
            (GlobalNetworkPolicyResource, "globalnetworkpolicy"),
            (NamespaceResource, "namespace"),
        )
    },
    BFDProfileResource: KindApply(
        "bfdprofile",
        key=lambda r, ctx: ctx.bgp.bfd_profile_key(r.metadata.name),
        value=lambda r: encode_spec(r.spec),
    ),
    ServiceAddressResource: KindApply(
        "serviceaddress",
        key=lambda r, ctx: ServiceStore(ctx.store, ctx.prefix).key(r.metadata.name),
        value=lambda r: encode_service(r.spec),
        check=_check_services,
    ),
}


async def _check_profile_refs(loaded: Sequence[Loaded], reads: Reads, ctx: Context) -> list[str]:
    """Every BFD profile a BGPPeer or the BGPConfiguration names exists, in
    this apply or in the datastore (read under the transaction's compares)."""
    prefix = ctx.bgp.bfd_profile_key("")
    existing = {k[len(prefix) :].decode() for k in (await reads.list(prefix)).items}
    return missing_profile_problems(list(loaded), existing)


@dataclass(frozen=True)
class _Write:
    item: Loaded
    key: bytes
    value: bytes
    label: str


async def _plan(
    loaded: Sequence[Loaded], ctx: Context
) -> tuple[list[_Write], Sequence[Condition], list[str]]:
    """The writes, the compares they rest on, and every problem found."""
    reads = Reads(ctx.store)
    problems: list[str] = []
    by_kind: dict[type, list[Loaded]] = {}
    for item in loaded:
        by_kind.setdefault(type(item.resource), []).append(item)
    for kind, items in by_kind.items():
        problems += await APPLIERS[kind].check(items, reads, ctx)
    problems += await _check_profile_refs(loaded, reads, ctx)
    writes: list[_Write] = []
    first: dict[bytes, Loaded] = {}
    for item in loaded:
        a = APPLIERS[type(item.resource)]
        key = a.key(item.resource, ctx)
        if key in first:
            was = first[key]
            where = f"document {was.document}" if was.file == item.file else was.source
            problems.append(f"{item.source}: also in {where}")
            continue
        first[key] = item
        cur = await reads.get(key)
        state = "created" if cur is None else "configured"
        writes.append(_Write(item, key, a.value(item.resource), f"{a.label}/{_name(item)} {state}"))
    return writes, reads.conditions(), problems


def _name(item: Loaded) -> str:
    r = item.resource
    if isinstance(r, NetworkPolicyResource):
        return f"{r.metadata.namespace}/{r.metadata.name}"
    return str(r.metadata.name)


async def apply_all(store: KvStore, prefix: str, loaded: Sequence[Loaded]) -> list[str]:
    """Apply every resource in one transaction; a line per resource. Raises
    UserError naming file and document when anything is refused."""
    ctx = Context(store, prefix)
    for _ in range(MAX_ROUNDS):
        writes, compares, problems = await _plan(loaded, ctx)
        if problems:
            raise UserError("nothing applied:\n" + "\n".join(problems))
        try:
            if await store.txn(compares, [Put(w.key, w.value) for w in writes]):
                return [w.label for w in writes]
        except RequestTooLarge as e:
            files = sorted({w.item.file for w in writes})
            raise UserError(
                f"nothing applied: {', '.join(files)}: {len(writes)} resources "
                f"(checked against {len(compares)} keys) do not fit in one etcd "
                f"transaction (etcd's --max-txn-ops, 128 by default, and "
                f"--max-request-bytes); split the file ({e})"
            ) from e
    raise UserError("nothing applied: the datastore kept changing under the checks; try again")
