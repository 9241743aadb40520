"""The node's configuration file (``/etc/meshroute/node.yaml``): schema,
defaults and loading. Loaded once at start, validated whole, every problem
reported with the file and the field; passed explicitly, never global."""

from __future__ import annotations

from netaddr import IPAddress
from pydantic import Field

from meshroute.runtime.config import EtcdSection, HttpSection, Section, load_config, parse_config
from meshroute.schema_types import Address, InterfaceAddress

DEFAULT_CONFIG = "/etc/meshroute/node.yaml"


class IpamSection(Section):
    socket: str = "/run/meshroute/ipam.sock"
    l2_segment: bool = Field(default=False, alias="l2Segment")
    housekeeping_seconds: float = Field(default=60.0, gt=0, alias="housekeepingSeconds")


class BgpSection(Section):
    router_id: Address | None = Field(default=None, alias="routerId")
    exabgp: str = "exabgp"
    work_dir: str = Field(default="/run/meshroute/bgp", alias="workDir")


class FelixSection(Section):
    route_protocol: int = Field(default=213, ge=5, le=255, alias="routeProtocol")
    route_table: int = Field(default=254, ge=1, le=2**32 - 1, alias="routeTable")
    resync_seconds: float = Field(default=300.0, gt=0, alias="resyncIntervalSeconds")
    ipip_mtu: int | None = Field(default=None, ge=576, le=65535, alias="ipipMtu")
    vxlan_mtu: int | None = Field(default=None, ge=576, le=65535, alias="vxlanMtu")
    vxlan_mtu_v6: int | None = Field(default=None, ge=576, le=65535, alias="vxlanMtuV6")
    vxlan_vni: int = Field(default=4096, ge=1, le=2**24 - 1, alias="vxlanVni")
    vxlan_port: int = Field(default=4789, ge=1, le=65535, alias="vxlanPort")


class NodeConfig(Section):
    node_name: str = Field(alias="nodeName", min_length=1, max_length=253)
    ipv4: InterfaceAddress = Field(description="the node's underlay address with prefix length")
    ipv6: InterfaceAddress | None = None
    as_number: int | None = Field(default=None, ge=1, le=4294967295, alias="asNumber")
    labels: dict[str, str] = Field(default_factory=dict)
    etcd: EtcdSection = Field(default_factory=EtcdSection)
    ipam: IpamSection = Field(default_factory=IpamSection)
    bgp: BgpSection = Field(default_factory=BgpSection)
    felix: FelixSection = Field(default_factory=FelixSection)
    http: HttpSection = Field(default_factory=HttpSection)
    # Lab and tests: BGP, routes and links live in this network namespace
    # while the process itself (etcd, HTTP, the IPAM socket) stays where it runs.
    netns: str | None = None

    @property
    def router_id(self) -> IPAddress:
        return self.bgp.router_id or self.ipv4.ip


def parse_node_config(text: str, source: str) -> NodeConfig:
    return parse_config(text, source, NodeConfig)


def load_node_config(path: str) -> NodeConfig:
    return load_config(path, NodeConfig)
