"""The kernel state felix_lite owns, as plain frozen values.

These types are shared by the pure planner (which produces them), the
reconciler (which diffs desired against actual) and the netlink adapters
(which write and read them). Devices are named, not indexed: the adapters
resolve names to interface indexes at the I/O edge.
"""

from __future__ import annotations

import enum
import socket
from dataclasses import dataclass, field

from netaddr import IPAddress, IPNetwork

# Routes meshroute installs carry this rtnetlink protocol number; it is how a
# restarted process recognises what it owns. 213 is in no iproute2 list and
# clear of the daemons a node may also run: Calico's felix (80), BIRD (12),
# zebra/FRR (11, 186-192), keepalived (18), babel (42), dhcp (16), and the
# kernel's own (0-4). configs/iproute2/rt_protos.d/meshroute.conf names it.
DEFAULT_PROTO = 213
MAIN_TABLE = 254


class RouteKind(enum.Enum):
    """Why a route exists; derivable from the route itself (see ``kind_of``)."""

    DIRECT = "direct"  # via a next hop on a connected subnet
    IPIP = "ipip"  # via the remote node, dev tunl0 onlink
    VXLAN = "vxlan"  # via the remote VTEP address, dev <vxlan device> onlink
    FABRIC = "fabric"  # off-subnet next hop, no encapsulation: left to the fabric
    BLACKHOLE = "blackhole"  # one of this host's own blocks


def net_fields(net: IPNetwork) -> tuple[int, int, int]:
    """(IP version, prefix length, value) of ``net``, read from netaddr's
    slots: its public properties are Python-level calls (~0.15 us each),
    and planning, keying and encoding 100k routes read them a few times a
    route. netaddr is pinned below 2 (setup.cfg), and
    tests/unit/test_felix_model.py checks these equal the public ones."""
    return net._module.version, net._prefixlen, net._value


def network_value(net: IPNetwork) -> int:
    """``net.first`` (the address with the host bits cleared), without
    netaddr's properties."""
    version, plen, value = net_fields(net)
    host_bits = (32 if version == 4 else 128) - plen
    return value >> host_bits << host_bits


def prefix_text(net: IPNetwork) -> str:
    """``str(net.cidr)``, without building a second IPNetwork."""
    version, plen, value = net_fields(net)
    if version == 4:
        # The dotted quad by arithmetic: every route planned is spelled once (its key).
        v = value >> (32 - plen) << (32 - plen)
        return f"{v >> 24}.{v >> 16 & 255}.{v >> 8 & 255}.{v & 255}/{plen}"
    text = socket.inet_ntop(socket.AF_INET6, network_value(net).to_bytes(16, "big"))
    return f"{text}/{plen}"


@dataclass(frozen=True, order=True, slots=True)
class NextHop:
    gateway: IPAddress
    ifname: str
    onlink: bool = False
    weight: int = 1


@dataclass(frozen=True, slots=True, init=False)
class KernelRoute:
    """One route in the table felix_lite owns. ``nexthops`` is empty for a
    blackhole, holds one entry for a plain route and several for ECMP."""

    dst: IPNetwork
    kind: RouteKind
    nexthops: tuple[NextHop, ...] = ()
    mtu: int | None = None
    table: int = MAIN_TABLE
    # Identity in the kernel: one owned route per (table, prefix), the prefix
    # spelled ``network/len`` (as ``str(dst.cidr)`` would). Computed once
    # when built and held in a slot, not a property: a 100k-route pass
    # reads it several times per route.
    key: tuple[int, str] = field(init=False, repr=False, compare=False, hash=False)

    def __init__(
        self,
        dst: IPNetwork,
        kind: RouteKind,
        nexthops: tuple[NextHop, ...] = (),
        mtu: int | None = None,
        table: int = MAIN_TABLE,
        text: str | None = None,
    ) -> None:
        """``text``: ``prefix_text(dst)`` when the caller has spelled it
        already (the planner spells each prefix once, for its own index).
        Written straight into the slots: the generated init of a frozen
        dataclass calls object.__setattr__ per field, which cost about a
        third of planning one route."""
        _set_dst(self, dst)
        _set_kind(self, kind)
        _set_nexthops(self, nexthops)
        _set_mtu(self, mtu)
        _set_table(self, table)
        _set_key(self, (table, text or prefix_text(dst)))

    def __hash__(self) -> int:
        # Equal routes have equal keys, and the key's hash is nearly free:
        # the generated hash walked the netaddr prefix and every next hop
        # (Python-level hashes), which dominated building a 100k-route
        # frozenset. Routes that differ only in content share a bucket.
        return hash(self.key)


# the slots' own setters, which a frozen dataclass's __setattr__ does not guard
_set_dst, _set_kind, _set_nexthops, _set_mtu, _set_table, _set_key = (
    vars(KernelRoute)[name].__set__ for name in ("dst", "kind", "nexthops", "mtu", "table", "key")
)


@dataclass(frozen=True, order=True)
class NeighborEntry:
    """A permanent ARP/NDP entry (the remote VTEP's inner address -> MAC)."""

    ifname: str
    ip: IPAddress
    lladdr: str


@dataclass(frozen=True, order=True)
class FdbEntry:
    """A bridge FDB entry on the vxlan device (remote VTEP MAC -> node IP)."""

    ifname: str
    lladdr: str
    dst: IPAddress


@dataclass(frozen=True)
class IpipDevice:
    """tunl0 as meshroute wants it."""

    address: IPAddress | None  # the host's tunnel address (/32), if any
    mtu: int
    name: str = "tunl0"


@dataclass(frozen=True)
class VxlanDevice:
    name: str
    vni: int
    port: int
    local: IPAddress  # underlay address the VTEP sends from
    parent: str | None  # underlay interface, if pinned
    address: IPAddress | None  # the host's VTEP (tunnel) address
    mac: str | None
    mtu: int


@dataclass(frozen=True)
class KernelState:
    """Everything felix_lite wants in the kernel (or found there)."""

    routes: frozenset[KernelRoute] = field(default_factory=frozenset)
    neighbors: frozenset[NeighborEntry] = field(default_factory=frozenset)
    fdb: frozenset[FdbEntry] = field(default_factory=frozenset)
    ipip: IpipDevice | None = None
    vxlan: VxlanDevice | None = None
    vxlan6: VxlanDevice | None = None  # the VTEP on the IPv6 underlay


@dataclass(frozen=True)
class DesiredChange:
    """A change to the desired kernel state, the size of what changed:
    routes written or removed by key (``KernelRoute.key``), and the small
    rest (neighbours, FDB entries, devices: a few per node of the cluster)
    whole, in ``base`` (whose ``routes`` are empty)."""

    upserts: tuple[KernelRoute, ...] = ()
    removes: tuple[tuple[int, str], ...] = ()
    base: KernelState = field(default_factory=KernelState)
