"""Fixtures shared by every test layer: real etcd on loopback, network
namespaces that are always removed."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.etcd import EtcdCluster, start_etcd
from lab.netns import NetnsFactory, sweep_stale

pytest_plugins = ["tests.datastore_fixtures"]


def pytest_sessionstart(session: pytest.Session) -> None:
    if os.geteuid() == 0:
        sweep_stale()


@pytest.fixture(scope="session")
def etcd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    """One etcd member for the whole session; tests isolate by key prefix."""
    c = start_etcd(tmp_path_factory.mktemp("etcd"))
    yield c
    c.stop()


@pytest.fixture
def etcd_prefix(request: pytest.FixtureRequest) -> str:
    """A key prefix no other test uses."""
    return f"/t/{request.node.nodeid.replace('/', '_')}/{os.urandom(3).hex()}"


@pytest.fixture
def etcd_cluster3(tmp_path: Path) -> Iterator[EtcdCluster]:
    """A fresh three-member cluster for fault tests."""
    c = start_etcd(tmp_path / "etcd3", size=3)
    yield c
    c.stop()


@pytest.fixture
def netns() -> Iterator[NetnsFactory]:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    f = NetnsFactory()
    try:
        yield f
    finally:
        f.cleanup()
