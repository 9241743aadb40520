"""``meshroute label pod`` as an operator runs it, against real etcd: labels
set, overwritten and removed on every interface of the pod, and shown by
``meshroute ipam endpoints``; bad arguments and unknown pods refused with
one line and exit 1, nothing written."""

from __future__ import annotations

import asyncio
import json

import pytest
from netaddr import IPNetwork

from datastore.etcd import EtcdStore
from ipam.endpoint import WorkloadEndpoint
from ipam.ipam import AssignRequest, Ipam
from ipam.model import Pool
from lab.etcd import EtcdCluster
from tests.harness.cli import cli

pytestmark = [pytest.mark.etcd, pytest.mark.slow]


def _ipam(server: EtcdCluster, prefix: str, fn):  # type: ignore[no-untyped-def]
    async def go():  # type: ignore[no-untyped-def]
        store = EtcdStore([server.endpoint])
        try:
            return await fn(Ipam(store, prefix=prefix))
        finally:
            await store.close()

    return asyncio.run(go())


def _pod(ifname: str) -> AssignRequest:
    ep = WorkloadEndpoint("node-a", "shop", "web-0", "c1", ifname, labels={"app": "web"})
    return AssignRequest(
        host="node-a",
        handle=ep.handle,
        attrs={"containerId": "c1", "node": "node-a"},
        endpoint=ep,
    )


def _labels(server: EtcdCluster, prefix: str) -> dict[str, dict[str, str]]:
    async def read(i: Ipam) -> dict[str, dict[str, str]]:
        return {ep.ifname: dict(ep.labels) for ep, _ in await i.endpoints()}

    return _ipam(server, prefix, read)  # type: ignore[no-any-return]


def test_label_pod(etcd_server: EtcdCluster, etcd_prefix: str) -> None:
    async def setup(i: Ipam) -> None:
        await i.apply_pool(Pool("p", IPNetwork("10.20.0.0/16"), 26))
        await i.assign(_pod("eth0"))
        await i.assign(_pod("net1"))

    _ipam(etcd_server, etcd_prefix, setup)
    r = cli(etcd_server, etcd_prefix, "label", "pod", "shop/web-0", "tier=front", "app=api")
    assert r.returncode == 0, r.stderr
    assert "shop/web-0" in r.stdout and "tier=front" in r.stdout
    want = {"app": "api", "tier": "front"}
    assert _labels(etcd_server, etcd_prefix) == {"eth0": want, "net1": want}

    r = cli(etcd_server, etcd_prefix, "label", "pod", "shop/web-0", "app-", "example.com/x=")
    assert r.returncode == 0, r.stderr
    want = {"tier": "front", "example.com/x": ""}
    assert _labels(etcd_server, etcd_prefix) == {"eth0": want, "net1": want}
    shown = cli(etcd_server, etcd_prefix, "ipam", "endpoints", "--node", "node-a")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.count("shop") == 2 and "example.com/x=,tier=front" in shown.stdout
    listed = json.loads(cli(etcd_server, etcd_prefix, "ipam", "endpoints", "--json").stdout)
    assert [e["ifname"] for e in listed] == ["eth0", "net1"]
    assert cli(etcd_server, etcd_prefix, "ipam", "endpoints", "--node", "x").stdout.count("\n") == 1

    for bad in (
        ["shop/nobody", "a=b"],
        ["web-0", "a=b"],
        ["shop/web-0", "no_equals_sign"],
        ["shop/web-0", "bad key=v"],
        ["shop/web-0", "k=" + "v" * 100_000],
        ["shop/web-0", "k=v", "k-"],
        ["Shop/web-0", "a=b"],
    ):
        r = cli(etcd_server, etcd_prefix, "label", "pod", *bad)
        assert r.returncode == 1, (bad, r.stdout, r.stderr)
        assert r.stderr.startswith("meshroute: ") and len(r.stderr) < 300, r.stderr
        assert "Traceback" not in r.stderr
    assert _labels(etcd_server, etcd_prefix) == {"eth0": want, "net1": want}
