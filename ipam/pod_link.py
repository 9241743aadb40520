"""Routed pod interfaces, in Calico's style: each pod hangs off its node by
its own veth pair, with no bridge.

- The host end is named ``mr`` + 12 hex digits of the pod's handle
  (deterministic, so the endpoint record names it before it exists) and
  carries no address: the node routes each pod address (/32, /128) to it.
- The host end's MAC is ``ee:ee:ee:ee:ee:ee`` and it answers ARP for any
  address (proxy ARP), so the pod's gateway, the link-local ``169.254.1.1``,
  needs no address anywhere. The pod also gets a permanent neighbour entry
  for it, so it does not depend on the node having a route for
  ``169.254.1.1`` (proxy ARP answers only for addresses the node routes).
- IPv6: the pod's default route is via ``fe80::ecee:eeff:feee:eeee``, the
  host end's own link-local address (derived from that MAC), with a
  permanent neighbour entry; DAD is off on both ends so the pod is
  reachable at once.

Owns the ``mr…`` veths of the node's network namespace: nothing else of the
kernel. Blocking (netlink, sysctl files): the IPAM service runs these
functions on its own worker thread, which enters the node's and the pod's
network namespaces with ``setns`` (a thread's own namespace, restored
after every call) instead of forking a helper per namespace.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from netaddr import IPAddress

from rtnetlink import attrs as na
from rtnetlink import links as nl
from rtnetlink.client import RtnlClient
from rtnetlink.routes import WireRoute
from rtnetlink.sockets import netns_path, setns

HOST_IFACE_PREFIX = "mr"
HOST_MAC = "ee:ee:ee:ee:ee:ee"
GATEWAY_V4 = "169.254.1.1"
GATEWAY_V6 = "fe80::ecee:eeff:feee:eeee"
DEFAULT_MTU = 1500
# The pod's routes are the administrator's kind ("proto static"), as ``ip
# route`` makes them: never felix_lite's protocol, whose routes it removes.
RTPROT_STATIC = 4


class PodLinkError(Exception):
    """Setting up, checking or removing a pod's veth failed; says why."""


def host_iface_name(handle: str) -> str:
    """The host end of a pod's veth: 14 characters (IFNAMSIZ allows 15)."""
    return HOST_IFACE_PREFIX + hashlib.sha256(handle.encode()).hexdigest()[:12]


def is_host_iface_name(name: str) -> bool:
    tail = name[len(HOST_IFACE_PREFIX) :]
    return (
        name.startswith(HOST_IFACE_PREFIX)
        and len(tail) == 12
        and all(c in "0123456789abcdef" for c in tail)
    )


@dataclass(frozen=True)
class PodLink:
    host_iface: str
    ifname: str  # inside the pod
    netns: str  # the pod's network namespace (a path, as CNI_NETNS)
    ips: tuple[IPAddress, ...]
    mtu: int = DEFAULT_MTU


@dataclass(frozen=True)
class LinkInfo:
    host_mac: str
    pod_mac: str


@contextlib.contextmanager
def _entered(netns: str | None) -> Iterator[None]:
    """This thread in ``netns`` (a name or path; None: stay) for the block."""
    if netns is None:
        yield
        return
    back = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            fd = os.open(netns_path(netns), os.O_RDONLY | os.O_CLOEXEC)
            try:
                setns(fd, netns)
            finally:
                os.close(fd)
        except OSError as e:
            raise PodLinkError(f"cannot enter network namespace {netns}: {e}") from e
        try:
            yield
        finally:
            setns(back, "the thread's own")
    finally:
        os.close(back)


def _sysctl(path: str, value: str) -> None:
    with open(f"/proc/sys/{path}", "w") as f:
        f.write(value)


def _mac(rtnl: RtnlClient, name: str) -> str:
    link = rtnl.link(name)
    if link is None or link.mac is None:
        raise PodLinkError(f"{name} vanished while being set up")
    return link.mac


def _route(dst: IPAddress, plen: int, index: int, gateway: str | None = None) -> WireRoute:
    family = socket.AF_INET if dst.version == 4 else socket.AF_INET6
    return WireRoute(family, str(dst), plen, gateway=gateway, oif=index, proto=RTPROT_STATIC)


def apply_pod_link(link: PodLink, host_netns: str | None) -> LinkInfo:
    """Create the pod's veth, its addresses and routes (both ends). A host
    end left by an earlier attempt for the same handle is replaced; on
    failure whatever was made is removed again."""
    try:
        fd = os.open(link.netns, os.O_RDONLY)
    except OSError as e:
        raise PodLinkError(f"cannot open the pod's network namespace {link.netns}: {e}") from e
    try:
        try:
            host_mac = _add_host_end(link, host_netns, fd)
            pod_mac = _configure_pod_end(link)
        except BaseException:
            with contextlib.suppress(PodLinkError, OSError):
                remove_pod_link(link.host_iface, host_netns)
            raise
    except OSError as e:
        raise PodLinkError(str(e)) from e
    finally:
        os.close(fd)
    return LinkInfo(host_mac, pod_mac)


def _add_host_end(link: PodLink, host_netns: str | None, pod_fd: int) -> str:
    with _entered(host_netns), RtnlClient() as rtnl:
        old = rtnl.link_index(link.host_iface)
        if old is not None:
            rtnl.link_delete(old)
        body = nl.veth_body(
            link.host_iface, link.ifname, mtu=link.mtu, peer_netns_fd=pod_fd, address=HOST_MAC
        )
        try:
            rtnl.link_create(body, f"veth {link.host_iface} peer {link.ifname}")
        except OSError as e:
            if e.errno == errno.EEXIST:
                raise PodLinkError(f"the pod already has an interface named {link.ifname}") from e
            raise
        index = rtnl.link_index(link.host_iface)
        assert index is not None
        iface = link.host_iface
        _sysctl(f"net/ipv4/conf/{iface}/proxy_arp", "1")
        _sysctl(f"net/ipv4/neigh/{iface}/proxy_delay", "0")
        if any(ip.version == 6 for ip in link.ips):
            _sysctl(f"net/ipv6/conf/{iface}/accept_dad", "0")
            _sysctl(f"net/ipv6/conf/{iface}/accept_ra", "0")
        rtnl.link_set_up(index, True)
        for ip in link.ips:
            rtnl.route_replace(_route(ip, 32 if ip.version == 4 else 128, index))
        return _mac(rtnl, iface)


def _configure_pod_end(link: PodLink) -> str:
    with _entered(link.netns), RtnlClient() as rtnl:
        index = rtnl.link_index(link.ifname)
        if index is None:
            raise PodLinkError(f"{link.ifname} did not appear in the pod")
        lo = rtnl.link_index("lo")
        if lo is not None:
            rtnl.link_set_up(lo, True)
        v6 = any(ip.version == 6 for ip in link.ips)
        if v6:
            _sysctl(f"net/ipv6/conf/{link.ifname}/accept_dad", "0")
        for ip in link.ips:
            if ip.version == 4:
                rtnl.addr_add(index, str(ip), 32)
            else:
                rtnl.addr_add(index, str(ip), 128, flags=na.IFA_F_NODAD)
        rtnl.link_set_up(index, True)
        if any(ip.version == 4 for ip in link.ips):
            rtnl.route_replace(_route(IPAddress(GATEWAY_V4), 32, index))
            _permanent_neighbour(rtnl, index, GATEWAY_V4)
            rtnl.route_replace(_route(IPAddress("0.0.0.0"), 0, index, GATEWAY_V4))
        if v6:
            _permanent_neighbour(rtnl, index, GATEWAY_V6)
            rtnl.route_replace(_route(IPAddress("::"), 0, index, GATEWAY_V6))
        return _mac(rtnl, link.ifname)


def _permanent_neighbour(rtnl: RtnlClient, index: int, ip: str) -> None:
    body = na.neigh_body(index, dst=ip, lladdr=HOST_MAC, state=na.NUD_PERMANENT)
    rtnl.neigh_replace(body, f"neigh replace {ip}")


def remove_pod_link(host_iface: str, host_netns: str | None) -> bool:
    """Delete the pod's veth by its host end (the pod end goes with it);
    False when it was not there."""
    try:
        with _entered(host_netns), RtnlClient() as rtnl:
            index = rtnl.link_index(host_iface)
            if index is None:
                return False
            try:
                rtnl.link_delete(index)
            except OSError as e:
                if e.errno == errno.ENODEV:
                    return False
                raise
            return True
    except OSError as e:
        raise PodLinkError(f"netlink: {e}") from e


def check_pod_link(link: PodLink, host_netns: str | None) -> list[str]:
    """What differs from what ``apply_pod_link`` made ([] when nothing)."""
    problems: list[str] = []
    try:
        with _entered(host_netns), RtnlClient() as rtnl:
            index = rtnl.link_index(link.host_iface)
            if index is None:
                return [f"host interface {link.host_iface} is missing"]
            routed = {
                r.dst
                for family in (socket.AF_INET, socket.AF_INET6)
                for r in rtnl.routes(family, index)
                if r.dst_len
            }
            problems += [
                f"no route to {ip} via {link.host_iface}"
                for ip in link.ips
                if str(ip) not in routed
            ]
        with _entered(link.netns), RtnlClient() as rtnl:
            index = rtnl.link_index(link.ifname)
            if index is None:
                return [*problems, f"{link.ifname} is missing in the pod"]
            have = {a.address for a in rtnl.addresses() if a.index == index}
            problems += [
                f"{ip} is not on the pod's {link.ifname}" for ip in link.ips if str(ip) not in have
            ]
    except OSError as e:
        raise PodLinkError(f"netlink: {e}") from e
    return problems


def list_host_ifaces(host_netns: str | None) -> list[str]:
    """The names of this module's veth host ends in the node's namespace."""
    with _entered(host_netns), RtnlClient() as rtnl:
        names = [link.name for link in rtnl.links()]
    return [n for n in names if is_host_iface_name(n)]


def sweep_host_ifaces(keep: Sequence[str], host_netns: str | None) -> list[str]:
    """Remove host ends that no endpoint record names (left by a crash
    between creating a veth and undoing a failed ADD); returns them."""
    gone = [n for n in list_host_ifaces(host_netns) if n not in set(keep)]
    for name in gone:
        remove_pod_link(name, host_netns)
    return gone
