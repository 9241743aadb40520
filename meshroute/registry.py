"""The node registry in etcd: one persistent record per node (created when
the node first starts, removed only when the operator decommissions it) and
a liveness key under a lease the running node keeps alive.

IPAM's check and gc treat a host as gone only when its persistent record is
gone, never because its lease expired: a rebooting node keeps its blocks."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from datastore.port import Compare, Delete, KvStore, Put

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NodeRecord:
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    ipv4: str | None = None  # address with prefix length, e.g. 192.0.2.10/24
    ipv6: str | None = None
    asn: int | None = None
    tunnel_address: str | None = None
    vtep_mac: str | None = None
    # the VTEP on the IPv6 underlay (IPv6 pools using VXLAN)
    tunnel_address6: str | None = None
    vtep_mac6: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "labels": dict(self.labels),
            "ipv4": self.ipv4,
            "ipv6": self.ipv6,
            "asn": self.asn,
            "tunnelAddress": self.tunnel_address,
            "vtepMAC": self.vtep_mac,
            "ipv6TunnelAddress": self.tunnel_address6,
            "vtepMACV6": self.vtep_mac6,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> NodeRecord:
        return cls(
            name=d["name"],
            labels=dict(d.get("labels") or {}),
            ipv4=d.get("ipv4"),
            ipv6=d.get("ipv6"),
            asn=d.get("asn"),
            tunnel_address=d.get("tunnelAddress"),
            vtep_mac=d.get("vtepMAC"),
            tunnel_address6=d.get("ipv6TunnelAddress"),
            vtep_mac6=d.get("vtepMACV6"),
        )


class Registry:
    def __init__(self, store: KvStore, prefix: str = "/meshroute") -> None:
        self.store = store
        root = prefix.rstrip("/")
        self._nodes = f"{root}/nodes/".encode()
        self._alive = f"{root}/alive/".encode()

    def _key(self, name: str) -> bytes:
        return self._nodes + name.encode()

    async def nodes(self) -> dict[str, NodeRecord]:
        listing = await self.store.list(self._nodes)
        out = {}
        for v in listing.items.values():
            rec = NodeRecord.from_dict(json.loads(v.value))
            out[rec.name] = rec
        return out

    async def alive(self) -> set[str]:
        listing = await self.store.list(self._alive)
        return {k[len(self._alive) :].decode() for k in listing.items}

    async def upsert(self, record: NodeRecord) -> bool:
        """Create or update a node's record; True when it changed."""
        body = json.dumps(record.to_dict(), sort_keys=True).encode()
        for _ in range(32):
            cur = await self.store.get(self._key(record.name))
            if cur is not None and cur.value == body:
                return False
            rev = cur.mod_revision if cur else 0
            if await self.store.txn(
                [Compare(self._key(record.name), rev)], [Put(self._key(record.name), body)]
            ):
                return True
        raise RuntimeError(f"node {record.name}: too many concurrent changes")

    async def mark_alive(self, name: str, lease: int) -> None:
        await self.store.txn([], [Put(self._alive + name.encode(), b"1", lease=lease)])

    async def stay_alive(self, name: str, ttl: int) -> None:
        """Keep ``name`` marked alive under a lease until cancelled; when etcd
        was away long enough for the lease to expire, take a new one."""
        lease = await self.store.grant_lease(ttl)
        await self.mark_alive(name, lease)
        try:
            while True:
                await asyncio.sleep(ttl / 3)
                try:
                    await self.store.refresh_lease(lease)
                except Exception as e:  # keep trying: etcd may come back
                    log.warning("liveness lease refresh failed: %s", e)
                    with contextlib.suppress(Exception):
                        lease = await self.store.grant_lease(ttl)
                        await self.mark_alive(name, lease)
        finally:
            with contextlib.suppress(Exception):
                await self.store.revoke_lease(lease)

    async def delete(self, name: str) -> bool:
        cur = await self.store.get(self._key(name))
        if cur is None:
            return False
        deleted = await self.store.txn(
            [Compare(self._key(name), cur.mod_revision)], [Delete(self._key(name))]
        )
        return bool(deleted)
