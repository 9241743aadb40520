"""Policy resources in etcd: NetworkPolicies, GlobalNetworkPolicies and
Namespaces, stored as their validated JSON under ``<prefix>/policy/v1/``
(written by ``meshroute.apply_txn`` with every other resource of an apply,
in one transaction)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

from pydantic import BaseModel, ValidationError

from datastore.port import Compare, Delete, KvStore
from meshroute.policy_resources import (
    GlobalNetworkPolicyResource,
    NamespaceResource,
    NetworkPolicyResource,
)

log = logging.getLogger(__name__)

PolicyResource = NetworkPolicyResource | GlobalNetworkPolicyResource | NamespaceResource
POLICY_KINDS = (NetworkPolicyResource, GlobalNetworkPolicyResource, NamespaceResource)
_DIRS: dict[type[BaseModel], str] = {
    NetworkPolicyResource: "networkpolicies",
    GlobalNetworkPolicyResource: "globalnetworkpolicies",
    NamespaceResource: "namespaces",
}


@dataclass(frozen=True)
class PolicyState:
    network_policies: tuple[NetworkPolicyResource, ...] = ()
    global_policies: tuple[GlobalNetworkPolicyResource, ...] = ()
    namespaces: tuple[NamespaceResource, ...] = ()
    # the store revision these were read at; not part of what they say
    revision: int = field(default=0, compare=False)


class PolicyStore:
    def __init__(self, store: KvStore, prefix: str = "/meshroute") -> None:
        self.store = store
        self.root = prefix.rstrip("/") + "/policy/v1/"
        # what ``load`` parsed, by key: a record whose bytes did not change
        # is not validated again and keeps its object (so equality with the
        # last state is an identity check)
        self._parsed: dict[bytes, tuple[bytes, BaseModel]] = {}

    def key(self, r: PolicyResource) -> bytes:
        name = r.metadata.name
        if isinstance(r, NetworkPolicyResource):
            name = f"{r.metadata.namespace}/{name}"
        return f"{self.root}{_DIRS[type(r)]}/{name}".encode()

    def key_of(self, kind: str, name: str) -> bytes:
        return f"{self.root}{kind}/{name}".encode()

    async def delete(self, kind: str, name: str) -> bool:
        key = self.key_of(kind, name)
        cur = await self.store.get(key)
        if cur is None:
            return False
        return bool(await self.store.txn([Compare(key, cur.mod_revision)], [Delete(key)]))

    async def load(self) -> PolicyState:
        """Every stored resource; one that no longer validates (written by
        another version) is logged and left out."""
        listing = await self.store.list(self.root.encode())
        found: dict[type[BaseModel], list[BaseModel]] = {t: [] for t in _DIRS}
        parsed: dict[bytes, tuple[bytes, BaseModel]] = {}
        for key, v in sorted(listing.items.items()):
            kind = key[len(self.root) :].split(b"/", 1)[0].decode()
            model = next((t for t, d in _DIRS.items() if d == kind), None)
            if model is None:
                continue
            known = self._parsed.get(key)
            if known is not None and known[0] == v.value:
                parsed[key] = known
                found[model].append(known[1])
                continue
            try:
                r = model.model_validate(json.loads(v.value))
            except (ValueError, ValidationError) as e:
                log.warning("ignoring %s: %.200s", key.decode(errors="replace"), e)
                continue
            parsed[key] = (v.value, r)
            found[model].append(r)
        self._parsed = parsed
        return PolicyState(
            tuple(found[NetworkPolicyResource]),  # type: ignore[arg-type]
            tuple(found[GlobalNetworkPolicyResource]),  # type: ignore[arg-type]
            tuple(found[NamespaceResource]),  # type: ignore[arg-type]
            listing.revision,
        )


def encode_resource(r: PolicyResource) -> bytes:
    return json.dumps(to_document(r), sort_keys=True).encode()


def to_document(r: PolicyResource) -> dict[str, object]:
    return r.model_dump(mode="json", by_alias=True, exclude_none=True)
