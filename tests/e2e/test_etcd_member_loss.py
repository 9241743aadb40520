"""IPAM keeps working when the etcd member it talks to dies: the store
moves to another endpoint of the three-member cluster, nothing is lost and
nothing is handed out twice."""

from __future__ import annotations

import pytest
from netaddr import IPNetwork

from datastore.etcd import EtcdStore
from ipam.ipam import AssignRequest, Ipam
from ipam.model import Pool
from lab.etcd import EtcdCluster

pytestmark = [pytest.mark.etcd, pytest.mark.slow]


async def test_assignments_continue_after_losing_a_member(etcd_cluster3: EtcdCluster) -> None:
    store = EtcdStore(etcd_cluster3.endpoints)
    try:
        ipam = Ipam(store, prefix="/loss")
        await ipam.apply_pool(Pool("p", IPNetwork("10.244.0.0/16"), 26))
        first = [
            (await ipam.assign(AssignRequest(host="h", handle=f"a{i}")))[0].ip for i in range(20)
        ]
        etcd_cluster3.members[0].kill()  # the member the store was talking to
        second = [
            (await ipam.assign(AssignRequest(host="h", handle=f"b{i}")))[0].ip for i in range(20)
        ]
        assert len(set(first) | set(second)) == 40
        assert await ipam.check({"h"}) == []
        assert len(await ipam.release_handle("a3")) == 1
    finally:
        await store.close()
