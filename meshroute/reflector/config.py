"""The reflector's configuration file (``/etc/meshroute/reflector.yaml``):
schema, defaults and loading; every problem names the file and the field."""

from __future__ import annotations

from pydantic import Field, model_validator

from meshroute.runtime.config import EtcdSection, HttpSection, Section, load_config, parse_config
from meshroute.schema_types import Address, InterfaceAddress

DEFAULT_REFLECTOR_CONFIG = "/etc/meshroute/reflector.yaml"


class BirdSection(Section):
    bird: str = "bird"
    work_dir: str = Field(default="/run/meshroute/reflector", alias="workDir")
    # BIRD waits 5 s before connecting and 60-300 s after an error by default;
    # a reflector whose clients restart wants them back within seconds (BIRD
    # never connects sooner than 0.75-1 s after a protocol starts)
    connect_delay_seconds: int = Field(default=1, ge=1, le=3600, alias="connectDelaySeconds")
    connect_retry_seconds: int = Field(default=5, ge=1, le=3600, alias="connectRetrySeconds")
    error_wait_seconds: tuple[int, int] = Field(default=(2, 30), alias="errorWaitSeconds")

    @model_validator(mode="after")
    def _error_wait(self) -> BirdSection:
        low, high = self.error_wait_seconds
        if not 0 < low <= high:
            raise ValueError(f"errorWaitSeconds: {[low, high]}: need 0 < low <= high")
        return self


class ReflectorConfig(Section):
    name: str = Field(min_length=1, max_length=253)
    ipv4: InterfaceAddress = Field(description="the reflector's address with prefix length")
    ipv6: InterfaceAddress | None = None  # reflects IPv6 sessions on this address too
    cluster_id: Address = Field(alias="clusterId")
    as_number: int | None = Field(default=None, ge=1, le=4294967295, alias="asNumber")
    router_id: Address | None = Field(default=None, alias="routerId")
    labels: dict[str, str] = Field(default_factory=dict)
    etcd: EtcdSection = Field(default_factory=EtcdSection)
    bird: BirdSection = Field(default_factory=BirdSection)
    http: HttpSection = Field(default_factory=lambda: HttpSection(listen="127.0.0.1:9098"))
    # Lab and tests: BIRD runs in this network namespace (files stay shared)
    netns: str | None = None

    @model_validator(mode="after")
    def _ipv4_cluster_id(self) -> ReflectorConfig:
        if self.cluster_id.version != 4:
            raise ValueError(f"clusterId: {self.cluster_id} must be an IPv4-style id")
        if self.ipv4.version != 4:
            raise ValueError(f"ipv4: {self.ipv4} is not IPv4")
        if self.ipv6 is not None and self.ipv6.version != 6:
            raise ValueError(f"ipv6: {self.ipv6} is not IPv6")
        return self


def parse_reflector_config(text: str, source: str) -> ReflectorConfig:
    return parse_config(text, source, ReflectorConfig)


def load_reflector_config(path: str) -> ReflectorConfig:
    return load_config(path, ReflectorConfig)
