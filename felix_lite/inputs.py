"""What the route planner is told: the host, the pools, the best routes.

felix_lite owns these types; the composition root fills them from ipam
(pools, own blocks, tunnel addresses), bgpd (best routes, remote VTEPs) and
the kernel (interfaces, underlay routes). They are plain frozen values so
the planner stays a pure function of them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from netaddr import IPAddress, IPNetwork

from felix_lite.model import MAIN_TABLE

IPIP_DEVICE = "tunl0"
# Calico's names and numbers, so a host migrated from Calico keeps its VTEP.
VXLAN_DEVICE = "vxlan.mesh"
# IPv6 pools' VXLAN runs over the IPv6 underlay (Calico's vxlanModeV6): a
# VXLAN device has one local address, so that is a second device.
VXLAN_V6_DEVICE = "vxlan-v6.mesh"
VXLAN_VNI = 4096
VXLAN_PORT = 4789


class EncapMode(enum.Enum):
    """A pool's ipipMode / vxlanMode, spelled as Calico spells them."""

    ALWAYS = "Always"
    CROSS_SUBNET = "CrossSubnet"
    NEVER = "Never"


@dataclass(frozen=True)
class HostInterface:
    """One of the host's interfaces. ``addresses`` keep their prefix length
    (``192.0.2.1/24``): that length is what makes a next hop "on subnet"."""

    name: str
    addresses: tuple[IPNetwork, ...]
    mtu: int
    up: bool = True


@dataclass(frozen=True)
class Pool:
    cidr: IPNetwork
    ipip_mode: EncapMode = EncapMode.NEVER
    vxlan_mode: EncapMode = EncapMode.NEVER

    def __post_init__(self) -> None:
        if self.ipip_mode is not EncapMode.NEVER and self.vxlan_mode is not EncapMode.NEVER:
            # Calico refuses the same combination: one pool, one encapsulation.
            raise ValueError(f"pool {self.cidr}: ipipMode and vxlanMode cannot both be enabled")


@dataclass(frozen=True, slots=True)
class BestRoute:
    """bgpd's winner for one prefix: one next hop, or several equal ones (ECMP).
    Slots: the incremental planner holds one per route (~100 bytes less each)."""

    prefix: IPNetwork
    nexthops: tuple[IPAddress, ...]


@dataclass(frozen=True)
class RemoteVtep:
    """A remote node's VXLAN endpoint: its underlay ``node_ip`` (the FDB
    destination), its VTEP address inside the overlay and the VTEP's MAC.
    An IPv6 ``node_ip`` is a VTEP on the IPv6 underlay (IPv6 ``vtep_ip``)."""

    node_ip: IPAddress
    vtep_ip: IPAddress
    mac: str


@dataclass(frozen=True)
class UnderlayRoute:
    """A route the kernel already has and felix_lite does not own (fabric-learnt,
    static, DHCP default). Used only to resolve next hops that are off every
    connected subnet when no tunnel is used (``Never``)."""

    dst: IPNetwork
    gateway: IPAddress | None
    ifname: str


@dataclass(frozen=True)
class VxlanParams:
    name: str = VXLAN_DEVICE
    vni: int = VXLAN_VNI
    port: int = VXLAN_PORT
    mac: str | None = None  # None: let the kernel pick one
    parent: str | None = None  # pin the underlay interface; None: the kernel routes


@dataclass(frozen=True)
class MtuOverrides:
    """Tunnel MTUs set by the operator instead of auto-detected ones."""

    ipip: int | None = None
    vxlan: int | None = None
    vxlan6: int | None = None


@dataclass(frozen=True)
class PlanInput:
    interfaces: tuple[HostInterface, ...]
    pools: tuple[Pool, ...] = ()
    own_blocks: tuple[IPNetwork, ...] = ()
    routes: tuple[BestRoute, ...] = ()
    # The host's underlay address: the VXLAN local address and what picks the
    # "main" interface for MTU detection. None: the first address found.
    node_ip: IPAddress | None = None
    ipip_tunnel_address: IPAddress | None = None
    vxlan_tunnel_address: IPAddress | None = None
    # the IPv6 underlay address and VTEP address (IPv6 pools using VXLAN)
    node_ip6: IPAddress | None = None
    vxlan_tunnel_address6: IPAddress | None = None
    vteps: tuple[RemoteVtep, ...] = ()
    underlay: tuple[UnderlayRoute, ...] = ()
    vxlan: VxlanParams = field(default_factory=VxlanParams)
    vxlan6: VxlanParams = field(default_factory=lambda: VxlanParams(name=VXLAN_V6_DEVICE))
    mtu: MtuOverrides = field(default_factory=MtuOverrides)
    table: int = MAIN_TABLE
