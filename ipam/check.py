"""Consistency checks over an IPAM snapshot, and the repairs for what they
find. Both are pure: ``plan_check`` lists findings, ``plan_gc`` turns them
into repair actions that the shell applies with compare-and-swap."""

from __future__ import annotations

import enum
from collections.abc import Iterable, Set
from dataclasses import dataclass

from netaddr import IPAddress

from ipam.model import RESERVED_HANDLE_PREFIX, AffinityState, Block, Snapshot


class Finding(enum.Enum):
    BLOCK_OF_MISSING_HOST = "block-of-missing-host"
    ALLOCATION_OF_MISSING_HOST = "allocation-of-missing-host"
    HALF_FINISHED_CLAIM = "half-finished-claim"
    AFFINITY_WITHOUT_BLOCK = "affinity-without-block"
    BLOCK_WITHOUT_AFFINITY_RECORD = "block-without-affinity-record"
    LEAKED_HANDLE = "leaked-handle"
    ALLOCATION_WITHOUT_HANDLE = "allocation-without-handle"
    ALLOCATION_WITHOUT_AFFINITY = "allocation-without-affinity"
    # A claim or release of a live host younger than the grace: most likely
    # still running. Shown, not hidden, but not an inconsistency (yet).
    CLAIM_IN_PROGRESS = "claim-in-progress"
    ENDPOINT_WITHOUT_ALLOCATION = "endpoint-without-allocation"
    ALLOCATION_WITHOUT_ENDPOINT = "allocation-without-endpoint"
    ENDPOINT_ADDRESSES_DIFFER = "endpoint-addresses-differ"


# Findings that are not inconsistencies: reported, not counted as problems.
IN_PROGRESS = frozenset({Finding.CLAIM_IN_PROGRESS})
# Findings that gc repairs; the others are reported only.
REPAIRABLE = frozenset(Finding) - {Finding.ALLOCATION_WITHOUT_AFFINITY} - IN_PROGRESS


@dataclass(frozen=True)
class Issue:
    kind: Finding
    subject: str  # a block CIDR, a handle, an affinity or endpoint "host/…", or an address
    detail: str

    def to_dict(self) -> dict[str, str]:
        return {"kind": self.kind.value, "subject": self.subject, "detail": self.detail}


def _node_of(handle: str, attrs: dict[str, str] | object) -> str | None:
    if isinstance(attrs, dict) and "node" in attrs:
        return str(attrs["node"])
    if handle.startswith(RESERVED_HANDLE_PREFIX):
        return handle[len(RESERVED_HANDLE_PREFIX) :]
    return None


def plan_check(
    snap: Snapshot, live_hosts: Set[str], now: float, pending_grace_s: float
) -> list[Issue]:
    """Everything that is inconsistent or left behind, sorted."""
    out: list[Issue] = []
    blocks = {c: b for c, (b, _) in snap.blocks.items()}
    affs = {k: a for k, (a, _) in snap.affinities.items()}

    for (host, cidr), a in affs.items():
        subject = f"{host}/{cidr}"
        if a.state is not AffinityState.CONFIRMED:
            age = now - a.since
            if host not in live_hosts or age >= pending_grace_s:
                out.append(Issue(Finding.HALF_FINISHED_CLAIM, subject, f"affinity {a.state.value}"))
            else:
                detail = (
                    f"affinity {a.state.value} for {max(age, 0.0):.0f} s; "
                    f"half-finished after {pending_grace_s:g} s"
                )
                out.append(Issue(Finding.CLAIM_IN_PROGRESS, subject, detail))
            continue
        b = blocks.get(cidr)
        if b is None or b.affinity != host:
            why = "block missing" if b is None else f"block is affine to {b.affinity}"
            out.append(Issue(Finding.AFFINITY_WITHOUT_BLOCK, subject, why))

    counted: dict[str, dict[str, int]] = {}
    for cidr, b in blocks.items():
        if b.affinity is not None:
            if b.affinity not in live_hosts:
                out.append(Issue(Finding.BLOCK_OF_MISSING_HOST, cidr, f"host {b.affinity} is gone"))
            elif (b.affinity, cidr) not in affs:
                out.append(Issue(Finding.BLOCK_WITHOUT_AFFINITY_RECORD, cidr, f"host {b.affinity}"))
        for o, alloc in sorted(b.allocations.items()):
            ip = str(b.address(o))
            if alloc.handle.startswith(RESERVED_HANDLE_PREFIX):
                continue
            counted.setdefault(alloc.handle, {}).setdefault(cidr, 0)
            counted[alloc.handle][cidr] += 1
            node = _node_of(alloc.handle, dict(alloc.attrs))
            if node is not None and node not in live_hosts:
                out.append(
                    Issue(
                        Finding.ALLOCATION_OF_MISSING_HOST,
                        ip,
                        f"handle {alloc.handle} of host {node}",
                    )
                )
            elif b.affinity is None:
                out.append(Issue(Finding.ALLOCATION_WITHOUT_AFFINITY, ip, f"block {cidr}"))
            if alloc.handle not in snap.handles:
                out.append(Issue(Finding.ALLOCATION_WITHOUT_HANDLE, ip, alloc.handle))

    out += _endpoint_issues(snap, live_hosts)
    for handle, (h, _) in snap.handles.items():
        have = counted.get(handle, {})
        if dict(h.blocks) != have:
            out.append(
                Issue(Finding.LEAKED_HANDLE, handle, f"record {dict(h.blocks)} != blocks {have}")
            )
    return sorted(out, key=lambda i: (i.kind.value, i.subject, i.detail))


def _endpoint_issues(snap: Snapshot, live_hosts: Set[str]) -> list[Issue]:
    """Pod interfaces (allocations made by CNI, whose attributes name a
    container) and their endpoint records must come and go together."""
    owned: dict[tuple[str, str], set[str]] = {}
    for b, _ in snap.blocks.values():
        for o, alloc in b.allocations.items():
            node = alloc.attrs.get("node")
            if "containerId" in alloc.attrs and node:
                owned.setdefault((str(node), alloc.handle), set()).add(str(b.address(o)))
    out = []
    for key, ips in owned.items():
        subject = "/".join(key)
        if key[0] not in live_hosts:
            continue  # its addresses are released, and the record with them
        if key not in snap.endpoints:
            out.append(Issue(Finding.ALLOCATION_WITHOUT_ENDPOINT, subject, ", ".join(sorted(ips))))
            continue
        ep, _ = snap.endpoints[key]
        recorded = {s.split("/")[0] for s in ep.ips}
        if recorded != ips:
            detail = f"record {sorted(recorded)} != blocks {sorted(ips)}"
            out.append(Issue(Finding.ENDPOINT_ADDRESSES_DIFFER, subject, detail))
    for key, (ep, _) in snap.endpoints.items():
        if key not in owned:
            detail = f"pod {ep.namespace}/{ep.pod}, {', '.join(ep.ips) or 'no addresses'}"
            out.append(Issue(Finding.ENDPOINT_WITHOUT_ALLOCATION, "/".join(key), detail))
    return out


class Action(enum.Enum):
    RELEASE_ADDRESS = "release-address"  # subject: ip, with its seq
    DROP_BLOCK_AFFINITY = "drop-block-affinity"  # a gone host's block
    SETTLE_CLAIM = "settle-claim"  # finish or undo a half-finished claim
    DELETE_AFFINITY = "delete-affinity"
    RESTORE_AFFINITY = "restore-affinity"
    REBUILD_HANDLE = "rebuild-handle"  # make the record match the blocks
    DELETE_ENDPOINT = "delete-endpoint"  # subject: "node/handle"
    REBUILD_ENDPOINT = "rebuild-endpoint"  # from the allocations' attributes


@dataclass(frozen=True, order=True)
class Repair:
    action: Action
    subject: str
    seq: int = 0


def _seq_of(blocks: Iterable[Block], ip: str) -> int:
    addr = IPAddress(ip)
    for b in blocks:
        if addr in b.cidr:
            a = b.allocations.get(b.ordinal(addr))
            return a.seq if a else 0
    return 0


def plan_gc(snap: Snapshot, issues: Iterable[Issue]) -> list[Repair]:
    """The repairs for the repairable findings. Addresses are released before
    blocks lose their host, and handles are rebuilt before endpoints."""
    blocks = [b for b, _ in snap.blocks.values()]
    out: set[Repair] = set()
    for i in issues:
        match i.kind:
            case Finding.ALLOCATION_OF_MISSING_HOST:
                out.add(Repair(Action.RELEASE_ADDRESS, i.subject, _seq_of(blocks, i.subject)))
            case Finding.BLOCK_OF_MISSING_HOST:
                out.add(Repair(Action.DROP_BLOCK_AFFINITY, i.subject))
            case Finding.HALF_FINISHED_CLAIM:
                out.add(Repair(Action.SETTLE_CLAIM, i.subject))
            case Finding.AFFINITY_WITHOUT_BLOCK:
                out.add(Repair(Action.DELETE_AFFINITY, i.subject))
            case Finding.BLOCK_WITHOUT_AFFINITY_RECORD:
                out.add(Repair(Action.RESTORE_AFFINITY, i.subject))
            case Finding.LEAKED_HANDLE:
                out.add(Repair(Action.REBUILD_HANDLE, i.subject))
            case Finding.ALLOCATION_WITHOUT_HANDLE:
                out.add(Repair(Action.REBUILD_HANDLE, i.detail))
            case Finding.ENDPOINT_WITHOUT_ALLOCATION:
                out.add(Repair(Action.DELETE_ENDPOINT, i.subject))
            case Finding.ALLOCATION_WITHOUT_ENDPOINT | Finding.ENDPOINT_ADDRESSES_DIFFER:
                out.add(Repair(Action.REBUILD_ENDPOINT, i.subject))
            case Finding.ALLOCATION_WITHOUT_AFFINITY:
                pass
    order = list(Action)
    return sorted(out, key=lambda r: (order.index(r.action), r.subject))
