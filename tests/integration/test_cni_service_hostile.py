"""Hostile requests on the IPAM service's own socket (a client that is not
our plugin, or an old one), with real etcd behind it: each gets an error
reply in the protocol (a JSON line), the service logs no traceback, keeps
serving, and nothing reaches etcd. A request etcd finds too large is
reported as too large, not as etcd being unreachable."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from netaddr import IPNetwork

from datastore.etcd import EtcdStore
from datastore.port import Put, RequestTooLarge
from ipam.cni_service import HostIdentity, IpamService, decide_error
from ipam.ipam import Ipam
from ipam.model import Pool
from lab.etcd import EtcdCluster
from tests.harness.cni import cni_env, netconf, run_plugin_async

pytestmark = pytest.mark.etcd


@pytest.fixture
async def service(
    etcd_server: EtcdCluster, etcd_prefix: str, tmp_path: Path
) -> AsyncIterator[tuple[IpamService, str]]:
    store = EtcdStore([etcd_server.endpoint])
    ipam = Ipam(store, prefix=etcd_prefix)
    await ipam.apply_pool(Pool("pods", IPNetwork("10.244.0.0/16"), 26))
    svc = IpamService(ipam, HostIdentity("node-a"))
    path = str(tmp_path / "ipam.sock")
    await svc.start(path)
    try:
        yield svc, path
    finally:
        await svc.stop()
        await store.close()


async def ask(path: str, line: bytes) -> dict:
    reader, writer = await asyncio.open_unix_connection(path, limit=1 << 21)
    try:
        writer.write(line + b"\n")
        await writer.drain()
        reply = await asyncio.wait_for(reader.readline(), 20)
    finally:
        writer.close()
    assert reply.endswith(b"\n"), reply[:200]
    assert len(reply) < 1000, reply[:300]
    out = json.loads(reply)
    assert isinstance(out, dict)
    return out


def add(**fields: object) -> bytes:
    req = {"op": "add", "containerId": "c1", "ifname": "eth0", **fields}
    return json.dumps(req).encode()


@pytest.mark.parametrize(
    ("line", "code", "says"),
    [
        (add(containerId="abc\udcff"), 4, "containerId"),
        (add(containerId="a" * 100_000), 4, "containerId"),
        (add(containerId="semi;colon"), 4, "containerId"),
        (add(ifname="x" * 16), 4, "ifname"),
        (add(ifname="a/b"), 4, "ifname"),
        (add(pod="p\udcff"), 4, "pod"),
        (add(namespace="n" * 100_000), 4, "namespace"),
        (add(ips=["1" * 100_000]), 7, "ips"),
        (add(ipv4Pools=["p" * 100_000]), 7, "ipv4Pools"),
        (add(ipv4Pools=["p"] * 10_000), 7, "ipv4Pools"),
        (add(ipv4="yes"), 7, "ipv4"),
        (add(op="o" * 100_000), 7, "op"),
        (b"[" * 200_000 + b"]" * 200_000, 7, "nested"),
        (b'{"op": "add", "containerId": "c1", "ifname": "eth0", "ipv4": NaN}', 7, "JSON"),
        (b'{"op": "add", "containerId": "c1", "ifname": "\xff"}', 7, "JSON"),
    ],
    ids=[
        "id-invalid-utf8",
        "id-100KB",
        "id-semicolon",
        "ifname-16-bytes",
        "ifname-slash",
        "pod-invalid-utf8",
        "namespace-100KB",
        "ip-100KB",
        "pool-100KB",
        "pools-10k",
        "ipv4-not-bool",
        "op-100KB",
        "deep-nesting",
        "nan",
        "raw-invalid-utf8",
    ],
)
async def test_hostile_requests_get_an_error_line(
    service: tuple[IpamService, str],
    caplog: pytest.LogCaptureFixture,
    line: bytes,
    code: int,
    says: str,
) -> None:
    svc, path = service
    with caplog.at_level(logging.WARNING):
        reply = await ask(path, line)
    assert reply["ok"] is False and reply["code"] == code, reply
    assert says in reply["msg"], reply
    assert not [r for r in caplog.records if r.exc_info], "the service logged a traceback"
    assert (await svc.ipam.snapshot()).blocks == {}
    fine = await ask(path, add(containerId="fine"))
    assert fine["ok"] is True, fine


async def test_plugin_with_a_hostile_id_never_reaches_the_service(
    service: tuple[IpamService, str],
) -> None:
    svc, path = service
    env: dict = cni_env("ADD", "c1")
    env["CNI_CONTAINERID"] = b"a" * 100_000
    r = await run_plugin_async(env, netconf(path))
    assert r.rc == 1 and r.out is not None and r.out["code"] == 4, r.raw[:300]
    assert (await svc.ipam.snapshot()).blocks == {}


async def test_an_oversize_request_is_reported_as_such(
    etcd_server: EtcdCluster, etcd_prefix: str
) -> None:
    store = EtcdStore([etcd_server.endpoint])
    try:
        key = f"{etcd_prefix}/big".encode()
        with pytest.raises(RequestTooLarge) as e:
            await store.txn([], [Put(key, b"x" * 2_000_000)])
        assert "too large" in str(e.value) and "unreachable" not in str(e.value)
        with pytest.raises(RequestTooLarge) as e:
            await store.txn([], [Put(key + str(i).encode(), b"x") for i in range(200)])
        assert "too many operations" in str(e.value)
        reply = decide_error(e.value)
        assert reply["code"] == 104 and "too large" in reply["msg"]
        assert "unreachable" not in reply["msg"]
        assert await store.get(key) is None
    finally:
        await store.close()
