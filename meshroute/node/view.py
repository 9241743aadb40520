"""What a node knows of the cluster, read in one pass: the node registry, IP
pools and IPAM records (workload endpoints among them), BGP resources with
their passwords resolved (``bgp_secrets``), ServiceAddresses. Read from the
node's copy of etcd (``datastore.mirror``) again whenever the copy takes a
change under the cluster prefix, or a password file changes
(level-triggered)."""

from __future__ import annotations

from dataclasses import dataclass, field

from datastore.port import KvStore
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


@dataclass(frozen=True)
class ViewSources:
    """The readers of every part of the view, over one store."""

    ipam: Ipam
    registry: Registry
    bgp: BgpStore
    secrets: SecretStore
    services: ServiceStore

    @classmethod
    def over(cls, store: KvStore, prefix: str, *, l2_segment: bool) -> ViewSources:
        return cls(
            Ipam(store, prefix=prefix, l2_segment=l2_segment),
            Registry(store, prefix),
            BgpStore(store, prefix),
            SecretStore(store, prefix),
            ServiceStore(store, prefix),
        )


async def load_view(sources: ViewSources) -> ClusterView:
    peers = await resolve_peer_passwords(await sources.bgp.peers(), sources.secrets)
    svc = await sources.services.load()
    return ClusterView(
        nodes=await sources.registry.nodes(),
        ipam=await sources.ipam.snapshot(),
        bgp_config=await sources.bgp.config(),
        bgp_peers=peers.peers,
        peer_problems=peers.problems,
        password_files=peers.files,
        bfd_profiles=await sources.bgp.bfd_profiles(),
        services=svc.addresses,
        service_problems=svc.problems,
    )
