"""What a node knows of the cluster, read from etcd in one pass: the node
registry, IP pools and IPAM records (workload endpoints among them), BGP
resources with their passwords resolved (``bgp_secrets``), ServiceAddresses.
Re-read whenever etcd reports a change under the cluster prefix, or a
password file changes (level-triggered)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ipam.ipam import Ipam
from ipam.model import Snapshot
from meshroute.bgp_secrets import SecretStore, resolve_peer_passwords
from meshroute.bgp_store import BgpStore
from meshroute.registry import NodeRecord, Registry
from meshroute.resources import BFDProfileSpec, BGPConfigurationSpec, BGPPeerSpec
from meshroute.service_resources import ServiceAddressSpec
from meshroute.service_store import ServiceStore


@dataclass(frozen=True)
class ClusterView:
    nodes: dict[str, NodeRecord]
    ipam: Snapshot
    bgp_config: BGPConfigurationSpec
    bgp_peers: dict[str, BGPPeerSpec]  # passwords inline; peers without theirs left out
    bfd_profiles: dict[str, BFDProfileSpec] = field(default_factory=dict)
    peer_problems: tuple[str, ...] = ()
    password_files: frozenset[str] = field(default_factory=frozenset)
    services: dict[str, ServiceAddressSpec] = field(default_factory=dict)
    service_problems: tuple[str, ...] = ()


async def load_view(
    ipam: Ipam, registry: Registry, bgp: BgpStore, secrets: SecretStore, services: ServiceStore
) -> ClusterView:
    peers = await resolve_peer_passwords(await bgp.peers(), secrets)
    svc = await services.load()
    return ClusterView(
        nodes=await registry.nodes(),
        ipam=await ipam.snapshot(),
        bgp_config=await bgp.config(),
        bgp_peers=peers.peers,
        peer_problems=peers.problems,
        password_files=peers.files,
        bfd_profiles=await bgp.bfd_profiles(),
        services=svc.addresses,
        service_problems=svc.problems,
    )
