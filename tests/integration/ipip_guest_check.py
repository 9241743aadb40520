"""Pod-to-pod over real IPIP, run INSIDE the QEMU guest by test_ipip_qemu.py.

Two hosts on different subnets joined by a router (all network namespaces of
the guest), each with one pod (namespace + veth, Calico style: a /32 on the
pod, a default route via 169.254.1.1 answered by proxy ARP). Each host gets
tunl0 (its tunnel /32, MTU = underlay - 20), the IPIP route to the other
host's block (``via <remote node> dev tunl0 onlink``) and a blackhole for its
own block. The router knows nothing about pod addresses, so a pod-to-pod
reply can only come back encapsulated.

Prints one ``IPIP-CHECK {json}`` line and exits non-zero on any failure.
Run as ``python -m tests.integration.ipip_guest_check`` from the checkout.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass

from tests.harness.netns import Netns, NetnsFactory, veth

T0 = time.monotonic()
PROTO = 80
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
    routes = json.loads(host.ip("-j", "-d", "route", "show", "exact", prefix))
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
            and str(r.get("protocol")) in (str(PROTO), "felix")
        ):
            failures.append(f"host {me.label}: route to {peer.block} is {r}")
        bh = route_of(host, me.block)
        if bh.get("type") != "blackhole":
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


def main() -> int:
    if os.environ.get("MESHROUTE_IN_QEMU_GUEST") != "1":
        print("refusing to run outside the QEMU guest (see test_ipip_qemu.py)", file=sys.stderr)
        return 2
    nsf = NetnsFactory()
    try:
        router, hosts, pods = build(nsf)
        log("topology built")
        program_with_ip(hosts["a"], A, B)
        program_with_ip(hosts["b"], B, A)
        log("tunl0 and routes programmed with ip(8)")
        result = check(router, hosts, pods)
        log("checked")
    finally:
        nsf.cleanup()
    result["programmer"] = "ip"
    result["elapsed_s"] = round(time.monotonic() - T0, 2)
    print("IPIP-CHECK " + json.dumps(result, sort_keys=True), flush=True)
    failures = result["failures"]
    assert isinstance(failures, list)
    for f in failures:
        print(f"FAIL: {f}", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
