"""Pod-to-pod over real IPIP, run INSIDE the QEMU guest by test_ipip_qemu.py.

Two hosts on different subnets joined by a router (all network namespaces of
the guest), each with one pod (namespace + veth, Calico style: a /32 on the
pod, a default route via 169.254.1.1 answered by proxy ARP). On each host
felix_lite does the real work: the planner gets the host's interfaces (read
by ``NetlinkHost``, as the node reads them), the pool 10.244.0.0/16 with ``ipipMode:
CrossSubnet``, the host's block and tunnel address and the best route to the
other host's block; the reconciler, through ``NetlinkTunnels`` and
``NetlinkRouteTable`` opened in the host's namespace, configures tunl0 (the
tunnel /32, MTU = underlay - 20) and installs ``via <remote node> dev tunl0
onlink`` plus a blackhole for the host's own block. The router knows nothing
about pod addresses, so a pod-to-pod reply can only come back encapsulated;
tunl0's counters on both hosts must show it. Finally IPIP is turned off
again: felix_lite must strip tunl0 and drop the tunnel route.

``--programmer ip`` does the same programming with ip(8) instead: the
control that tells a harness or kernel problem from a felix_lite one.

Prints one ``IPIP-CHECK {json}`` line and exits non-zero on any failure.
Run as ``python -m tests.integration.ipip_guest_check`` from the checkout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

from lab.netns import Netns, NetnsFactory, veth

T0 = time.monotonic()
PROTO = 213  # felix_lite.model.DEFAULT_PROTO (imported late in the guest)
UNDERLAY_MTU = 1500
TUNNEL_MTU = UNDERLAY_MTU - 20


def log(msg: str) -> None:
    print(f"[{time.monotonic() - T0:6.2f}s] {msg}", flush=True)


@dataclass(frozen=True)
class Node:
    label: str
    ip: str  # underlay address
    prefixlen: int
    gateway: str  # the router's address on this subnet
    block: str  # this node's pod block
    tunnel_ip: str  # tunl0 address (from the block)
    pod_ip: str


A = Node("a", "192.0.2.10", 24, "192.0.2.1", "10.244.1.0/26", "10.244.1.1", "10.244.1.2")
B = Node("b", "198.51.100.10", 24, "198.51.100.1", "10.244.2.0/26", "10.244.2.1", "10.244.2.2")


def build(nsf: NetnsFactory) -> tuple[Netns, dict[str, Netns], dict[str, Netns]]:
    router = nsf.new("router")
    router.sh("sysctl -qw net.ipv4.ip_forward=1")
    hosts: dict[str, Netns] = {}
    pods: dict[str, Netns] = {}
    for n in (A, B):
        host = nsf.new(f"host{n.label}")
        hosts[n.label] = host
        veth(host, "eth0", router, f"r{n.label}")
        router.ip("addr", "add", f"{n.gateway}/{n.prefixlen}", "dev", f"r{n.label}")
        host.ip("addr", "add", f"{n.ip}/{n.prefixlen}", "dev", "eth0")
        host.ip("route", "add", "default", "via", n.gateway)
        host.sh("sysctl -qw net.ipv4.ip_forward=1")

        pod = nsf.new(f"pod{n.label}")
        pods[n.label] = pod
        veth(host, "cali0", pod, "eth0")
        # Calico's settings: answer the pod's ARP for 169.254.1.1, at once.
        host.sh("sysctl -qw net.ipv4.conf.cali0.proxy_arp=1 net.ipv4.neigh.cali0.proxy_delay=0")
        host.ip("route", "add", f"{n.pod_ip}/32", "dev", "cali0", "scope", "link")
        pod.ip("link", "set", "eth0", "mtu", str(TUNNEL_MTU))
        pod.ip("addr", "add", f"{n.pod_ip}/32", "dev", "eth0")
        pod.ip("route", "add", "169.254.1.1", "dev", "eth0", "scope", "link")
        pod.ip("route", "add", "default", "via", "169.254.1.1", "dev", "eth0")
    return router, hosts, pods


def program_with_ip(host: Netns, me: Node, peer: Node) -> None:
    """What felix_lite must do on one node, spelled with ip(8)."""
    host.ip("addr", "add", f"{me.tunnel_ip}/32", "dev", "tunl0")
    host.ip("link", "set", "tunl0", "mtu", str(TUNNEL_MTU), "up")
    host.ip(
        "route", "add", peer.block, "via", peer.ip, "dev", "tunl0", "onlink",
        "proto", str(PROTO), "mtu", str(TUNNEL_MTU),
    )  # fmt: skip
    host.ip("route", "add", "blackhole", me.block, "proto", str(PROTO))


def tunl0_counters(host: Netns) -> dict[str, int]:
    (link,) = json.loads(host.ip("-j", "-s", "link", "show", "dev", "tunl0"))
    s = link["stats64"]
    return {
        "rx_packets": s["rx"]["packets"],
        "tx_packets": s["tx"]["packets"],
        "rx_errors": s["rx"]["errors"],
        "tx_errors": s["tx"]["errors"],
    }


def route_of(host: Netns, prefix: str) -> dict[str, object]:
    # -N: numbers, whatever names /etc/iproute2 gives protocols and types.
    routes = json.loads(host.ip("-N", "-j", "-d", "route", "show", "exact", prefix))
    if len(routes) != 1:
        raise AssertionError(f"expected one route for {prefix}, got {routes}")
    route: dict[str, object] = routes[0]
    return route


def check(router: Netns, hosts: dict[str, Netns], pods: dict[str, Netns]) -> dict[str, object]:
    failures: list[str] = []
    result: dict[str, object] = {}

    for me, peer in ((A, B), (B, A)):
        host = hosts[me.label]
        r = route_of(host, peer.block)
        if not (
            r.get("gateway") == peer.ip
            and r.get("dev") == "tunl0"
            and "onlink" in (r.get("flags") or [])  # type: ignore[operator]
            and str(r.get("protocol")) == str(PROTO)
            and r.get("metrics") == [{"mtu": TUNNEL_MTU}]
        ):
            failures.append(f"host {me.label}: route to {peer.block} is {r}")
        bh = route_of(host, me.block)
        if bh.get("type") not in ("blackhole", "6"):
            failures.append(f"host {me.label}: own block route is {bh}")
        (link,) = json.loads(host.ip("-j", "-d", "link", "show", "dev", "tunl0"))
        addrs = json.loads(host.ip("-j", "addr", "show", "dev", "tunl0"))[0]["addr_info"]
        tun_addrs = [f"{a['local']}/{a['prefixlen']}" for a in addrs]
        if link["mtu"] != TUNNEL_MTU or "UP" not in link["flags"]:
            failures.append(f"host {me.label}: tunl0 is {link}")
        if tun_addrs != [f"{me.tunnel_ip}/32"]:
            failures.append(f"host {me.label}: tunl0 addresses {tun_addrs}")
        result[f"route_{me.label}"] = r

    # The router must not be able to carry pod traffic by itself.
    if "10.244" in router.ip("route", "show"):
        failures.append(f"router knows pod routes: {router.ip('route', 'show')}")

    before = {k: tunl0_counters(h) for k, h in hosts.items()}
    pings = 5
    out_small = pods["a"].sh(f"ping -c {pings} -i 0.2 -W 3 {B.pod_ip}", check=False)
    # The largest packet that fits: pod MTU 1480 = 1452 bytes of payload + 28.
    out_big = pods["b"].sh(f"ping -c 2 -W 3 -M do -s {TUNNEL_MTU - 28} {A.pod_ip}", check=False)
    after = {k: tunl0_counters(h) for k, h in hosts.items()}
    result["ping_small"] = out_small.strip().splitlines()[-2:]
    result["ping_big"] = out_big.strip().splitlines()[-2:]
    result["tunl0_before"] = before
    result["tunl0_after"] = after
    if f" {pings} received" not in out_small:
        failures.append(f"pod a -> pod b over IPIP failed:\n{out_small}")
    if " 2 received" not in out_big:
        failures.append(f"full-MTU pod b -> pod a over IPIP failed:\n{out_big}")
    total = pings + 2
    for k in ("a", "b"):
        for d in ("tx_packets", "rx_packets"):
            if after[k][d] - before[k][d] < total:
                failures.append(
                    f"host {k} tunl0 {d} grew by {after[k][d] - before[k][d]} < {total}"
                )
    result["failures"] = failures
    return result


async def program_with_felix(hosts: dict[str, Netns]) -> dict[str, object]:
    """Plan and apply each host's kernel state with felix_lite, check that a
    second full pass changes nothing, and read the owned routes back."""
    from netaddr import IPAddress, IPNetwork

    from felix_lite.inputs import BestRoute, EncapMode, PlanInput, Pool
    from felix_lite.model import DEFAULT_PROTO, MAIN_TABLE, IpipDevice, KernelRoute
    from felix_lite.netlink_table import NetlinkRouteTable
    from felix_lite.planner import plan_kernel
    from felix_lite.reconciler import Reconciler
    from felix_lite.tunnels import NetlinkTunnels
    from tests.harness.host_interfaces import read_interfaces

    log("felix_lite imported")
    assert DEFAULT_PROTO == PROTO
    out: dict[str, object] = {}
    for me, peer in ((A, B), (B, A)):
        ns = hosts[me.label].name
        interfaces = await read_interfaces(ns)
        result = plan_kernel(
            PlanInput(
                interfaces=tuple(interfaces),
                pools=(Pool(IPNetwork("10.244.0.0/16"), ipip_mode=EncapMode.CROSS_SUBNET),),
                own_blocks=(IPNetwork(me.block),),
                routes=(BestRoute(IPNetwork(peer.block), (IPAddress(peer.ip),)),),
                node_ip=IPAddress(me.ip),
                ipip_tunnel_address=IPAddress(me.tunnel_ip),
            )
        )
        if result.unroutable:
            raise AssertionError(f"host {me.label}: planner left {result.unroutable}")
        want_dev = IpipDevice(address=IPAddress(me.tunnel_ip), mtu=TUNNEL_MTU)
        if result.state.ipip != want_dev:
            raise AssertionError(f"host {me.label}: planned tunl0 {result.state.ipip}")

        table = NetlinkRouteTable(ns)
        tunnels = NetlinkTunnels(ns)
        try:
            rec = Reconciler(table, tunnels=tunnels)
            rec.set_desired(result.state)
            first = await rec.sync_once(full=True)
            again = await rec.sync_once(full=True)
            owned: list[KernelRoute] = [r async for r in table.dump_owned(PROTO, MAIN_TABLE)]
        finally:
            table.close()
            tunnels.close()
        if first.failures or rec.retries:
            raise AssertionError(f"host {me.label}: first pass {first}, retries {rec.retries}")
        if again.changes or again.failures:
            raise AssertionError(f"host {me.label}: second full pass was not a no-op: {again}")
        if {r.key for r in owned} != {r.key for r in result.state.routes}:
            raise AssertionError(f"host {me.label}: owned {owned} != planned {result.state}")
        out[f"felix_{me.label}"] = {
            "first_pass": _report(first),
            "planned": sorted(_route(r) for r in result.state.routes),
            "read_back": sorted(_route(r) for r in owned),
        }
        log(f"host {me.label} programmed by felix_lite")
    return out


async def turn_ipip_off(host: Netns, me: Node) -> list[str]:
    """The pool goes to ipipMode Never: felix_lite strips tunl0 (the kernel's
    fallback device cannot be deleted) and drops the tunnel route."""
    from netaddr import IPNetwork

    from felix_lite.model import KernelState
    from felix_lite.netlink_table import NetlinkRouteTable
    from felix_lite.planner import plan_blackholes
    from felix_lite.reconciler import Reconciler
    from felix_lite.tunnels import OWNER_ALIAS, NetlinkTunnels

    table = NetlinkRouteTable(host.name)
    tunnels = NetlinkTunnels(host.name)
    try:
        rec = Reconciler(table, tunnels=tunnels)
        state = KernelState(routes=frozenset(plan_blackholes([IPNetwork(me.block)], 254)))
        rec.set_desired(state)
        report = await rec.sync_once(full=True)
    finally:
        table.close()
        tunnels.close()
    failures = []
    if report.failures:
        failures.append(f"host {me.label}: turning IPIP off failed: {report}")
    (link,) = json.loads(host.ip("-j", "-d", "link", "show", "dev", "tunl0"))
    addrs = json.loads(host.ip("-j", "addr", "show", "dev", "tunl0"))[0]["addr_info"]
    if "UP" in link["flags"] or addrs or link.get("ifalias") == OWNER_ALIAS:
        failures.append(f"host {me.label}: tunl0 not stripped: {link} {addrs}")
    left = host.ip("route", "show", "dev", "tunl0")
    if left.strip():
        failures.append(f"host {me.label}: routes left on tunl0: {left}")
    if route_of(host, me.block).get("type") not in ("blackhole", "6"):
        failures.append(f"host {me.label}: own blackhole gone after turning IPIP off")
    return failures


def _report(r: Any) -> dict[str, int]:
    return {"changes": r.changes, "device_ops": r.device_ops, "failures": r.failures}


def _route(r: Any) -> str:
    hops = ",".join(f"{h.gateway}@{h.ifname}{'/onlink' if h.onlink else ''}" for h in r.nexthops)
    return f"{r.dst} {r.kind.value} {hops} mtu={r.mtu}"


def main() -> int:
    if os.environ.get("MESHROUTE_IN_QEMU_GUEST") != "1":
        print("refusing to run outside the QEMU guest (see test_ipip_qemu.py)", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser()
    parser.add_argument("--programmer", choices=("felix", "ip"), default="felix")
    args = parser.parse_args()
    nsf = NetnsFactory()
    result: dict[str, object] = {"programmer": args.programmer}
    try:
        router, hosts, pods = build(nsf)
        log("topology built")
        if args.programmer == "ip":
            program_with_ip(hosts["a"], A, B)
            program_with_ip(hosts["b"], B, A)
        else:
            result.update(asyncio.run(program_with_felix(hosts)))
        log(f"tunl0 and routes programmed ({args.programmer})")
        result.update(check(router, hosts, pods))
        log("pod-to-pod over IPIP checked")
        if args.programmer == "felix":
            off = asyncio.run(turn_ipip_off(hosts["a"], A))
            result["failures"] = [*result["failures"], *off]  # type: ignore[misc]
            log("IPIP turned off on host a")
    finally:
        nsf.cleanup()
    result["elapsed_s"] = round(time.monotonic() - T0, 2)
    print("IPIP-CHECK " + json.dumps(result, sort_keys=True, default=str), flush=True)
    failures = result["failures"]
    assert isinstance(failures, list)
    for f in failures:
        print(f"FAIL: {f}", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
