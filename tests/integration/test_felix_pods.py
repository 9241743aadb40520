"""Three hosts with pods, routes from the planner, installed by the
reconciler through the real netlink adapter; pods ping each other.

    hostA 192.0.2.10 --+
                       br0 (192.0.2.1) [rtr] 198.51.100.1 --- hostC 198.51.100.10
    hostB 192.0.2.20 --+

Pool 10.244.0.0/16 with ``vxlanMode: CrossSubnet``: A<->B direct
(``via 192.0.2.x dev eth0``), anything to or from C through VXLAN. Each host
has two pods wired the way Calico does it (veth ``caliXX``, a /32 route to
the pod on the host, ``default via 169.254.1.1`` in the pod answered by
proxy ARP). One reconciler per host runs in this process, each with its own
adapters opened inside the host's namespace; the VXLAN device (VNI 4096,
port 4789, the planned MAC and VTEP address) is created by the tunnel adapter.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import subprocess
from dataclasses import dataclass, field
from typing import Any

import pytest
from netaddr import IPAddress, IPNetwork

from felix_lite.inputs import (
    BestRoute,
    EncapMode,
    PlanInput,
    Pool,
    RemoteVtep,
    VxlanParams,
)
from felix_lite.model import DEFAULT_PROTO, KernelState
from felix_lite.netlink_table import NetlinkRouteTable
from felix_lite.planner import plan_kernel
from felix_lite.reconciler import Reconciler
from felix_lite.tunnels import NetlinkTunnels
from lab.netns import Netns, NetnsFactory, veth
from tests.harness.host_interfaces import read_interfaces

pytestmark = [pytest.mark.netns, pytest.mark.slow]

Popen = subprocess.Popen[bytes]

POOL = IPNetwork("10.244.0.0/16")
VX = "vxlan.mesh"


@dataclass
class Host:
    label: str
    ns: Netns
    ip: IPAddress
    block: IPNetwork
    mac: str
    pods: list[tuple[Netns, IPAddress]] = field(default_factory=list)

    @property
    def vtep(self) -> IPAddress:
        return IPAddress(self.block.first)


@dataclass
class Felix:
    """One host's running reconciler and its adapter."""

    table: NetlinkRouteTable
    tunnels: NetlinkTunnels
    rec: Reconciler
    task: asyncio.Task[None]

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        await asyncio.to_thread(self.table.close)
        await asyncio.to_thread(self.tunnels.close)


def build(netns: NetnsFactory) -> tuple[Netns, list[Host]]:
    rtr = netns.new("rtr")
    rtr.sh("sysctl -qw net.ipv4.ip_forward=1")
    rtr.ip("link", "add", "br0", "type", "bridge")
    rtr.ip("addr", "add", "192.0.2.1/24", "dev", "br0")
    rtr.ip("link", "set", "br0", "up")
    specs = [
        ("a", "192.0.2.10", "10.244.1.0/26", "66:77:88:00:00:0a"),
        ("b", "192.0.2.20", "10.244.2.0/26", "66:77:88:00:00:0b"),
        ("c", "198.51.100.10", "10.244.3.0/26", "66:77:88:00:00:0c"),
    ]
    hosts = []
    for label, ip, block, mac in specs:
        h = Host(label, netns.new(f"host{label}"), IPAddress(ip), IPNetwork(block), mac)
        h.ns.sh("sysctl -qw net.ipv4.ip_forward=1")
        veth(rtr, f"v{label}", h.ns, "eth0")
        if label == "c":
            rtr.ip("addr", "add", "198.51.100.1/24", "dev", "vc")
            h.ns.ip("addr", "add", f"{ip}/24", "dev", "eth0")
            h.ns.ip("route", "add", "default", "via", "198.51.100.1")
        else:
            rtr.ip("link", "set", f"v{label}", "master", "br0")
            h.ns.ip("addr", "add", f"{ip}/24", "dev", "eth0")
            h.ns.ip("route", "add", "default", "via", "192.0.2.1")
        for i in (2, 3):
            pod = netns.new(f"pod{label}{i}")
            pod_ip = IPAddress(h.block.first + i)
            host_if = f"cali{label}{i}"
            veth(h.ns, host_if, pod, "eth0")
            h.ns.sh(f"sysctl -qw net.ipv4.conf.{host_if}.proxy_arp=1")
            h.ns.ip("route", "add", f"{pod_ip}/32", "dev", host_if)  # the CNI plugin's route
            pod.ip("addr", "add", f"{pod_ip}/32", "dev", "eth0")
            pod.ip("route", "add", "169.254.1.1", "dev", "eth0", "scope", "link")
            pod.ip("route", "add", "default", "via", "169.254.1.1", "dev", "eth0")
            h.pods.append((pod, pod_ip))
        hosts.append(h)
    return rtr, hosts


async def plan_for(h: Host, hosts: list[Host]) -> KernelState:
    interfaces = await read_interfaces(h.ns.name)
    others = [o for o in hosts if o is not h]
    result = plan_kernel(
        PlanInput(
            interfaces=tuple(interfaces),
            pools=(Pool(POOL, vxlan_mode=EncapMode.CROSS_SUBNET),),
            own_blocks=(h.block,),
            routes=tuple(BestRoute(o.block, (o.ip,)) for o in others),
            node_ip=h.ip,
            vxlan_tunnel_address=h.vtep,
            vteps=tuple(RemoteVtep(o.ip, o.vtep, o.mac) for o in others),
            vxlan=VxlanParams(mac=h.mac),
        )
    )
    assert result.unroutable == ()
    return result.state


async def start(h: Host, desired: KernelState) -> Felix:
    table = await asyncio.to_thread(NetlinkRouteTable, h.ns.name)
    tunnels = await asyncio.to_thread(NetlinkTunnels, h.ns.name)
    rec = Reconciler(table, tunnels=tunnels, resync_interval=30.0)
    rec.set_desired(desired)
    task = asyncio.create_task(rec.run())
    await asyncio.wait_for(rec.wait_converged(), 10)
    return Felix(table, tunnels, rec, task)


def routes(h: Host) -> dict[str, dict[str, Any]]:
    out = json.loads(h.ns.ip("-N", "-d", "-j", "route", "show") or "[]")
    return {r["dst"]: r for r in out}


def ping(
    src: Netns, dst: IPAddress, count: int = 1, interval: float = 0.2
) -> subprocess.Popen[bytes]:
    return src.popen(
        ["ping", "-n", "-q", "-c", str(count), "-i", str(interval), "-W", "2", str(dst)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def received(p: Popen, timeout: float) -> tuple[int, int, str]:
    out = p.communicate(timeout=timeout)[0].decode()
    m = re.search(r"(\d+) packets transmitted, (\d+) (?:packets )?received", out)
    assert m, out
    return int(m.group(1)), int(m.group(2)), out


def test_pods_ping_direct_and_vxlan_and_survive_a_restart(netns: NetnsFactory) -> None:
    _rtr, hosts = build(netns)
    a, b, c = hosts
    # Left behind by a "previous run" on A (ours: swept), and someone else's
    # route (not ours: kept).
    a.ns.ip("route", "add", "10.244.99.0/26", "via", "192.0.2.20", "proto", str(DEFAULT_PROTO))
    a.ns.ip("route", "add", "203.0.113.0/24", "via", "192.0.2.1", "proto", "static")

    async def go() -> None:
        desired = {h.label: await plan_for(h, hosts) for h in hosts}
        felixes = {h.label: await start(h, desired[h.label]) for h in hosts}
        try:
            ra = routes(a)
            assert ra["10.244.2.0/26"]["gateway"] == "192.0.2.20"
            assert ra["10.244.2.0/26"]["dev"] == "eth0"
            assert ra["10.244.3.0/26"]["dev"] == VX and "onlink" in ra["10.244.3.0/26"]["flags"]
            assert ra["10.244.1.0/26"]["type"] == "6"  # RTN_BLACKHOLE (ip -N is numeric)
            assert "10.244.99.0/26" not in ra
            assert ra["203.0.113.0/24"]["protocol"] == "4"

            # Every pod reaches every pod on the other hosts.
            pings = [
                (src_ip, dst_ip, ping(src, dst_ip))
                for h in hosts
                for src, src_ip in h.pods
                for o in hosts
                if o is not h
                for _, dst_ip in o.pods
            ]
            for src_ip, dst_ip, p in pings:
                sent, got, out = await asyncio.to_thread(received, p, 10)
                assert got == sent == 1, f"{src_ip} -> {dst_ip}: {out}"
            vx_tx = json.loads(a.ns.ip("-s", "-j", "link", "show", VX))[0]["stats64"]["tx"]
            assert vx_tx["packets"] >= 4  # A's pods reached C's pods through VXLAN

            # Restart A's programmer while its pods ping B (direct) and C (VXLAN).
            a.ns.ip("route", "add", "10.244.98.0/26", "via", "192.0.2.20", "proto",
                    str(DEFAULT_PROTO))  # fmt: skip
            (pod_a, _), (_, ip_b) = a.pods[0], b.pods[0]
            ip_c = c.pods[1][1]
            long_pings = [ping(pod_a, ip_b, 60, 0.05), ping(pod_a, ip_c, 60, 0.05)]
            await asyncio.sleep(1.0)
            await felixes["a"].stop()
            felixes["a"] = await start(a, desired["a"])
            totals = felixes["a"].rec.totals
            assert (totals["route_add"], totals["route_replace"]) == (0, 0)
            assert totals["route_delete"] == 1  # the stale route, nothing else
            assert (totals["neighbor"], totals["fdb"]) == (0, 0)
            for p in long_pings:
                sent, got, out = await asyncio.to_thread(received, p, 30)
                assert sent == got == 60, out

            ra = routes(a)
            assert "10.244.98.0/26" not in ra
            assert ra["203.0.113.0/24"]["protocol"] == "4"
            for _, pod_ip in a.pods:
                assert ra[str(pod_ip)]["dev"].startswith("cali")
        finally:
            for f in felixes.values():
                await f.stop()

    asyncio.run(go())
