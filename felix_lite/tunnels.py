"""The tunnel devices: ``tunl0`` (IPIP) and the VXLAN device.

This module owns creating, configuring and removing them. The decision is
pure: ``plan_tunnel_changes(desired, links)`` compares what meshroute wants
with the devices found and returns the few steps that close the gap
(nothing when they agree). ``NetlinkTunnels`` (the ``ports.TunnelDevices``
adapter) observes, plans and applies those steps over rtnetlink
(``rtnetlink.client``).

Ownership survives restarts without memory: every device meshroute creates
or adopts carries the ifalias ``OWNER_ALIAS``. Turning a mode off removes
only such devices. ``tunl0`` is the kernel's fallback device of the ``ipip``
module and cannot be deleted; "off" brings it down and strips the addresses
and alias meshroute gave it. A device of our name but of another kind is
never touched: that is a conflict for the operator.

VXLAN settings the kernel cannot change on a live device (VNI, port, local
address, parent, learning) are fixed by deleting and recreating the device,
as Calico does; MTU, MAC, addresses and up/down are changed in place.
"""

from __future__ import annotations

import asyncio
import errno
import os
import platform
import subprocess
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from netaddr import IPAddress, IPNetwork

from felix_lite.model import IpipDevice, VxlanDevice
from rtnetlink import links as nl
from rtnetlink.client import RtnlClient

OWNER_ALIAS = "meshroute:felix_lite"
IPIP_MODULE = "ipip"


class TunnelError(RuntimeError):
    """A tunnel device could not be brought to the desired state."""


@dataclass(frozen=True)
class ObservedLink:
    """A link as found in the kernel (only the fields tunnels care about)."""

    name: str
    kind: str | None
    up: bool
    mtu: int
    alias: str | None = None
    mac: str | None = None
    addresses: tuple[IPNetwork, ...] = ()
    vni: int | None = None
    port: int | None = None
    local: IPAddress | None = None
    parent: str | None = None
    learning: bool | None = None

    @property
    def owned(self) -> bool:
        return self.alias == OWNER_ALIAS


# ------------------------------------------------------------------ steps


@dataclass(frozen=True)
class CreateIpip:
    name: str


@dataclass(frozen=True)
class CreateVxlan:
    spec: VxlanDevice


@dataclass(frozen=True)
class DeleteLink:
    name: str
    reason: str


@dataclass(frozen=True)
class SetAlias:
    name: str
    alias: str  # "" clears it


@dataclass(frozen=True)
class SetMtu:
    name: str
    mtu: int


@dataclass(frozen=True)
class SetMac:
    name: str
    mac: str


@dataclass(frozen=True)
class SetUp:
    name: str
    up: bool


@dataclass(frozen=True)
class AddAddress:
    name: str
    address: IPNetwork


@dataclass(frozen=True)
class DelAddress:
    name: str
    address: IPNetwork


TunnelChange = (
    CreateIpip | CreateVxlan | DeleteLink | SetAlias | SetMtu | SetMac | SetUp | AddAddress
    | DelAddress
)  # fmt: skip


# --------------------------------------------------------- pure decisions


def host_prefix(address: IPAddress) -> IPNetwork:
    """A tunnel address is a single host: /32 or /128."""
    return IPNetwork(f"{address}/{32 if address.version == 4 else 128}")


def _ours_to_manage(addr: IPNetwork) -> bool:
    # The kernel's own IPv6 link-local address is not ours to remove.
    return not (addr.version == 6 and addr.ip.is_link_local())


def _converge(
    name: str, link: ObservedLink | None, mtu: int, mac: str | None, address: IPAddress | None
) -> list[TunnelChange]:
    """Steps that make an existing (or just created: ``link`` None) device
    ours, with this MTU, MAC and single tunnel address, and up."""
    steps: list[TunnelChange] = []
    if link is None or not link.owned:
        steps.append(SetAlias(name, OWNER_ALIAS))
    if link is None or link.mtu != mtu:
        steps.append(SetMtu(name, mtu))
    if mac is not None and (link is None or (link.mac or "").lower() != mac.lower()):
        steps.append(SetMac(name, mac))
    want = {host_prefix(address)} if address is not None else set()
    have = {a for a in (link.addresses if link else ()) if _ours_to_manage(a)}
    steps += [DelAddress(name, a) for a in sorted(have - want)]
    steps += [AddAddress(name, a) for a in sorted(want - have)]
    if link is None or not link.up:
        steps.append(SetUp(name, True))
    return steps


def _strip(link: ObservedLink) -> list[TunnelChange]:
    """Undo what meshroute did to a device it cannot delete."""
    steps: list[TunnelChange] = [
        DelAddress(link.name, a) for a in sorted(link.addresses) if _ours_to_manage(a)
    ]
    if link.up:
        steps.append(SetUp(link.name, False))
    steps.append(SetAlias(link.name, ""))
    return steps


def _by_name(links: Sequence[ObservedLink]) -> dict[str, ObservedLink]:
    return {link.name: link for link in links}


def plan_ipip_changes(
    desired: IpipDevice | None, links: Sequence[ObservedLink], name: str = "tunl0"
) -> tuple[TunnelChange, ...]:
    name = desired.name if desired is not None else name
    link = _by_name(links).get(name)
    if desired is None:
        return tuple(_strip(link)) if link is not None and link.owned else ()
    if link is not None and link.kind != "ipip":
        raise TunnelError(f"{name} exists but is a {link.kind or 'plain'} device, not ipip")
    steps: list[TunnelChange] = [] if link is not None else [CreateIpip(name)]
    return tuple(steps + _converge(name, link, desired.mtu, None, desired.address))


def _vxlan_mismatch(spec: VxlanDevice, link: ObservedLink) -> str | None:
    """What differs that only a recreate can change, or None."""
    checks = (
        ("VNI", spec.vni, link.vni),
        ("port", spec.port, link.port),
        ("local address", spec.local, link.local),
        ("parent", spec.parent, link.parent),
        ("learning", False, link.learning),
    )
    for what, want, have in checks:
        if want != have:
            return f"{what} {have} -> {want}"
    return None


def plan_vxlan_changes(
    desired: VxlanDevice | None, links: Sequence[ObservedLink], version: int = 4
) -> tuple[TunnelChange, ...]:
    """``version``: the underlay family this device serves; each family has
    its own device, and the other family's device is left alone."""
    steps: list[TunnelChange] = []
    # Our VXLAN devices of this family under another name (the configured
    # name changed) go.
    for link in links:
        family = link.local.version if link.local is not None else 4
        if (
            link.owned
            and link.kind == "vxlan"
            and family == version
            and (desired is None or link.name != desired.name)
        ):
            steps.append(DeleteLink(link.name, "vxlan mode off or device renamed"))
    if desired is None:
        return tuple(steps)
    existing: ObservedLink | None = _by_name(links).get(desired.name)
    if existing is not None and existing.kind != "vxlan":
        raise TunnelError(
            f"{desired.name} exists but is a {existing.kind or 'plain'} device, not vxlan"
        )
    if existing is not None:
        mismatch = _vxlan_mismatch(desired, existing)
        if mismatch is not None:
            steps.append(DeleteLink(desired.name, f"recreate: {mismatch}"))
            existing = None
    if existing is None:
        steps.append(CreateVxlan(desired))
    return tuple(
        steps + _converge(desired.name, existing, desired.mtu, desired.mac, desired.address)
    )


def plan_tunnel_changes(
    desired: IpipDevice | VxlanDevice | None,
    links: Sequence[ObservedLink],
    *,
    kind: str,
) -> tuple[TunnelChange, ...]:
    """The steps that take ``links`` to ``desired`` for the ``kind``
    ("ipip", "vxlan" or "vxlan6": VXLAN over IPv6) of tunnel; empty when
    nothing differs."""
    if kind == "ipip":
        if isinstance(desired, VxlanDevice):
            raise TypeError("a VxlanDevice is not an ipip tunnel")
        return plan_ipip_changes(desired, links)
    if kind in ("vxlan", "vxlan6"):
        if isinstance(desired, IpipDevice):
            raise TypeError("an IpipDevice is not a vxlan tunnel")
        version = 6 if kind == "vxlan6" else 4
        if desired is not None and desired.local.version != version:
            raise TunnelError(f"{desired.name}: local {desired.local} is not IPv{version}")
        return plan_vxlan_changes(desired, links, version)
    raise ValueError(f"unknown tunnel kind {kind!r}")


# ------------------------------------------------------------- the adapter


def _default_load_module(name: str) -> str | None:
    """Load a kernel module; None on success, else why it failed."""
    try:
        p = subprocess.run(["modprobe", name], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return str(e)
    return None if p.returncode == 0 else (p.stderr.strip() or f"exit {p.returncode}")


class NetlinkTunnels:
    """``ports.TunnelDevices`` on the real kernel (optionally in ``netns``).
    ``load_module`` is how a missing kernel module is asked for (modprobe)."""

    def __init__(self, netns: str | None = None, *, load_module: Any = None) -> None:
        self.netns = netns
        self._load_module = load_module or _default_load_module
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="felix-tunnels")
        self._rtnl = self._pool.submit(RtnlClient, netns).result()

    def close(self) -> None:
        self._pool.submit(self._rtnl.close).result()
        self._pool.shutdown(wait=True)

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def apply_ipip(self, desired: IpipDevice | None) -> None:
        await self._run(self._apply, desired, "ipip")

    async def apply_vxlan(self, desired: VxlanDevice | None) -> None:
        await self._run(self._apply, desired, "vxlan")

    async def apply_vxlan6(self, desired: VxlanDevice | None) -> None:
        await self._run(self._apply, desired, "vxlan6")

    # ------------------------------------------------------ on the worker

    def observe(self) -> list[ObservedLink]:
        """Tunnel-kind links and every link carrying our alias."""
        addrs: dict[int, list[IPNetwork]] = {}
        for a in self._rtnl.addresses():
            addrs.setdefault(a.index, []).append(IPNetwork(f"{a.address}/{a.prefixlen}"))
        links = self._rtnl.links()
        names = {link.index: link.name for link in links}
        return [
            ObservedLink(
                name=link.name,
                kind=link.kind,
                up=link.up,
                mtu=link.mtu,
                alias=link.alias,
                mac=link.mac,
                addresses=tuple(addrs.get(link.index, ())),
                vni=link.vni,
                port=link.port,
                local=IPAddress(link.local) if link.local else None,
                parent=names.get(link.parent) if link.parent else None,
                learning=link.learning,
            )
            for link in links
            if link.kind in ("ipip", "vxlan") or link.alias == OWNER_ALIAS
        ]

    def _apply(self, desired: IpipDevice | VxlanDevice | None, kind: str) -> None:
        for step in plan_tunnel_changes(desired, self.observe(), kind=kind):
            try:
                self._step(step)
            except TunnelError:
                raise
            except Exception as e:
                raise TunnelError(f"{step}: {e}") from e

    def _index(self, name: str) -> int:
        found = self._rtnl.link_index(name)
        if found is None:
            raise TunnelError(f"no such device: {name}")
        return found

    def _step(self, step: TunnelChange) -> None:
        rtnl = self._rtnl
        match step:
            case CreateIpip(name):
                self._create_ipip(name)
            case CreateVxlan(spec):
                parent = self._index(spec.parent) if spec.parent is not None else None
                body = nl.vxlan_body(
                    spec.name,
                    vni=spec.vni,
                    port=spec.port,
                    local=str(spec.local),
                    parent_index=parent,
                    learning=False,
                )
                rtnl.link_create(body, f"vxlan {spec.name}")
            case DeleteLink(name, _reason):
                rtnl.link_delete(self._index(name))
            case SetAlias(name, alias):
                rtnl.link_set_alias(self._index(name), alias)
            case SetMtu(name, mtu):
                rtnl.link_set_mtu(self._index(name), mtu)
            case SetMac(name, mac):
                idx = self._index(name)
                try:
                    rtnl.link_set_address(idx, mac)
                except OSError as e:  # some devices refuse while up
                    if e.errno != errno.EBUSY:
                        raise
                    rtnl.link_set_up(idx, False)
                    rtnl.link_set_address(idx, mac)
            case SetUp(name, up):
                rtnl.link_set_up(self._index(name), up)
            case AddAddress(name, net):
                rtnl.addr_add(self._index(name), str(net.ip), net.prefixlen)
            case DelAddress(name, net):
                rtnl.addr_delete(self._index(name), str(net.ip), net.prefixlen)

    def _create_ipip(self, name: str) -> None:
        """tunl0 appears by itself in every namespace once the ``ipip``
        module is loaded; load it if it is not."""
        if not os.path.exists(f"/sys/module/{IPIP_MODULE}"):
            why = self._load_module(IPIP_MODULE)
            if why is not None:
                raise TunnelError(
                    f"IPIP needs the kernel module '{IPIP_MODULE}', which could not be loaded "
                    f"on kernel {platform.release()}: {why}. Use VXLAN, or a kernel with "
                    "CONFIG_NET_IPIP."
                )
        if self._rtnl.link_index(name) is not None:
            return
        try:
            # fb_tunnels_only_for_init_net: no fallback here; make one of our own.
            self._rtnl.link_create(nl.ipip_body(name), f"ipip {name}")
        except OSError as e:
            raise TunnelError(
                f"cannot create {name} (kernel module '{IPIP_MODULE}' loaded?): {e}"
            ) from e
