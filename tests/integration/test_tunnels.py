"""Tunnel devices in a real network namespace: VXLAN for real; IPIP as far
as this kernel allows (without an ``ipip`` module the error must say so; with
one, tunl0 is configured and stripped again; pod traffic over IPIP is the
QEMU test's)."""

from __future__ import annotations

import asyncio
import json
import subprocess

import pytest
from netaddr import IPAddress

from felix_lite.model import IpipDevice, VxlanDevice
from felix_lite.tunnels import OWNER_ALIAS, NetlinkTunnels, TunnelError, plan_tunnel_changes
from lab.netns import Netns, NetnsFactory

pytestmark = pytest.mark.netns


def _host(netns: NetnsFactory) -> Netns:
    ns = netns.new("tun")
    ns.ip("link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")
    ns.ip("link", "set", "eth0", "up")
    ns.ip("addr", "add", "192.0.2.1/24", "dev", "eth0")
    return ns


def _vx(**kw: object) -> VxlanDevice:
    base: dict[str, object] = {
        "name": "vxlan.mesh",
        "vni": 4096,
        "port": 4789,
        "local": IPAddress("192.0.2.1"),
        "parent": "eth0",
        "address": IPAddress("10.244.0.0"),
        "mac": "66:00:00:00:00:01",
        "mtu": 1450,
    }
    base.update(kw)
    return VxlanDevice(**base)  # type: ignore[arg-type]


def _link(ns: Netns, name: str) -> dict:
    [d] = json.loads(ns.ip("-j", "-d", "addr", "show", "dev", name))
    return d


def test_vxlan_device_create_idempotent_change_and_remove(netns):
    ns = _host(netns)
    # a vxlan device that is not ours must survive everything below
    ns.ip(
        "link",
        "add",
        "vxlan.other",
        "type",
        "vxlan",
        "id",
        "7",
        "dstport",
        "4789",
        "local",
        "192.0.2.1",
    )

    async def scenario() -> None:
        t = NetlinkTunnels(ns.name)
        try:
            await t.apply_vxlan(_vx())
            d = _link(ns, "vxlan.mesh")
            info = d["linkinfo"]["info_data"]
            assert (info["id"], info["port"], info["local"], info["learning"]) == (
                4096,
                4789,
                "192.0.2.1",
                False,
            )
            assert info["link"] == "eth0"
            assert (d["mtu"], d["address"], d["ifalias"]) == (
                1450,
                "66:00:00:00:00:01",
                OWNER_ALIAS,
            )
            assert "UP" in d["flags"]
            assert [
                (a["local"], a["prefixlen"]) for a in d["addr_info"] if a["family"] == "inet"
            ] == [("10.244.0.0", 32)]
            index = d["ifindex"]

            # idempotent: nothing left to do, and applying again keeps the device
            links = await t._run(t.observe)
            assert plan_tunnel_changes(_vx(), links, kind="vxlan") == ()
            await t.apply_vxlan(_vx())
            assert _link(ns, "vxlan.mesh")["ifindex"] == index

            # MTU changes in place; a new VNI recreates the device
            await t.apply_vxlan(_vx(mtu=1400))
            assert _link(ns, "vxlan.mesh")["ifindex"] == index
            assert _link(ns, "vxlan.mesh")["mtu"] == 1400
            await t.apply_vxlan(_vx(vni=4097, mtu=1400))
            d = _link(ns, "vxlan.mesh")
            assert d["linkinfo"]["info_data"]["id"] == 4097 and d["ifindex"] != index

            # off: our device goes, the foreign one stays
            await t.apply_vxlan(None)
            names = {x["ifname"] for x in json.loads(ns.ip("-j", "link", "show"))}
            assert "vxlan.mesh" not in names and "vxlan.other" in names
            await t.apply_vxlan(None)  # nothing of ours left: a no-op
        finally:
            await asyncio.to_thread(t.close)

    asyncio.run(scenario())


def _ipip_available() -> bool:
    return subprocess.run(["modinfo", "ipip"], capture_output=True).returncode == 0


def test_ipip_on_this_kernel(netns):
    if _ipip_available():
        _ipip_device_configured_and_stripped(_host(netns))
    else:
        _ipip_fails_naming_the_missing_module(_host(netns))


def _ipip_device_configured_and_stripped(ns: Netns) -> None:
    async def scenario() -> None:
        t = NetlinkTunnels(ns.name)
        try:
            await t.apply_ipip(IpipDevice(address=IPAddress("10.244.0.1"), mtu=1480))
            (link,) = json.loads(ns.ip("-j", "link", "show", "dev", "tunl0"))
            assert link["mtu"] == 1480 and "UP" in link["flags"], link
            assert "10.244.0.1/32" in ns.ip("addr", "show", "dev", "tunl0")
            await t.apply_ipip(None)
            assert "10.244.0.1" not in ns.ip("addr", "show", "dev", "tunl0")
        finally:
            await asyncio.to_thread(t.close)

    asyncio.run(scenario())


def _ipip_fails_naming_the_missing_module(ns: Netns) -> None:
    asked: list[str] = []

    def load(name: str) -> str | None:
        asked.append(name)
        return subprocess.run(["modprobe", name], capture_output=True, text=True).stderr.strip()

    async def scenario() -> None:
        t = NetlinkTunnels(ns.name, load_module=load)
        try:
            with pytest.raises(TunnelError) as err:
                await t.apply_ipip(IpipDevice(address=IPAddress("10.244.0.1"), mtu=1480))
            assert "kernel module 'ipip'" in str(err.value)
            assert "not found" in str(err.value)  # modprobe's own reason is passed on
            # turning IPIP off when it never existed is fine
            await t.apply_ipip(None)
        finally:
            await asyncio.to_thread(t.close)

    asyncio.run(scenario())
    assert asked == ["ipip"]
    assert "tunl0" not in ns.ip("link", "show")


def test_vxlan_over_ipv6_is_its_own_device_beside_the_ipv4_one(netns):
    ns = _host(netns)
    ns.ip("addr", "add", "2001:db8::1/64", "dev", "eth0", "nodad")
    vx6 = _vx(name="vxlan-v6.mesh", local=IPAddress("2001:db8::1"), address=None, mtu=1430)

    async def scenario() -> None:
        t = NetlinkTunnels(ns.name)
        try:
            await t.apply_vxlan(_vx())
            await t.apply_vxlan6(vx6)
            info = _link(ns, "vxlan-v6.mesh")["linkinfo"]["info_data"]
            assert (info["id"], info["local6"]) == (4096, "2001:db8::1")
            assert _link(ns, "vxlan.mesh")["linkinfo"]["info_data"]["local"] == "192.0.2.1"
            links = await t._run(t.observe)
            assert plan_tunnel_changes(vx6, links, kind="vxlan6") == ()
            # one family off: the other family's device stays
            await t.apply_vxlan(None)
            names = {x["ifname"] for x in json.loads(ns.ip("-j", "link", "show"))}
            assert "vxlan.mesh" not in names and "vxlan-v6.mesh" in names
            await t.apply_vxlan6(None)
            names = {x["ifname"] for x in json.loads(ns.ip("-j", "link", "show"))}
            assert "vxlan-v6.mesh" not in names
        finally:
            await asyncio.to_thread(t.close)

    asyncio.run(scenario())
