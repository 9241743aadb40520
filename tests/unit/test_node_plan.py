"""The node's pure decisions: announcements, felix input, VTEP MAC."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from netaddr import IPAddress, IPNetwork

from bgpd.model import Path, PathAttrs
from bgpd.policy import decide_import
from datastore.memory import MemoryStore
from felix_lite.inputs import BestRoute, EncapMode, HostInterface
from ipam.ipam import AssignRequest, Ipam
from ipam.model import EncapMode as IpamEncap
from ipam.model import Pool
from meshroute.node.bgp_plan import plan_import_context
from meshroute.node.config import NodeConfig
from meshroute.node.plan import (
    borrowed_addresses,
    decide_encap_in_use,
    decide_vtep_mac,
    own_blocks,
    plan_announcements,
    plan_felix_input,
)
from meshroute.node.view import ClusterView
from meshroute.registry import NodeRecord
from meshroute.resources import BGPConfigurationSpec


def view_with_borrowing(*, then_disabled: bool = False) -> ClusterView:
    async def build() -> ClusterView:
        ipam = Ipam(MemoryStore())
        pool = Pool("p", IPNetwork("10.244.0.0/26"), 27, vxlan_mode=IpamEncap.CROSS_SUBNET)
        await ipam.apply_pool(pool)
        await ipam.assign(AssignRequest(host="a", handle="a1"))
        await ipam.assign(AssignRequest(host="b", handle="b1", num_v4=32))
        await ipam.assign(AssignRequest(host="b", handle="b2"))  # borrowed from a's block
        if then_disabled:
            await ipam.apply_pool(replace(pool, disabled=True))
        nodes = {
            "a": NodeRecord(
                "a", ipv4="192.0.2.11/24", tunnel_address="10.244.0.1", vtep_mac="02:00:00:00:00:0a"
            ),
            "b": NodeRecord("b", ipv4="198.51.100.12/24"),
        }
        return ClusterView(nodes, await ipam.snapshot(), BGPConfigurationSpec(), {})

    return asyncio.run(build())


def test_announcements_are_own_blocks_and_borrowed_host_routes() -> None:
    v = view_with_borrowing()
    assert len(own_blocks(v, "a")) == 1 and len(own_blocks(v, "b")) == 1
    assert borrowed_addresses(v, "a") == []
    [borrowed] = borrowed_addresses(v, "b")
    assert borrowed.prefixlen == 32 and borrowed in own_blocks(v, "a")[0]
    assert plan_announcements(v, "b") == [*own_blocks(v, "b"), borrowed]


def test_felix_input_carries_pools_blocks_vteps_and_tunnel_address() -> None:
    v = view_with_borrowing()
    config = NodeConfig.model_validate({"nodeName": "b", "ipv4": "198.51.100.12/24"})
    iface = HostInterface("eth0", (IPNetwork("198.51.100.12/24"),), 1500)
    best = [BestRoute(own_blocks(v, "a")[0], (IPAddress("192.0.2.11"),))]
    inp = plan_felix_input(config, v, [iface], best, IPAddress("10.244.0.40"))
    assert inp.pools[0].vxlan_mode is EncapMode.CROSS_SUBNET
    assert inp.own_blocks == tuple(own_blocks(v, "b"))
    assert inp.vxlan_tunnel_address == IPAddress("10.244.0.40")
    assert inp.ipip_tunnel_address is None
    assert [(str(t.node_ip), t.mac) for t in inp.vteps] == [("192.0.2.11", "02:00:00:00:00:0a")]
    assert inp.vxlan.mac == decide_vtep_mac("b")
    assert inp.node_ip == IPAddress("198.51.100.12")


def test_vtep_mac_is_stable_unicast_and_locally_administered() -> None:
    mac = decide_vtep_mac("rack1-node1")
    assert mac == decide_vtep_mac("rack1-node1") != decide_vtep_mac("rack1-node2")
    first = int(mac.split(":")[0], 16)
    assert first & 0x01 == 0 and first & 0x02 == 2


def test_a_disabled_pool_keeps_its_pods_routed() -> None:
    """Disabling a pool stops new addresses from it, nothing else (the
    soak's block-size change found nodes dropping a peer's block of a
    just-disabled pool): the block is still imported, felix still plans it
    with the pool's encapsulation, and the pool's tunnel device stays."""
    v = view_with_borrowing(then_disabled=True)
    config = NodeConfig.model_validate({"nodeName": "b", "ipv4": "198.51.100.12/24"})
    peer = IPAddress("192.0.2.11")
    block_of_a = own_blocks(v, "a")[0]
    received = Path(
        prefix=block_of_a,
        peer=peer,
        peer_as=64512,
        peer_router_id=peer,
        ebgp=False,
        attrs=PathAttrs(next_hop=peer),
    )
    assert decide_import(plan_import_context(v, config, None, 64512), received) is None
    iface = HostInterface("eth0", (IPNetwork("198.51.100.12/24"),), 1500)
    inp = plan_felix_input(config, v, [iface], [BestRoute(block_of_a, (peer,))], None)
    assert [(p.cidr, p.vxlan_mode) for p in inp.pools] == [
        (IPNetwork("10.244.0.0/26"), EncapMode.CROSS_SUBNET)
    ]
    assert decide_encap_in_use(v) == (False, True)
