"""BGP resources in etcd: the cluster's BGPConfiguration and its BGPPeers,
stored as their validated spec, written with compare-and-swap."""

from __future__ import annotations

import json

from datastore.port import Compare, Delete, KvStore, Put
from meshroute.resources import BFDProfileSpec, BGPConfigurationSpec, BGPPeerSpec


class BgpStore:
    def __init__(self, store: KvStore, prefix: str = "/meshroute") -> None:
        self.store = store
        root = prefix.rstrip("/") + "/bgp/v1"
        self._config = f"{root}/config/default".encode()
        self._peers = f"{root}/peers/".encode()
        self._bfd = f"{root}/bfdprofiles/".encode()

    @property
    def config_key(self) -> bytes:
        return self._config

    def peer_key(self, name: str) -> bytes:
        return self._peers + name.encode()

    def bfd_profile_key(self, name: str) -> bytes:
        return self._bfd + name.encode()

    @property
    def watch_prefix(self) -> bytes:
        return self._config.rsplit(b"/config/", 1)[0] + b"/"

    async def config(self) -> BGPConfigurationSpec:
        v = await self.store.get(self._config)
        if v is None:
            return BGPConfigurationSpec()
        return BGPConfigurationSpec.model_validate(json.loads(v.value))

    async def peers(self) -> dict[str, BGPPeerSpec]:
        listing = await self.store.list(self._peers)
        return {
            k[len(self._peers) :].decode(): BGPPeerSpec.model_validate(json.loads(v.value))
            for k, v in listing.items.items()
        }

    async def bfd_profiles(self) -> dict[str, BFDProfileSpec]:
        listing = await self.store.list(self._bfd)
        return {
            k[len(self._bfd) :].decode(): BFDProfileSpec.model_validate(json.loads(v.value))
            for k, v in listing.items.items()
        }

    async def _put(self, key: bytes, body: bytes) -> bool:
        """Create or replace; True when created."""
        for _ in range(32):
            cur = await self.store.get(key)
            rev = cur.mod_revision if cur else 0
            if await self.store.txn([Compare(key, rev)], [Put(key, body)]):
                return cur is None
        raise RuntimeError(f"{key.decode()}: too many concurrent changes")

    async def apply_config(self, spec: BGPConfigurationSpec) -> bool:
        return await self._put(self._config, encode_spec(spec))

    async def apply_peer(self, name: str, spec: BGPPeerSpec) -> bool:
        return await self._put(self._peers + name.encode(), encode_spec(spec))

    async def apply_bfd_profile(self, name: str, spec: BFDProfileSpec) -> bool:
        return await self._put(self._bfd + name.encode(), encode_spec(spec))

    async def delete_bfd_profile(self, name: str) -> bool:
        return await self._delete(self._bfd + name.encode())

    async def delete_peer(self, name: str) -> bool:
        return await self._delete(self._peers + name.encode())

    async def _delete(self, key: bytes) -> bool:
        cur = await self.store.get(key)
        if cur is None:
            return False
        return bool(await self.store.txn([Compare(key, cur.mod_revision)], [Delete(key)]))


def encode_spec(spec: BGPConfigurationSpec | BGPPeerSpec | BFDProfileSpec) -> bytes:
    return json.dumps(spec.model_dump(mode="json", by_alias=True), sort_keys=True).encode()
