"""The IPAM service on a real etcd that goes away and comes back: the
plugin gets "try again later" (CNI code 11) quickly while etcd is down, and
the same service serves again once etcd is back, without a restart."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from netaddr import IPNetwork

from datastore.etcd import EtcdStore
from ipam.cni_service import HostIdentity, IpamService
from ipam.ipam import Ipam
from ipam.model import Pool
from lab.etcd import start_etcd
from tests.harness.cni import cni_env, netconf, run_plugin_async

pytestmark = pytest.mark.etcd


async def test_etcd_down_then_back(tmp_path: Path) -> None:
    etcd = start_etcd(tmp_path / "etcd")
    store = EtcdStore([etcd.endpoint], timeout=2.0)
    ipam = Ipam(store, prefix="/cni-down", l2_segment=True)
    service = IpamService(ipam, HostIdentity("node-a"))
    sock = str(tmp_path / "ipam.sock")
    try:
        await ipam.apply_pool(Pool("pods", IPNetwork("10.244.0.0/16"), 26))
        await service.start(sock)
        before = await run_plugin_async(cni_env("ADD", "c1"), netconf(sock))
        assert before.rc == 0, before.raw

        [member] = etcd.members
        member.kill()
        down = await run_plugin_async(cni_env("ADD", "c2"), netconf(sock))
        assert down.out is not None and down.out["code"] == 11, down.out
        assert "etcd" in down.out["msg"]
        assert down.seconds < 5
        gone = await run_plugin_async(cni_env("DEL", "c1"), netconf(sock))
        assert gone.out is not None and gone.out["code"] == 11

        member.start()
        etcd.wait_healthy()
        deadline = time.monotonic() + 10
        while True:
            after = await run_plugin_async(cni_env("ADD", "c2"), netconf(sock))
            if after.rc == 0 or time.monotonic() > deadline:
                break
        assert after.rc == 0, after.raw
        assert after.out is not None and before.out is not None
        assert after.out["ips"] != before.out["ips"]
        assert [a.ip for a in await ipam.addresses_of("c2.eth0")] == [
            IPNetwork(after.out["ips"][0]["address"]).ip
        ]
    finally:
        await service.stop()
        await store.close()
        etcd.stop()
