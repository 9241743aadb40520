"""The KvStore implementations the contract suites run against."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from datastore.etcd import EtcdStore
from datastore.memory import MemoryStore
from datastore.port import KvStore


@pytest.fixture(params=["memory", "etcd"])
async def kv(request: pytest.FixtureRequest) -> AsyncIterator[KvStore]:
    store: KvStore
    if request.param == "memory":
        store = MemoryStore()
    else:
        server = request.getfixturevalue("etcd_server")
        store = EtcdStore([server.endpoint])
    try:
        yield store
    finally:
        await store.close()
