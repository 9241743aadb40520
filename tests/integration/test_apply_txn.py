"""``apply`` as one transaction on real etcd: every kind has an applier, a
change to what the checks read between the checks and the write makes the
checks run again (and refuse), and nothing is half written."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from netaddr import IPNetwork

from datastore.etcd import EtcdStore
from datastore.port import Compare, Op
from ipam.ipam import Ipam
from ipam.model import Pool
from lab.etcd import EtcdCluster
from meshroute.apply_txn import APPLIERS, apply_all
from meshroute.errors import UserError
from meshroute.resources import KINDS, parse_documents

pytestmark = pytest.mark.etcd


def test_every_resource_kind_has_an_applier() -> None:
    assert set(APPLIERS) == set(KINDS.values())


def pool(name: str, cidr: str) -> str:
    return (
        f"apiVersion: meshroute.io/v1\nkind: IPPool\nmetadata: {{name: {name}}}\n"
        f"spec: {{cidr: {cidr}}}\n"
    )


class _RacedStore(EtcdStore):
    """Test-only: before its first transaction goes out, another client
    creates a pool that overlaps one being applied."""

    def __init__(self, endpoint: str, prefix: str) -> None:
        super().__init__([endpoint])
        self.endpoint = endpoint
        self.prefix = prefix
        self.txns = 0

    async def txn(self, compares: Sequence[Compare], ops: Sequence[Op]) -> int:
        self.txns += 1
        if self.txns == 1:
            other = EtcdStore([self.endpoint])
            try:
                sneaky = Pool("sneaky", IPNetwork("10.9.128.0/17"), 26)
                await Ipam(other, prefix=self.prefix).apply_pool(sneaky)
            finally:
                await other.close()
        return await super().txn(compares, ops)


async def test_a_change_under_the_checks_makes_them_run_again(
    etcd_server: EtcdCluster, etcd_prefix: str
) -> None:
    store = _RacedStore(etcd_server.endpoint, etcd_prefix)
    text = pool("a", "10.1.0.0/16") + "---\n" + pool("b", "10.9.0.0/16")
    loaded = parse_documents(text, "f.yaml")
    try:
        with pytest.raises(UserError) as e:
            await apply_all(store, etcd_prefix, loaded)
        expected = "f.yaml: document 2 (IPPool b): spec.cidr: 10.9.0.0/16 overlaps existing pool"
        assert f"{expected} sneaky" in str(e.value)
        assert store.txns == 1  # the write lost on its compares; the checks ran again and refused
        names = sorted(p.name for p in await Ipam(store, prefix=etcd_prefix).pools())
        assert names == ["sneaky"]
    finally:
        await store.close()
