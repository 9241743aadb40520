"""The resources operators write in YAML (``meshroute apply -f``): their
schema, and loading that names the file, the document and the field of
every problem. A file is validated whole before anything is applied."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO, Literal

from netaddr import IPNetwork
from pydantic import (
    BaseModel,
    Field,
    ValidationError,
)

from ipam.model import EncapMode, IpamSettings, Pool, Use
from ipam.pool_rules import DEFAULT_BLOCK_SIZE, overlapping, pool_problems
from ipam.quoting import quote
from ipam.selector import SelectorError, parse_selector
from meshroute.policy_resources import (
    GlobalNetworkPolicyResource,
    NamespaceResource,
    NetworkPolicyResource,
    global_policy_problems,
    namespace_problems,
    network_policy_problems,
)
from meshroute.schema_types import Address, Cidr, Community, field_path
from meshroute.schema_types import StrictModel as _Strict
from meshroute.service_resources import ServiceAddressResource, service_address_problems
from meshroute.yaml_input import YamlInputError, documents, read_text

API_VERSION = "meshroute.io/v1"


class ResourceError(Exception):
    """Invalid resources; the message names file, document and field."""


SECRET_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$"


class Metadata(_Strict):
    name: str = Field(min_length=1, max_length=253)
    labels: dict[str, str] = Field(default_factory=dict)


class IPPoolSpec(_Strict):
    cidr: Cidr
    block_size: int | None = Field(default=None, alias="blockSize")
    ipip_mode: EncapMode = Field(default=EncapMode.NEVER, alias="ipipMode")
    vxlan_mode: EncapMode = Field(default=EncapMode.NEVER, alias="vxlanMode")
    nat_outgoing: bool = Field(default=False, alias="natOutgoing")
    disabled: bool = False
    node_selector: str = Field(default="all()", alias="nodeSelector")
    allowed_uses: tuple[Use, ...] = Field(default=(Use.WORKLOAD, Use.TUNNEL), alias="allowedUses")


class IPPoolResource(_Strict):
    api_version: Literal["meshroute.io/v1"] = Field(alias="apiVersion")
    kind: Literal["IPPool"]
    metadata: Metadata
    spec: IPPoolSpec

    def to_pool(self) -> Pool:
        s = self.spec
        return Pool(
            name=self.metadata.name,
            cidr=s.cidr,
            block_size=s.block_size or DEFAULT_BLOCK_SIZE[int(s.cidr.version)],
            ipip_mode=s.ipip_mode,
            vxlan_mode=s.vxlan_mode,
            nat_outgoing=s.nat_outgoing,
            disabled=s.disabled,
            node_selector=s.node_selector,
            allowed_uses=s.allowed_uses,
        )


class IPAMConfigurationSpec(_Strict):
    strict_affinity: bool = Field(default=False, alias="strictAffinity")
    max_blocks_per_host: int = Field(default=0, ge=0, alias="maxBlocksPerHost")
    min_block_age_seconds: float = Field(default=300.0, ge=0, alias="minBlockAgeSeconds")


class IPAMConfigurationResource(_Strict):
    api_version: Literal["meshroute.io/v1"] = Field(alias="apiVersion")
    kind: Literal["IPAMConfiguration"]
    metadata: Metadata
    spec: IPAMConfigurationSpec

    def to_settings(self) -> IpamSettings:
        s = self.spec
        return IpamSettings(s.strict_affinity, s.max_blocks_per_host, s.min_block_age_seconds)


class BGPConfigurationSpec(_Strict):
    as_number: int = Field(default=64512, ge=1, le=4294967295, alias="asNumber")
    node_to_node_mesh_enabled: bool = Field(default=True, alias="nodeToNodeMeshEnabled")
    listen_port: int = Field(default=179, ge=1, le=65535, alias="listenPort")
    communities: tuple[Community, ...] = ()
    node_as_numbers: dict[str, int] = Field(default_factory=dict, alias="nodeASNumbers")
    node_to_node_mesh_bfd_profile: str | None = Field(
        default=None, min_length=1, max_length=253, alias="nodeToNodeMeshBFDProfile"
    )
    # How IPv6 routes travel. IPv6Peers (Calico's meaning): an IPv4 peer
    # carries IPv4, an IPv6 peer IPv6, and the mesh pairs nodes on both
    # addresses. MultiProtocol: the IPv4 sessions carry IPv6 as well
    # (MP-BGP), with the node's IPv6 address as next hop.
    ipv6_transport: Literal["IPv6Peers", "MultiProtocol"] = Field(
        default="IPv6Peers", alias="ipv6Transport"
    )
    # Service ranges every node advertises as they are (Calico's service
    # advertisement); ServiceAddresses add host routes inside or beside them.
    service_cluster_ips: tuple[Cidr, ...] = Field(
        default=(), max_length=64, alias="serviceClusterIPs"
    )
    service_external_ips: tuple[Cidr, ...] = Field(
        default=(), max_length=64, alias="serviceExternalIPs"
    )
    service_load_balancer_ips: tuple[Cidr, ...] = Field(
        default=(), max_length=64, alias="serviceLoadBalancerIPs"
    )

    def service_ranges(self) -> tuple[IPNetwork, ...]:
        return self.service_cluster_ips + self.service_external_ips + self.service_load_balancer_ips


class BGPConfigurationResource(_Strict):
    api_version: Literal["meshroute.io/v1"] = Field(alias="apiVersion")
    kind: Literal["BGPConfiguration"]
    metadata: Metadata
    spec: BGPConfigurationSpec


class BGPPeerSpec(_Strict):
    node: str | None = None  # this peering applies to one node by name ...
    node_selector: str | None = Field(default=None, alias="nodeSelector")  # ... or by labels
    peer_ip: Address | None = Field(default=None, alias="peerIP")  # the peer is an address ...
    peer_selector: str | None = Field(default=None, alias="peerSelector")  # ... or nodes
    as_number: int | None = Field(default=None, ge=1, le=4294967295, alias="asNumber")
    # TCP-MD5, one of: the password itself (stored in etcd in the clear, so
    # ``apply`` warns), a file on every host, or a secret in etcd (bgp_secrets)
    password: str | None = Field(default=None, min_length=1, max_length=80, repr=False)
    password_file: str | None = Field(
        default=None, alias="passwordFile", min_length=2, max_length=4096, pattern=r"^/"
    )
    password_secret: str | None = Field(default=None, alias="passwordSecret", pattern=SECRET_NAME)
    ttl_security: int | None = Field(default=None, ge=1, le=254, alias="ttlSecurity")
    hold_time: int = Field(default=90, alias="holdTime")
    graceful_restart_time: int = Field(default=120, ge=0, le=4095, alias="gracefulRestartTime")
    passive: bool = False
    keep_next_hop: bool = Field(default=False, alias="keepNextHop")
    max_prefix: int | None = Field(default=None, ge=1, alias="maxPrefix")
    max_prefix_action: Literal["drop", "close"] = Field(default="drop", alias="maxPrefixAction")
    bfd_profile: str | None = Field(default=None, min_length=1, max_length=253, alias="bfdProfile")


class BGPPeerResource(_Strict):
    api_version: Literal["meshroute.io/v1"] = Field(alias="apiVersion")
    kind: Literal["BGPPeer"]
    metadata: Metadata
    spec: BGPPeerSpec


class BFDProfileSpec(_Strict):
    """MetalLB's BFDProfile fields (echo mode is not offered); intervals in
    milliseconds."""

    receive_interval: int = Field(default=300, ge=10, le=60000, alias="receiveInterval")
    transmit_interval: int = Field(default=300, ge=10, le=60000, alias="transmitInterval")
    detect_multiplier: int = Field(default=3, ge=2, le=255, alias="detectMultiplier")
    passive_mode: bool = Field(default=False, alias="passiveMode")
    minimum_ttl: int = Field(default=254, ge=1, le=254, alias="minimumTtl")


class BFDProfileResource(_Strict):
    api_version: Literal["meshroute.io/v1"] = Field(alias="apiVersion")
    kind: Literal["BFDProfile"]
    metadata: Metadata
    spec: BFDProfileSpec


Resource = (
    IPPoolResource
    | IPAMConfigurationResource
    | BGPConfigurationResource
    | BGPPeerResource
    | NetworkPolicyResource
    | GlobalNetworkPolicyResource
    | NamespaceResource
    | BFDProfileResource
    | ServiceAddressResource
)
KINDS: dict[str, type[BaseModel]] = {
    "IPPool": IPPoolResource,
    "IPAMConfiguration": IPAMConfigurationResource,
    "BGPConfiguration": BGPConfigurationResource,
    "BGPPeer": BGPPeerResource,
    "NetworkPolicy": NetworkPolicyResource,
    "GlobalNetworkPolicy": GlobalNetworkPolicyResource,
    "Namespace": NamespaceResource,
    "BFDProfile": BFDProfileResource,
    "ServiceAddress": ServiceAddressResource,
}
# Kinds of which the cluster has exactly one, named "default".
SINGLETONS = (IPAMConfigurationResource, BGPConfigurationResource)


SERVICE_RANGE_FIELDS = (
    ("spec.serviceClusterIPs", "service_cluster_ips"),
    ("spec.serviceExternalIPs", "service_external_ips"),
    ("spec.serviceLoadBalancerIPs", "service_load_balancer_ips"),
)


def bgp_config_problems(spec: BGPConfigurationSpec) -> list[str]:
    """Service ranges are prefixes, as routers will see them."""
    out = []
    for label, attr in SERVICE_RANGE_FIELDS:
        for i, c in enumerate(getattr(spec, attr)):
            if c.ip != c.network:
                out.append(f"{label}.{i}: {c} has host bits set (did you mean {c.cidr}?)")
    return out


def bgp_peer_problems(spec: BGPPeerSpec) -> list[str]:
    """Rules across fields, as 'field: message'."""
    out = []
    if spec.node is not None and spec.node_selector is not None:
        out.append("spec.nodeSelector: give node or nodeSelector, not both")
    if (spec.peer_ip is None) == (spec.peer_selector is None):
        out.append("spec.peerIP: give exactly one of peerIP and peerSelector")
    if spec.peer_ip is not None and spec.as_number is None:
        out.append("spec.asNumber: required with peerIP")
    if spec.hold_time != 0 and not 3 <= spec.hold_time <= 65535:
        out.append(f"spec.holdTime: {spec.hold_time} must be 0 or 3..65535 (RFC 4271)")
    if spec.password is not None and not spec.password.isprintable():
        out.append("spec.password: only printable characters")
    given = [spec.password, spec.password_file, spec.password_secret]
    if sum(v is not None for v in given) > 1:
        out.append("spec.password: give one of password, passwordFile and passwordSecret")
    for f, sel in (
        ("spec.nodeSelector", spec.node_selector),
        ("spec.peerSelector", spec.peer_selector),
    ):
        if sel is not None:
            try:
                parse_selector(sel)
            except SelectorError as e:
                out.append(f"{f}: {e}")
    return out


@dataclass(frozen=True)
class Loaded:
    source: str  # "file.yaml: document 2 (IPPool default)"
    resource: Resource
    file: str = ""
    document: int = 0


def _shown(value: object) -> str:
    """A kind or name as the place of a problem: itself when short and
    plain, else quoted by a short prefix."""
    if isinstance(value, str) and 0 < len(value) <= 64 and value.isprintable():
        return value
    return "?" if value is None else quote(value)


def _where(source: str, index: int, doc: Any) -> str:
    kind = doc.get("kind") if isinstance(doc, dict) else None
    meta = doc.get("metadata") if isinstance(doc, dict) else None
    name = meta.get("name") if isinstance(meta, dict) else None
    return f"{source}: document {index} ({_shown(kind)} {_shown(name)})"


def parse_documents(text: str, source: str) -> list[Loaded]:
    """Parse and validate every document; raise one ResourceError listing
    all problems, each with its place."""
    try:
        docs = [d for d in documents(text, source) if d is not None]
    except YamlInputError as e:
        raise ResourceError(str(e)) from e
    if not docs:
        raise ResourceError(f"{source}: no resources found")
    problems: list[str] = []
    out: list[Loaded] = []
    for i, doc in enumerate(docs, start=1):
        where = _where(source, i, doc)
        if not isinstance(doc, dict):
            problems.append(f"{where}: a resource must be a mapping")
            continue
        kind = doc.get("kind")
        model = KINDS.get(kind) if isinstance(kind, str) else None
        if model is None:
            problems.append(f"{where}: kind: {quote(kind)} is not one of {', '.join(KINDS)}")
            continue
        try:
            res = model.model_validate(doc)
        except ValidationError as e:
            problems += [f"{where}: {field_path(err['loc'])}: {err['msg']}" for err in e.errors()]
            continue
        if isinstance(res, IPPoolResource):
            problems += [f"{where}: {p}" for p in pool_problems(res.to_pool())]
        elif isinstance(res, BGPPeerResource):
            problems += [f"{where}: {p}" for p in bgp_peer_problems(res.spec)]
        elif isinstance(res, NetworkPolicyResource):
            problems += [f"{where}: {p}" for p in network_policy_problems(res)]
        elif isinstance(res, GlobalNetworkPolicyResource):
            problems += [f"{where}: {p}" for p in global_policy_problems(res)]
        elif isinstance(res, NamespaceResource):
            problems += [f"{where}: {p}" for p in namespace_problems(res)]
        elif isinstance(res, BGPConfigurationResource):
            problems += [f"{where}: {p}" for p in bgp_config_problems(res.spec)]
        elif isinstance(res, ServiceAddressResource):
            problems += [f"{where}: {p}" for p in service_address_problems(res.spec)]
        if isinstance(res, SINGLETONS) and res.metadata.name != "default":
            problems.append(
                f"{where}: metadata.name: {quote(res.metadata.name)} is not 'default' "
                f"(a cluster has one {kind}, named default)"
            )
            continue
        out.append(Loaded(where, res, source, i))  # type: ignore[arg-type]
    if problems:
        raise ResourceError("\n".join(problems))
    return out


def load_files(paths: list[str], stdin: BinaryIO | None = None) -> list[Loaded]:
    out: list[Loaded] = []
    problems: list[str] = []
    for p in paths:
        try:
            out += parse_documents(read_text(p, stdin), "<stdin>" if p == "-" else p)
        except YamlInputError as e:
            problems.append(str(e))
        except ResourceError as e:
            problems.append(str(e))
    if problems:
        raise ResourceError("\n".join(problems))
    return out


def bfd_profile_refs(loaded: list[Loaded]) -> list[tuple[str, str, str]]:
    """(where, field, profile name) for every BFD profile these resources name."""
    out = []
    for item in loaded:
        r = item.resource
        if isinstance(r, BGPPeerResource) and r.spec.bfd_profile is not None:
            out.append((item.source, "spec.bfdProfile", r.spec.bfd_profile))
        elif (
            isinstance(r, BGPConfigurationResource)
            and r.spec.node_to_node_mesh_bfd_profile is not None
        ):
            name = r.spec.node_to_node_mesh_bfd_profile
            out.append((item.source, "spec.nodeToNodeMeshBFDProfile", name))
    return out


def missing_profile_problems(loaded: list[Loaded], existing: set[str]) -> list[str]:
    """References to BFD profiles neither in these files nor in ``existing``."""
    known = existing | {
        item.resource.metadata.name
        for item in loaded
        if isinstance(item.resource, BFDProfileResource)
    }
    return [
        f"{where}: {field}: no BFDProfile named {name[:64]!r}"
        for where, field, name in bfd_profile_refs(loaded)
        if name not in known
    ]


def pool_to_resource(pool: Pool) -> dict[str, Any]:
    d = pool.to_dict()
    name = d.pop("name")
    return {"apiVersion": API_VERSION, "kind": "IPPool", "metadata": {"name": name}, "spec": d}


def iter_pools(loaded: list[Loaded]) -> Iterator[tuple[str, Pool]]:
    for item in loaded:
        if isinstance(item.resource, IPPoolResource):
            yield item.source, item.resource.to_pool()


def overlap_problems(loaded: list[Loaded], existing: list[Pool]) -> list[str]:
    """Pools of these files that overlap each other or an existing pool
    (one being replaced by its own new version does not count)."""
    new = list(iter_pools(loaded))
    replaced = {p.name for _, p in new}
    problems = []
    for i, (where, p) in enumerate(new):
        for _, o in new[:i]:
            if overlapping(p, [o]):
                problems.append(f"{where}: spec.cidr: {p.cidr} overlaps pool {o.name} ({o.cidr})")
        for o in overlapping(p, [e for e in existing if e.name not in replaced]):
            problems.append(
                f"{where}: spec.cidr: {p.cidr} overlaps existing pool {o.name} ({o.cidr})"
            )
    return problems
