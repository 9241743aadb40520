"""The node's configuration file (``/etc/meshroute/node.yaml``): schema,
defaults and loading. Loaded once at start, validated whole, every problem
reported with the file and the field; passed explicitly, never global."""

from __future__ import annotations

from typing import TypeVar

from netaddr import IPAddress
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from meshroute.schema_types import Address, InterfaceAddress, field_path
from meshroute.yaml_input import YamlInputError, one_document, read_text

DEFAULT_CONFIG = "/etc/meshroute/node.yaml"


class ConfigError(Exception):
    """An invalid configuration file; the message names file and fields."""


class _Section(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, arbitrary_types_allowed=True, populate_by_name=True
    )


class EtcdSection(_Section):
    endpoints: list[str] = Field(default_factory=lambda: ["127.0.0.1:2379"], min_length=1)
    prefix: str = "/meshroute"
    timeout_seconds: float = Field(default=5.0, gt=0, alias="timeoutSeconds")


class IpamSection(_Section):
    socket: str = "/run/meshroute/ipam.sock"
    l2_segment: bool = Field(default=False, alias="l2Segment")
    housekeeping_seconds: float = Field(default=60.0, gt=0, alias="housekeepingSeconds")


class BgpSection(_Section):
    router_id: Address | None = Field(default=None, alias="routerId")
    exabgp: str = "exabgp"
    work_dir: str = Field(default="/run/meshroute/bgp", alias="workDir")
    restart_grace_seconds: int = Field(default=120, ge=1, le=3600, alias="gracefulRestartSeconds")


class FelixSection(_Section):
    route_protocol: int = Field(default=213, ge=5, le=255, alias="routeProtocol")
    route_table: int = Field(default=254, ge=1, le=2**32 - 1, alias="routeTable")
    resync_seconds: float = Field(default=90.0, gt=0, alias="resyncIntervalSeconds")
    ipip_mtu: int | None = Field(default=None, ge=576, le=65535, alias="ipipMtu")
    vxlan_mtu: int | None = Field(default=None, ge=576, le=65535, alias="vxlanMtu")
    vxlan_vni: int = Field(default=4096, ge=1, le=2**24 - 1, alias="vxlanVni")
    vxlan_port: int = Field(default=4789, ge=1, le=65535, alias="vxlanPort")


class HttpSection(_Section):
    listen: str = "127.0.0.1:9099"


class NodeConfig(_Section):
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


M = TypeVar("M", bound=BaseModel)


def parse_config(text: str, source: str, model: type[M]) -> M:
    """A YAML configuration file validated whole against ``model``; every
    problem reported on its own line as ``FILE: field.path: message``."""
    try:
        raw = one_document(text, source)
    except YamlInputError as e:
        raise ConfigError(str(e)) from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of settings")
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        lines = [f"{source}: {field_path(err['loc'])}: {err['msg']}" for err in e.errors()]
        raise ConfigError("\n".join(lines)) from e


def load_config(path: str, model: type[M]) -> M:
    try:
        text = read_text(path)
    except YamlInputError as e:
        raise ConfigError(str(e)) from e
    return parse_config(text, path, model)


def parse_node_config(text: str, source: str) -> NodeConfig:
    return parse_config(text, source, NodeConfig)


def load_node_config(path: str) -> NodeConfig:
    return load_config(path, NodeConfig)
