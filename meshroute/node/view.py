"""What a node knows of the cluster, read from etcd in one pass: the node
registry, IP pools and IPAM records, BGP resources. Re-read whenever etcd
reports a change under the cluster prefix (level-triggered)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ipam.ipam import Ipam
from ipam.model import Snapshot
from meshroute.bgp_store import BgpStore
from meshroute.registry import NodeRecord, Registry
from meshroute.resources import BFDProfileSpec, BGPConfigurationSpec, BGPPeerSpec


@dataclass(frozen=True)
class ClusterView:
    nodes: dict[str, NodeRecord]
    ipam: Snapshot
    bgp_config: BGPConfigurationSpec
    bgp_peers: dict[str, BGPPeerSpec]
    bfd_profiles: dict[str, BFDProfileSpec] = field(default_factory=dict)


async def load_view(ipam: Ipam, registry: Registry, bgp: BgpStore) -> ClusterView:
    return ClusterView(
        nodes=await registry.nodes(),
        ipam=await ipam.snapshot(),
        bgp_config=await bgp.config(),
        bgp_peers=await bgp.peers(),
        bfd_profiles=await bgp.bfd_profiles(),
    )
