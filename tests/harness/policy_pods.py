"""Routed pods made by hand for policy tests: one namespace is the node, each
pod is a namespace behind its own veth (a /32 and /128 route on the node,
``default via 169.254.1.1`` / ``fe80::1`` in the pod, answered by the node (169.254.1.1 on its lo)
and the host side's link-local address), as Calico wires them.

Servers and probes run in this process: sockets are opened inside a pod's
namespace by a thread that entered it, so a probe costs no process start.
A TCP listener needs no accept loop (the kernel completes the handshake);
UDP servers echo from one thread.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import selectors
import socket
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from netaddr import IPAddress, IPNetwork

from felix_lite.policy_inputs import Endpoint, NamedPort
from lab.netns import Netns, NetnsFactory, call_in_netns

PROBE_TIMEOUT_S = 1.5
# Every probe gets a source port of its own: a reused 5-tuple would ride on
# the conntrack entry an earlier, allowed, probe left (UDP keeps it 30 s),
# and pass whatever the policy now says, as it should in production.
_source_ports = itertools.cycle(range(20000, 60000))
_source_lock = threading.Lock()


@dataclass
class Pod:
    name: str
    namespace: str
    ns: Netns
    iface: str
    ip4: IPAddress
    ip6: IPAddress | None  # None: an IPv4-only pod
    labels: dict[str, str] = field(default_factory=dict)
    ports: tuple[NamedPort, ...] = ()

    @property
    def addresses(self) -> tuple[IPAddress, ...]:
        return (self.ip4,) if self.ip6 is None else (self.ip4, self.ip6)

    def endpoint(self, node: str = "n1") -> Endpoint:
        return Endpoint(
            node,
            self.namespace,
            self.name,
            self.iface,
            tuple(IPNetwork(f"{a}/{32 if a.version == 4 else 128}") for a in self.addresses),
            tuple(sorted(self.labels.items())),
            self.ports,
        )


class PodNode:
    """A node namespace with routed pods."""

    def __init__(self, factory: NetnsFactory, label: str = "node") -> None:
        self.factory = factory
        self.ns = factory.new(label)
        self.ns.sh(
            "sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1"
            " net.ipv4.conf.all.rp_filter=0"
            # the pods' gateway is the node's own address: ARP for it is answered
            # on every veth (arp_ignore 0) without a route to proxy for
            " && ip addr add 169.254.1.1/32 dev lo"
        )
        self.pods: list[Pod] = []

    def add_pod(self, name: str, namespace: str, index: int, **labels: str) -> Pod:
        ip4 = IPAddress(f"10.244.0.{index}")
        ip6 = IPAddress(f"fd00:244::{index:x}")
        host_if = f"mrp{index}"
        ns = self.factory.new(f"p{index}")
        self.ns.ip("link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", ns.name)
        self.ns.sh(
            f"ip link set {host_if} up && ip -6 addr add fe80::1/64 dev {host_if} nodad"
            f" && ip route add {ip4}/32 dev {host_if} && ip -6 route add {ip6}/128 dev {host_if}"
        )
        ns.sh(
            f"ip link set eth0 up && ip addr add {ip4}/32 dev eth0"
            f" && ip -6 addr add {ip6}/128 dev eth0 nodad"
            " && ip route add 169.254.1.1 dev eth0 && ip route add default via 169.254.1.1 dev eth0"
            " && ip -6 route add default via fe80::1 dev eth0"
        )
        pod = Pod(name, namespace, ns, host_if, ip4, ip6, dict(labels))
        self.pods.append(pod)
        return pod


class Servers:
    """TCP listeners and UDP echo servers on given ports in every pod."""

    def __init__(self, pods: Iterable[Pod], tcp: Sequence[int], udp: Sequence[int]) -> None:
        self.socks: list[socket.socket] = []
        self.sel = selectors.DefaultSelector()
        for pod in pods:
            for ip in pod.addresses:
                fam, addr = (socket.AF_INET if ip.version == 4 else socket.AF_INET6), str(ip)
                for port in tcp:
                    s = call_in_netns(
                        pod.ns.name, lambda f=fam: socket.socket(f, socket.SOCK_STREAM)
                    )
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    s.bind((addr, port))
                    s.listen(512)
                    self.socks.append(s)
                for port in udp:
                    s = call_in_netns(
                        pod.ns.name, lambda f=fam: socket.socket(f, socket.SOCK_DGRAM)
                    )
                    s.bind((addr, port))
                    s.setblocking(False)
                    self.sel.register(s, selectors.EVENT_READ)
                    self.socks.append(s)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._echo, daemon=True)
        self._thread.start()

    def _echo(self) -> None:
        while not self._stop.is_set():
            for key, _ in self.sel.select(0.1):
                s = key.fileobj
                assert isinstance(s, socket.socket)
                with contextlib.suppress(OSError):
                    data, peer = s.recvfrom(2048)
                    s.sendto(data, peer)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        for s in self.socks:
            s.close()
        self.sel.close()


def probe(
    src: Pod, dst: IPAddress, proto: str, port: int, timeout: float = PROBE_TIMEOUT_S
) -> bool:
    """Whether a connection (TCP) or an echo (UDP) from ``src`` to
    ``dst:port`` gets through."""
    fam = socket.AF_INET if dst.version == 4 else socket.AF_INET6
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    s = call_in_netns(src.ns.name, lambda: socket.socket(fam, kind))
    s.settimeout(timeout)
    try:
        while True:
            with _source_lock:
                sport = next(_source_ports)
            try:
                s.bind(("::" if fam == socket.AF_INET6 else "0.0.0.0", sport))
                break
            except OSError as e:
                if e.errno != errno.EADDRINUSE:
                    raise
        if proto == "tcp":
            return s.connect_ex((str(dst), port)) == 0
        s.sendto(b"probe", (str(dst), port))
        try:
            s.recvfrom(64)
        except OSError as e:
            if isinstance(e, TimeoutError) or e.errno in (errno.ECONNREFUSED, errno.EAGAIN):
                return False
            raise
        return True
    finally:
        s.close()


Probe = tuple[Pod, IPAddress, str, int]


def probe_all(probes: Sequence[Probe]) -> list[bool]:
    """Every probe at once (a 9x8 x 4 table is 288 threads): a table with
    denied cells costs one timeout, not one per batch of denied probes."""
    if not probes:
        return []
    with ThreadPoolExecutor(max_workers=min(512, len(probes))) as pool:
        return list(pool.map(lambda p: probe(*p), probes))
