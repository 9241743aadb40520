"""ServiceAddresses in etcd: each stored as its validated spec under
``<prefix>/services/v1/addresses/<name>`` (written by ``meshroute.apply_txn``
with every other resource of an apply, in one transaction). A record that
no longer validates is left out and named in ``problems``, never fatal."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from pydantic import ValidationError

from datastore.port import Compare, Delete, KvStore
from meshroute.service_resources import ServiceAddressSpec


@dataclass(frozen=True)
class ServiceState:
    addresses: dict[str, ServiceAddressSpec] = field(default_factory=dict)
    problems: tuple[str, ...] = ()


class ServiceStore:
    def __init__(self, store: KvStore, prefix: str = "/meshroute") -> None:
        self.store = store
        self.root = (prefix.rstrip("/") + "/services/v1/addresses/").encode()
        # the specs of the last load by their stored bytes: a change to one
        # of a thousand records validates that one again, not all of them
        self._parsed: dict[bytes, ServiceAddressSpec] = {}

    def key(self, name: str) -> bytes:
        return self.root + name.encode()

    async def load(self) -> ServiceState:
        listing = await self.store.list(self.root)
        out: dict[str, ServiceAddressSpec] = {}
        problems = []
        parsed = {}
        for k, v in sorted(listing.items.items()):
            name = k[len(self.root) :].decode(errors="replace")
            spec = self._parsed.get(v.value)
            if spec is None:
                try:
                    spec = ServiceAddressSpec.model_validate(json.loads(v.value))
                except (ValueError, ValidationError) as e:
                    problems.append(f"serviceaddress {name[:64]!r}: {str(e)[:200]}")
                    continue
            out[name] = parsed[v.value] = spec
        self._parsed = parsed
        return ServiceState(out, tuple(problems))

    async def delete(self, name: str) -> bool:
        key = self.key(name)
        cur = await self.store.get(key)
        if cur is None:
            return False
        return bool(await self.store.txn([Compare(key, cur.mod_revision)], [Delete(key)]))


def encode_service(spec: ServiceAddressSpec) -> bytes:
    return json.dumps(spec.model_dump(mode="json", by_alias=True), sort_keys=True).encode()
