"""The local IPAM service on a memory store, driven through its real unix
socket by the real plugin process: idempotent ADD, DEL and CHECK, errors
mapped to CNI codes, socket permissions and stale sockets, concurrent pods."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from netaddr import IPAddress, IPNetwork

from datastore.memory import MemoryStore
from datastore.port import StoreError
from ipam.allocator import IpamError, PoolExhausted
from ipam.cni_service import BadRequest, HostIdentity, IpamService, decide_error, decode_request
from ipam.ipam import Conflict, Ipam
from ipam.model import IpamSettings, Pool
from lab.ports import free_ports
from tests.harness.cni import cni_env, netconf, run_plugin_async

POOL = Pool("pods", IPNetwork("10.244.0.0/16"), 26)


@dataclass
class Running:
    service: IpamService
    ipam: Ipam
    store: MemoryStore
    path: str

    async def plugin(self, command: str, cid: str, conf: dict | None = None, **env: str):
        return await run_plugin_async(
            cni_env(command, cid, **env), conf if conf is not None else netconf(self.path)
        )


async def start(tmp_path: Path, *, l2: bool = True, pools: tuple[Pool, ...] = (POOL,)) -> Running:
    store = MemoryStore()
    ipam = Ipam(store, prefix="/svc", l2_segment=l2)
    for p in pools:
        await ipam.apply_pool(p)
    service = IpamService(ipam, HostIdentity("node-a", {"rack": "r1"}))
    path = str(tmp_path / "run" / "ipam.sock")
    await service.start(path)
    return Running(service, ipam, store, path)


@pytest.fixture
async def svc(tmp_path: Path) -> AsyncIterator[Running]:
    r = await start(tmp_path)
    try:
        yield r
    finally:
        await r.service.stop()


async def test_add_is_idempotent_and_del_releases(svc: Running) -> None:
    args = "K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0"
    first = await svc.plugin("ADD", "c1", CNI_ARGS=args)
    assert first.rc == 0, first.raw
    assert first.out is not None
    [ip] = first.out["ips"]
    addr, _, plen = ip["address"].partition("/")
    block = IPNetwork(f"{addr}/{plen}").cidr
    assert plen == "26" and IPAddress(addr) in POOL.cidr
    assert ip["gateway"] == str(block[1]) and IPAddress(addr) not in (block[0], block[1], block[-1])
    assert first.out["routes"] == [{"dst": "0.0.0.0/0", "gw": str(block[1])}]

    again = await svc.plugin("ADD", "c1", CNI_ARGS=args)
    assert again.out == first.out
    other = await svc.plugin("ADD", "c2")
    assert other.out is not None and other.out["ips"][0]["address"] != ip["address"]

    [owned] = await svc.ipam.addresses_of("c1.eth0")
    assert str(owned.ip) == addr
    snap = await svc.ipam.snapshot()
    b, _ = snap.blocks[str(block)]
    attrs = b.allocations[b.ordinal(IPAddress(addr))].attrs
    assert dict(attrs) == {
        "namespace": "shop",
        "pod": "web-0",
        "containerId": "c1",
        "node": "node-a",
    }

    for _ in range(2):
        d = await svc.plugin("DEL", "c1")
        assert (d.rc, d.raw) == (0, b"")
    assert await svc.ipam.addresses_of("c1.eth0") == []
    unknown = await svc.plugin("DEL", "never-added")
    assert unknown.rc == 0


async def test_check_compares_with_the_prev_result(svc: Running) -> None:
    add = await svc.plugin("ADD", "c1")
    assert add.out is not None
    conf = netconf(svc.path)
    conf["prevResult"] = add.out
    ok = await svc.plugin("CHECK", "c1", conf)
    assert (ok.rc, ok.raw) == (0, b"")
    await svc.plugin("DEL", "c1")
    gone = await svc.plugin("CHECK", "c1", conf)
    assert gone.rc == 1 and gone.out is not None and gone.out["code"] == 103
    assert add.out["ips"][0]["address"].split("/")[0] in gone.out["msg"]


async def test_requested_address_and_refusal(svc: Running) -> None:
    r = await svc.plugin("ADD", "c1", CNI_ARGS="IP=10.244.9.10")
    assert r.out is not None and r.out["ips"][0]["address"] == "10.244.9.10/26"
    taken = await svc.plugin("ADD", "c2", CNI_ARGS="IP=10.244.9.10")
    assert taken.out is not None and taken.out["code"] == 102, taken.out
    outside = await svc.plugin("ADD", "c3", CNI_ARGS="IP=192.0.2.7")
    assert outside.out is not None and outside.out["code"] == 102
    assert "192.0.2.7" in outside.out["msg"]
    # a refused request leaves nothing behind
    assert await svc.ipam.addresses_of("c2.eth0") == []
    assert await svc.ipam.addresses_of("c3.eth0") == []


async def test_pool_exhausted_and_datastore_down(tmp_path: Path) -> None:
    # /30 blocks on an L2 segment: each keeps 3 of its 4 addresses (network,
    # gateway, broadcast), and a host gets one block: one pod.
    tiny = Pool("tiny", IPNetwork("10.9.0.0/29"), 30)
    r = await start(tmp_path, pools=(tiny,))
    try:
        ok = await r.plugin("ADD", "a")
        assert ok.rc == 0, ok.raw
        [ip] = ok.out["ips"]  # type: ignore[index]
        full = await r.plugin("ADD", "c")
        assert full.out is not None and full.out["code"] == 100, full.out
        assert str(IPNetwork(ip["address"]).cidr) in full.out["msg"]
        assert await r.ipam.addresses_of("c.eth0") == []

        r.store.down = True
        down = await r.plugin("ADD", "d")
        assert down.out is not None and down.out["code"] == 11
        assert "etcd" in down.out["msg"]
        assert (await r.plugin("DEL", "a")).out["code"] == 11
    finally:
        await r.service.stop()


async def test_routed_mode_hands_out_host_addresses(tmp_path: Path) -> None:
    r = await start(tmp_path, l2=False)
    try:
        add = await r.plugin("ADD", "c1", netconf(r.path, version="0.3.1"))
        assert add.out is not None
        [ip] = add.out["ips"]
        assert ip["address"].endswith("/32") and "gateway" not in ip and ip["version"] == "4"
        assert add.out["routes"] == [] and add.out["cniVersion"] == "0.3.1"
    finally:
        await r.service.stop()


async def test_concurrent_pods_get_distinct_addresses(svc: Running) -> None:
    runs = await asyncio.gather(*(svc.plugin("ADD", f"p{i}") for i in range(24)))
    assert all(r.rc == 0 for r in runs), [r.raw for r in runs if r.rc]
    addresses = [r.out["ips"][0]["address"] for r in runs]
    assert len(set(addresses)) == 24
    dels = await asyncio.gather(*(svc.plugin("DEL", f"p{i}") for i in range(24)))
    assert all(d.rc == 0 for d in dels)
    snap = await svc.ipam.snapshot()
    assert snap.handles == {}


async def test_socket_is_private_stale_one_replaced_live_one_refused(tmp_path: Path) -> None:
    path = tmp_path / "run" / "ipam.sock"
    path.parent.mkdir()
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()
    r = await start(tmp_path)
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert (await r.plugin("ADD", "c1")).rc == 0
        second = IpamService(r.ipam, HostIdentity("node-a"))
        with pytest.raises(IpamError, match="another IPAM service"):
            await second.start(str(path))
    finally:
        await r.service.stop()
    assert not path.exists()


async def test_malformed_requests_on_the_socket(svc: Running) -> None:
    reader, writer = await asyncio.open_unix_connection(svc.path)
    try:
        for line, code in (
            (b"nonsense\n", 7),
            (b'{"op": "explode", "containerId": "c", "ifname": "e"}\n', 7),
            (b'{"op": "add", "ifname": "e"}\n', 4),  # as for a missing CNI_CONTAINERID
            (b'{"op": "add", "containerId": "c", "ifname": "e", "ips": ["x"]}\n', 7),
        ):
            writer.write(line)
            reply = await reader.readline()
            assert b'"ok":false' in reply and f'"code":{code}'.encode() in reply, reply
        # the connection still serves a good request afterwards
        writer.write(b'{"op": "del", "containerId": "c", "ifname": "e"}\n')
        assert await reader.readline() == b'{"ok":true}\n'
    finally:
        writer.close()
        await writer.wait_closed()


def test_serve_fails_fast_when_etcd_is_unreachable(tmp_path: Path) -> None:
    [port] = free_ports(1)  # nothing listens there
    sock = tmp_path / "ipam.sock"
    t = time.monotonic()
    args = ["--host", "n1", "--socket", str(sock), "--etcd", f"127.0.0.1:{port}"]
    p = subprocess.run(
        [sys.executable, "-m", "meshroute.cli", "ipam", "serve", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert p.returncode == 1
    assert f"etcd unreachable at 127.0.0.1:{port}" in p.stderr
    assert p.stderr.startswith("meshroute: cannot start")
    assert time.monotonic() - t < 10
    assert not sock.exists()


async def test_borrowed_address_is_a_host_route_on_every_add(tmp_path: Path) -> None:
    one_block = Pool("one", IPNetwork("10.9.0.0/26"), 26)
    a = await start(tmp_path / "a", pools=(one_block,))
    # routed mode: L2-segment mode refuses to borrow (test_l2_segment_one_block_per_host)
    b = IpamService(Ipam(a.store, prefix="/svc"), HostIdentity("node-b"))
    b_path = str(tmp_path / "b" / "ipam.sock")
    await b.start(b_path)
    try:
        assert (await a.plugin("ADD", "on-a")).rc == 0  # node-a takes the pool's only block
        first = await run_plugin_async(cni_env("ADD", "on-b"), netconf(b_path))
        again = await run_plugin_async(cni_env("ADD", "on-b"), netconf(b_path))
        assert first.out is not None and first.out == again.out
        [ip] = first.out["ips"]
        assert ip["address"].endswith("/32") and "gateway" not in ip
        assert first.out["routes"] == []
    finally:
        await b.stop()
        await a.service.stop()


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (BadRequest("x"), 7),
        (StoreError("etcd unreachable"), 11),
        (Conflict("lost races"), 11),
        (PoolExhausted("full"), 100),
        (IpamError("10.0.0.1 is not in any pool"), 102),
        (KeyError("bug"), 110),
    ],
)
def test_failures_map_to_cni_codes(error: Exception, code: int) -> None:
    reply = decide_error(error)
    assert reply["ok"] is False and reply["code"] == code and reply["msg"]


async def test_dual_stack_with_pools_named_for_one_family(tmp_path: Path) -> None:
    v4b = Pool("v4-b", IPNetwork("10.245.0.0/16"), 26)
    v6 = Pool("v6", IPNetwork("fd00:10::/112"), 122)
    r = await start(tmp_path, pools=(POOL, v4b, v6))
    try:
        conf = netconf(r.path, assign_ipv6=True, ipv4_pools=["v4-b"])
        add = await r.plugin("ADD", "c1", conf)
        assert add.out is not None, add.raw
        v4_ip, v6_ip = (IPNetwork(i["address"]) for i in add.out["ips"])
        assert v4_ip.ip in v4b.cidr and v4_ip.prefixlen == 26
        assert v6_ip.ip in v6.cidr and v6_ip.prefixlen == 122
        assert [x["dst"] for x in add.out["routes"]] == ["0.0.0.0/0", "::/0"]
        assert add.out["routes"][1]["gw"] == str(v6_ip.cidr[1])
        # a family that cannot be served gives back what the other one got
        conf6 = netconf(r.path, assign_ipv6=True, ipv6_pools=["missing"])
        fail = await r.plugin("ADD", "c2", conf6)
        assert fail.out is not None and fail.out["code"] == 100
        assert await r.ipam.addresses_of("c2.eth0") == []
    finally:
        await r.service.stop()


async def test_housekeeping_gives_back_empty_blocks_once_old_enough(svc: Running) -> None:
    assert (await svc.plugin("ADD", "c1")).rc == 0
    await svc.service.housekeeping()
    assert len((await svc.ipam.snapshot()).blocks) == 1  # in use: kept
    assert (await svc.plugin("DEL", "c1")).rc == 0
    await svc.service.housekeeping()
    assert len((await svc.ipam.snapshot()).blocks) == 1  # empty but young: kept
    await svc.ipam.apply_settings(IpamSettings(min_block_age_s=0))
    await svc.service.housekeeping()
    snap = await svc.ipam.snapshot()
    assert snap.blocks == {} and snap.affinities == {}


@pytest.mark.parametrize(
    "raw",
    [
        {"op": "add", "containerId": "c", "ifname": "eth0", "attach": {"netns": "relative"}},
        {"op": "add", "containerId": "c", "ifname": "eth0", "attach": {"netns": "/x", "mtu": 9e9}},
        {"op": "add", "containerId": "c", "ifname": "eth0", "attach": []},
        {"op": "add", "containerId": "c" * 300, "ifname": "eth0"},
        {"op": "add", "containerId": "c", "ifname": "eth0", "labels": {"k": "v" * 100}},
        {"op": "add", "containerId": "c", "ifname": "eth0", "ports": [{"name": "x"}]},
        {"op": "add", "containerId": "c", "ifname": "eth0", "namespace": "NS"},
    ],
)
def test_service_validates_what_the_socket_brings(raw: dict[str, Any]) -> None:
    with pytest.raises(BadRequest) as e:
        decode_request(raw)
    assert len(str(e.value)) < 200


async def test_routed_attach_is_refused_on_an_l2_segment_node(tmp_path: Path) -> None:
    r = await start(tmp_path)  # l2 segment
    try:
        raw = {"op": "add", "containerId": "c1", "ifname": "eth0", "attach": {"netns": "/x"}}
        reply = await r.service.handle(raw)
        assert reply["ok"] is False and reply["code"] == 7
        assert "L2-segment" in reply["msg"]
        assert await r.ipam.addresses_of("c1.eth0") == []
    finally:
        await r.service.stop()
