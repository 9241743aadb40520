"""The node's decisions over a ClusterView, all pure: what to announce
(blocks, borrowed addresses, service prefixes),
what felix_lite should plan with, the tunnel settings and the VTEP MAC."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

from netaddr import IPAddress, IPNetwork

from felix_lite.inputs import (
    VXLAN_V6_DEVICE,
    BestRoute,
    EncapMode,
    HostInterface,
    MtuOverrides,
    PlanInput,
    RemoteVtep,
    UnderlayRoute,
    VxlanParams,
)
from felix_lite.inputs import (
    Pool as FelixPool,
)
from ipam.model import AffinityState
from ipam.model import EncapMode as IpamEncap
from meshroute.node.config import NodeConfig
from meshroute.node.services_plan import endpoint_addresses, plan_service_prefixes
from meshroute.node.view import ClusterView
from meshroute.registry import NodeRecord


def decide_vtep_mac(node_name: str, version: int = 4) -> str:
    """A stable, locally administered unicast MAC for this node's VXLAN
    device of the IP ``version`` underlay, so that a restart (or another
    node's FDB) never sees it change."""
    seed = node_name if version == 4 else f"{node_name}/ipv6"
    d = bytearray(hashlib.sha256(seed.encode()).digest()[:6])
    d[0] = (d[0] & 0xFC) | 0x02
    return ":".join(f"{b:02x}" for b in d)


def own_blocks(view: ClusterView, host: str) -> list[IPNetwork]:
    """Blocks confirmed as this host's (the affinity and the block agree)."""
    out = []
    for (h, cidr), (aff, _) in view.ipam.affinities.items():
        if h != host or aff.state is not AffinityState.CONFIRMED:
            continue
        entry = view.ipam.blocks.get(cidr)
        if entry is not None and entry[0].affinity == host:
            out.append(IPNetwork(cidr))
    return sorted(out, key=lambda c: (c.version, c.first))


def borrowed_addresses(view: ClusterView, host: str) -> list[IPNetwork]:
    """This host's pods' addresses in blocks that are not its own: announced
    as host routes so the cluster reaches them here, not at the block owner."""
    out = []
    for block, _ in view.ipam.blocks.values():
        if block.affinity == host:
            continue
        for o, a in block.allocations.items():
            if a.attrs.get("node") == host and not a.handle.startswith("reserved:"):
                ip = block.address(o)
                out.append(IPNetwork(f"{ip}/{32 if ip.version == 4 else 128}"))
    return sorted(out, key=lambda c: (c.version, c.first))


def plan_announcements(view: ClusterView, host: str) -> list[IPNetwork]:
    """Own blocks, borrowed pod addresses, and the service prefixes this
    host advertises (``services_plan``)."""
    local = endpoint_addresses(((ep.node, ep.ips) for ep, _ in view.ipam.endpoints.values()), host)
    services = plan_service_prefixes(view.bgp_config, view.services, local)
    return own_blocks(view, host) + borrowed_addresses(view, host) + services


def decide_encap_in_use(view: ClusterView) -> tuple[bool, bool]:
    """Whether any pool uses IPIP, VXLAN (a disabled one too: it hands out
    no new addresses, but its pods still use the tunnel)."""
    pools = view.ipam.pools.values()
    return (
        any(p.ipip_mode is not IpamEncap.NEVER for p in pools),
        any(p.vxlan_mode is not IpamEncap.NEVER for p in pools),
    )


def decide_vxlan6_in_use(view: ClusterView, config: NodeConfig) -> bool:
    """Whether this node needs a VTEP on the IPv6 underlay: an IPv6 pool
    (disabled or not) uses VXLAN and the node has an IPv6 address."""
    return config.ipv6 is not None and any(
        p.version == 6 and p.vxlan_mode is not IpamEncap.NEVER for p in view.ipam.pools.values()
    )


def remote_vteps(nodes: Mapping[str, NodeRecord], me: str) -> list[RemoteVtep]:
    """Every other node's VTEPs: on its IPv4 address, and on its IPv6
    address when it registered an IPv6 VTEP."""
    out = []
    for n in nodes.values():
        if n.name == me:
            continue
        for underlay, tunnel, mac in (
            (n.ipv4, n.tunnel_address, n.vtep_mac),
            (n.ipv6, n.tunnel_address6, n.vtep_mac6),
        ):
            if underlay and tunnel and mac:
                out.append(RemoteVtep(IPNetwork(underlay).ip, IPAddress(tunnel), mac))
    return sorted(out, key=lambda v: v.node_ip)


def plan_felix_input(
    config: NodeConfig,
    view: ClusterView,
    interfaces: Iterable[HostInterface],
    best: Iterable[BestRoute],
    tunnel_address: IPAddress | None,
    underlay: Iterable[UnderlayRoute] = (),
    tunnel_address6: IPAddress | None = None,
) -> PlanInput:
    ipip, vxlan = decide_encap_in_use(view)
    # disabled pools too: their pods' routes keep their encapsulation
    pools = tuple(
        FelixPool(p.cidr, EncapMode(p.ipip_mode.value), EncapMode(p.vxlan_mode.value))
        for p in sorted(view.ipam.pools.values(), key=lambda p: p.name)
    )
    f = config.felix
    # On an L2 segment each block is the bridge's connected subnet, a kernel
    # route for the same prefix that a blackhole could not coexist with (felix
    # never replaces a foreign route). The bridge plugin puts the gateway
    # address on the bridge with the block's first pod, so the window in which
    # traffic for a just-claimed block has no route here is that ADD's.
    blackholed = () if config.ipam.l2_segment else tuple(own_blocks(view, config.node_name))
    return PlanInput(
        interfaces=tuple(interfaces),
        pools=pools,
        own_blocks=blackholed,
        routes=tuple(best),
        node_ip=config.ipv4.ip,
        ipip_tunnel_address=tunnel_address if ipip else None,
        vxlan_tunnel_address=tunnel_address if vxlan else None,
        vteps=tuple(remote_vteps(view.nodes, config.node_name)) if vxlan else (),
        node_ip6=config.ipv6.ip if config.ipv6 else None,
        vxlan_tunnel_address6=tunnel_address6,
        underlay=tuple(underlay),
        vxlan=VxlanParams(
            vni=f.vxlan_vni, port=f.vxlan_port, mac=decide_vtep_mac(config.node_name)
        ),
        vxlan6=VxlanParams(
            name=VXLAN_V6_DEVICE,
            vni=f.vxlan_vni,
            port=f.vxlan_port,
            mac=decide_vtep_mac(config.node_name, 6),
        ),
        mtu=MtuOverrides(ipip=f.ipip_mtu, vxlan=f.vxlan_mtu, vxlan6=f.vxlan_mtu_v6),
        table=f.route_table,
    )
