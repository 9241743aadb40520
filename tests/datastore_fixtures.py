"""The KvStore implementations the contract suites run against."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from datastore.etcd import EtcdStore
from datastore.etcd_tls import EtcdSecurity
from datastore.memory import MemoryStore
from datastore.port import KvStore


@pytest.fixture(params=["memory", "etcd", "etcd-mtls"])
async def kv(request: pytest.FixtureRequest) -> AsyncIterator[KvStore]:
    store: KvStore
    if request.param == "memory":
        store = MemoryStore()
    elif request.param == "etcd":
        server = request.getfixturevalue("etcd_server")
        store = EtcdStore([server.endpoint])
    else:
        tls = request.getfixturevalue("tls_etcd")
        cert, key = tls.pki.client
        security = EtcdSecurity(str(tls.pki.ca.file), str(cert), str(key))
        store = EtcdStore([tls.endpoint], security=security)
    try:
        yield store
    finally:
        await store.close()
