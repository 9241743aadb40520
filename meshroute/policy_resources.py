"""The policy resources operators write: Kubernetes ``networking.k8s.io/v1``
NetworkPolicy (accepted unchanged), ``meshroute.io/v1``
GlobalNetworkPolicy (Calico's model) and ``meshroute.io/v1`` Namespace (its
labels). Schemas and the checks across fields; lowering them to felix_lite's
rule model lives in ``policy_lowering``."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ipam.selector import SelectorError, parse_selector
from meshroute.schema_types import Cidr


class _Strict(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, arbitrary_types_allowed=True, populate_by_name=True
    )


_DNS_LABEL = r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?"
_DNS_SUBDOMAIN = rf"{_DNS_LABEL}(\.{_DNS_LABEL})*"
_LABEL_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
LABEL_KEY = re.compile(rf"({_DNS_SUBDOMAIN}/)?{_LABEL_NAME}")
LABEL_VALUE = re.compile(rf"({_LABEL_NAME})?")
PORT_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")  # IANA_SVC_NAME, with a letter


def label_problems(labels: dict[str, str] | None, where: str) -> list[str]:
    out = []
    for k, v in (labels or {}).items():
        if len(k) > 317 or not LABEL_KEY.fullmatch(k):
            out.append(f"{where}: {k[:40]!r} is not a valid label key")
        elif len(v) > 63 or not LABEL_VALUE.fullmatch(v):
            out.append(f"{where}.{k}: {v[:40]!r} is not a valid label value")
    return out


def port_name_problem(name: str) -> str | None:
    if len(name) > 15 or not PORT_NAME.fullmatch(name) or "--" in name:
        return f"{name[:20]!r} is not a port number or a valid port name"
    if not re.search("[a-z]", name):
        return f"{name[:20]!r}: a port name needs a letter"
    return None


def selector_problem(text: str) -> str | None:
    try:
        parse_selector(text)
    except SelectorError as e:
        return str(e)[:200]
    return None


class ObjectMeta(_Strict):
    """Kubernetes' metadata; fields a cluster adds (uid, resourceVersion...)
    are accepted so a manifest exported from Kubernetes applies unchanged."""

    name: str = Field(min_length=1, max_length=253)
    namespace: str = Field(default="default", min_length=1, max_length=63)
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None
    uid: str | None = None
    resource_version: str | None = Field(default=None, alias="resourceVersion")
    generation: int | None = None
    creation_timestamp: str | None = Field(default=None, alias="creationTimestamp")
    managed_fields: list[dict[str, Any]] | None = Field(default=None, alias="managedFields")
    finalizers: list[str] | None = None


class LabelSelectorRequirement(_Strict):
    key: str = Field(min_length=1, max_length=317)
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[str] | None = None


class LabelSelector(_Strict):
    match_labels: dict[str, str] | None = Field(default=None, alias="matchLabels")
    match_expressions: list[LabelSelectorRequirement] | None = Field(
        default=None, alias="matchExpressions"
    )


class IPBlock(_Strict):
    cidr: Cidr
    except_: list[Cidr] | None = Field(default=None, alias="except")


class NetworkPolicyPeer(_Strict):
    pod_selector: LabelSelector | None = Field(default=None, alias="podSelector")
    namespace_selector: LabelSelector | None = Field(default=None, alias="namespaceSelector")
    ip_block: IPBlock | None = Field(default=None, alias="ipBlock")


class NetworkPolicyPort(_Strict):
    protocol: Literal["TCP", "UDP", "SCTP"] = "TCP"
    port: int | str | None = None
    end_port: int | None = Field(default=None, alias="endPort")


class NetworkPolicyIngressRule(_Strict):
    from_: list[NetworkPolicyPeer] | None = Field(default=None, alias="from")
    ports: list[NetworkPolicyPort] | None = None


class NetworkPolicyEgressRule(_Strict):
    to: list[NetworkPolicyPeer] | None = None
    ports: list[NetworkPolicyPort] | None = None


class NetworkPolicySpec(_Strict):
    pod_selector: LabelSelector = Field(default=LabelSelector(), alias="podSelector")
    policy_types: list[Literal["Ingress", "Egress"]] | None = Field(
        default=None, alias="policyTypes"
    )
    ingress: list[NetworkPolicyIngressRule] | None = None
    egress: list[NetworkPolicyEgressRule] | None = None


class NetworkPolicyResource(_Strict):
    api_version: Literal["networking.k8s.io/v1"] = Field(alias="apiVersion")
    kind: Literal["NetworkPolicy"]
    metadata: ObjectMeta
    spec: NetworkPolicySpec = NetworkPolicySpec()
    status: dict[str, Any] | None = None


def _selector_problems(s: LabelSelector | None, where: str) -> list[str]:
    if s is None:
        return []
    out = label_problems(s.match_labels, f"{where}.matchLabels")
    for i, r in enumerate(s.match_expressions or []):
        w = f"{where}.matchExpressions.{i}"
        if not LABEL_KEY.fullmatch(r.key):
            out.append(f"{w}.key: {r.key[:40]!r} is not a valid label key")
        if r.operator in ("In", "NotIn") and not r.values:
            out.append(f"{w}.values: required (non-empty) for operator {r.operator}")
        if r.operator in ("Exists", "DoesNotExist") and r.values:
            out.append(f"{w}.values: must be empty for operator {r.operator}")
        for j, v in enumerate(r.values or []):
            if len(v) > 63 or not LABEL_VALUE.fullmatch(v):
                out.append(f"{w}.values.{j}: {v[:40]!r} is not a valid label value")
    return out


def _peer_problems(p: NetworkPolicyPeer, where: str) -> list[str]:
    out = _selector_problems(p.pod_selector, f"{where}.podSelector")
    out += _selector_problems(p.namespace_selector, f"{where}.namespaceSelector")
    if p.ip_block is not None:
        if p.pod_selector is not None or p.namespace_selector is not None:
            out.append(f"{where}.ipBlock: may not be combined with podSelector/namespaceSelector")
        for i, e in enumerate(p.ip_block.except_ or []):
            if e.version != p.ip_block.cidr.version or e not in p.ip_block.cidr:
                out.append(f"{where}.ipBlock.except.{i}: {e} is not inside {p.ip_block.cidr}")
    elif p.pod_selector is None and p.namespace_selector is None:
        out.append(f"{where}: give podSelector, namespaceSelector or ipBlock")
    return out


def _np_port_problems(p: NetworkPolicyPort, where: str) -> list[str]:
    out = []
    if isinstance(p.port, int) and not 1 <= p.port <= 65535:
        out.append(f"{where}.port: {p.port} is not in 1..65535")
    if isinstance(p.port, str) and (problem := port_name_problem(p.port)):
        out.append(f"{where}.port: {problem}")
    if p.end_port is not None:
        if not isinstance(p.port, int):
            out.append(f"{where}.endPort: needs a numbered port")
        elif not p.port <= p.end_port <= 65535:
            out.append(f"{where}.endPort: {p.end_port} must be in {p.port}..65535")
    return out


def network_policy_problems(r: NetworkPolicyResource) -> list[str]:
    m = r.metadata
    out = []
    if not re.fullmatch(_DNS_SUBDOMAIN, m.name):
        out.append(f"metadata.name: {m.name[:40]!r} is not a DNS subdomain name")
    if not re.fullmatch(_DNS_LABEL, m.namespace):
        out.append(f"metadata.namespace: {m.namespace[:40]!r} is not a DNS label")
    s = r.spec
    out += _selector_problems(s.pod_selector, "spec.podSelector")
    for i, ing in enumerate(s.ingress or []):
        for j, peer in enumerate(ing.from_ or []):
            out += _peer_problems(peer, f"spec.ingress.{i}.from.{j}")
        for j, port in enumerate(ing.ports or []):
            out += _np_port_problems(port, f"spec.ingress.{i}.ports.{j}")
    for i, eg in enumerate(s.egress or []):
        for j, peer in enumerate(eg.to or []):
            out += _peer_problems(peer, f"spec.egress.{i}.to.{j}")
        for j, port in enumerate(eg.ports or []):
            out += _np_port_problems(port, f"spec.egress.{i}.ports.{j}")
    return out


# ---- meshroute.io/v1 GlobalNetworkPolicy (Calico's model) ------------------

PROTOCOLS = {"TCP", "UDP", "SCTP", "ICMP", "ICMPv6"}


class Meta(_Strict):
    name: str = Field(min_length=1, max_length=253)
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None


class IcmpSpec(_Strict):
    type: int = Field(ge=0, le=254)
    code: int | None = Field(default=None, ge=0, le=255)


class EntityRule(_Strict):
    selector: str | None = Field(default=None, max_length=4096)
    namespace_selector: str | None = Field(default=None, alias="namespaceSelector", max_length=4096)
    nets: list[Cidr] | None = None
    not_nets: list[Cidr] | None = Field(default=None, alias="notNets")
    ports: list[int | str] | None = None
    not_ports: list[int | str] | None = Field(default=None, alias="notPorts")


class GlobalRule(_Strict):
    action: Literal["Allow", "Deny", "Log", "Pass"]
    protocol: str | int | None = None
    icmp: IcmpSpec | None = None
    source: EntityRule = EntityRule()
    destination: EntityRule = EntityRule()


class GlobalNetworkPolicySpec(_Strict):
    order: float | None = Field(default=None, allow_inf_nan=False)
    selector: str = Field(default="all()", max_length=4096)
    namespace_selector: str | None = Field(default=None, alias="namespaceSelector", max_length=4096)
    types: list[Literal["Ingress", "Egress"]] | None = None
    ingress: list[GlobalRule] | None = None
    egress: list[GlobalRule] | None = None


class GlobalNetworkPolicyResource(_Strict):
    api_version: Literal["meshroute.io/v1"] = Field(alias="apiVersion")
    kind: Literal["GlobalNetworkPolicy"]
    metadata: Meta
    spec: GlobalNetworkPolicySpec = GlobalNetworkPolicySpec()


def parse_port(p: int | str) -> tuple[int, int] | str:
    """A Calico port: a number, ``first:last``, or a name (returned as is)."""
    if isinstance(p, int):
        return (p, p)
    m = re.fullmatch(r"(\d{1,5}):(\d{1,5})", p)
    if m:
        return (int(m.group(1)), int(m.group(2)))
    return p


def _gnp_port_problems(ports: list[int | str] | None, where: str) -> list[str]:
    out = []
    for i, p in enumerate(ports or []):
        got = parse_port(p)
        if isinstance(got, tuple):
            if not 0 <= got[0] <= got[1] <= 65535:
                out.append(f"{where}.{i}: {p!r} is not a port or range in 0..65535")
        elif problem := port_name_problem(got):
            out.append(f"{where}.{i}: {problem}")
    return out


def normal_protocol(p: str | int | None) -> str | None:
    """Calico's protocol spelling to nft's (``tcp``, ``icmpv6``, ``47``)."""
    if p is None:
        return None
    if isinstance(p, int):
        return {6: "tcp", 17: "udp", 132: "sctp", 1: "icmp", 58: "icmpv6"}.get(p, str(p))
    return p.lower()


def _rule_problems(r: GlobalRule, where: str) -> list[str]:
    out = []
    proto = r.protocol
    if isinstance(proto, int) and not 1 <= proto <= 255:
        out.append(f"{where}.protocol: {proto} is not in 1..255")
    if isinstance(proto, str) and proto not in PROTOCOLS:
        out.append(f"{where}.protocol: {proto[:20]!r} is not one of {', '.join(sorted(PROTOCOLS))}")
    p = normal_protocol(proto)
    if r.icmp is not None and p not in ("icmp", "icmpv6"):
        out.append(f"{where}.icmp: needs protocol ICMP or ICMPv6")
    for side in ("source", "destination"):
        e: EntityRule = getattr(r, side)
        w = f"{where}.{side}"
        for f, text in (("selector", e.selector), ("namespaceSelector", e.namespace_selector)):
            if text is not None and (problem := selector_problem(text)):
                out.append(f"{w}.{f}: {problem}")
        if (e.ports or e.not_ports) and p not in ("tcp", "udp", "sctp"):
            out.append(f"{w}.ports: ports need protocol TCP, UDP or SCTP")
        out += _gnp_port_problems(e.ports, f"{w}.ports")
        out += _gnp_port_problems(e.not_ports, f"{w}.notPorts")
    return out


def global_policy_problems(r: GlobalNetworkPolicyResource) -> list[str]:
    s = r.spec
    out = []
    for f, text in (
        ("spec.selector", s.selector),
        ("spec.namespaceSelector", s.namespace_selector),
    ):
        if text is not None and (problem := selector_problem(text)):
            out.append(f"{f}: {problem}")
    for i, rule in enumerate(s.ingress or []):
        out += _rule_problems(rule, f"spec.ingress.{i}")
    for i, rule in enumerate(s.egress or []):
        out += _rule_problems(rule, f"spec.egress.{i}")
    return out


# ---- meshroute.io/v1 Namespace ----------------------------------------------


class NamespaceResource(_Strict):
    api_version: Literal["meshroute.io/v1"] = Field(alias="apiVersion")
    kind: Literal["Namespace"]
    metadata: Meta


def namespace_problems(r: NamespaceResource) -> list[str]:
    out = []
    if not re.fullmatch(_DNS_LABEL, r.metadata.name):
        out.append(f"metadata.name: {r.metadata.name[:40]!r} is not a DNS label")
    return out + label_problems(r.metadata.labels, "metadata.labels")
