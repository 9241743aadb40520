"""The ``ServiceAddress`` resource (``meshroute apply -f``): an address
routers reach the cluster on (v4 or v6), its ports, and the pod addresses
that serve it. Every node with a local endpoint advertises the address as a
host route and DNATs it to those endpoints (Kubernetes'
``externalTrafficPolicy: Local``, MetalLB's BGP mode). Schema and the rules
across fields; the node's decisions live in ``meshroute.node.services_plan``."""

from __future__ import annotations

from functools import cached_property
from typing import Literal

from netaddr import IPAddress, IPNetwork
from pydantic import Field

from meshroute.schema_types import Address
from meshroute.schema_types import StrictModel as _Strict

MAX_PORTS = 128
MAX_ENDPOINTS = 1024


class ServicePortSpec(_Strict):
    port: int = Field(ge=1, le=65535)
    protocol: Literal["TCP", "UDP", "SCTP"] = "TCP"
    # the endpoints' port; the service's own when left out
    target_port: int | None = Field(default=None, ge=1, le=65535, alias="targetPort")

    @property
    def target(self) -> int:
        return self.target_port or self.port


class ServiceAddressSpec(_Strict):
    address: Address
    ports: tuple[ServicePortSpec, ...] = Field(min_length=1, max_length=MAX_PORTS)
    endpoints: tuple[Address, ...] = Field(default=(), max_length=MAX_ENDPOINTS)

    # Derived once per spec (the node keeps a spec while its stored bytes stay
    # the same) because planning asks for them for every service on every change.

    @cached_property
    def host_prefix(self) -> IPNetwork:
        """The /32 or /128 of the address."""
        a = self.address
        return IPNetwork(f"{a}/{32 if a.version == 4 else 128}")

    @cached_property
    def endpoint_keys(self) -> tuple[AddressKey, ...]:
        """``address_key`` of each endpoint, in order."""
        return tuple(address_key(e) for e in self.endpoints)


AddressKey = tuple[int, int]


def address_key(a: IPAddress) -> AddressKey:
    """(version, value): hashed in C, where netaddr hashes in Python."""
    return a.version, int(a)


class ServiceMetadata(_Strict):
    name: str = Field(min_length=1, max_length=253, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    labels: dict[str, str] = Field(default_factory=dict)


class ServiceAddressResource(_Strict):
    api_version: Literal["meshroute.io/v1"] = Field(alias="apiVersion")
    kind: Literal["ServiceAddress"]
    metadata: ServiceMetadata
    spec: ServiceAddressSpec


def service_address_problems(spec: ServiceAddressSpec) -> list[str]:
    """Rules across fields, as 'field: message'."""
    out = []
    a = spec.address
    if a.is_loopback() or a.is_multicast() or a.is_link_local() or int(a) == 0:
        out.append(f"spec.address: {a} is not a unicast address routers can reach")
    seen: set[tuple[int, str]] = set()
    for i, p in enumerate(spec.ports):
        if (p.port, p.protocol) in seen:
            out.append(f"spec.ports.{i}: {p.protocol} {p.port} is listed twice")
        seen.add((p.port, p.protocol))
    ips: set[object] = set()
    for i, e in enumerate(spec.endpoints):
        if e.version != a.version:
            out.append(f"spec.endpoints.{i}: {e} is IPv{e.version}, the address IPv{a.version}")
        if e in ips:
            out.append(f"spec.endpoints.{i}: {e} is listed twice")
        ips.add(e)
    return out
