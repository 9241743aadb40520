"""A reference evaluator of Kubernetes NetworkPolicy, written from the
Kubernetes documentation and API reference, independent of meshroute's
lowering and compiler: is a connection from one pod to another, on a
protocol and port, allowed by these policies (plain manifest dicts)?"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from netaddr import IPAddress, IPNetwork

Manifest = Mapping[str, Any]


@dataclass(frozen=True)
class ModelPod:
    namespace: str
    name: str
    ips: tuple[IPAddress, ...]
    labels: Mapping[str, str] = field(default_factory=dict)
    ports: Mapping[str, tuple[str, int]] = field(default_factory=dict)  # name -> (PROTO, port)


def selector_matches(sel: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """LabelSelector: an empty selector matches everything; the
    requirements are ANDed."""
    sel = sel or {}
    for k, v in (sel.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for req in sel.get("matchExpressions") or []:
        key, op, values = req["key"], req["operator"], req.get("values") or []
        if op == "In" and not (key in labels and labels[key] in values):
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def policy_types(spec: Mapping[str, Any]) -> set[str]:
    if spec.get("policyTypes"):
        return set(spec["policyTypes"])
    return {"Ingress"} | ({"Egress"} if spec.get("egress") else set())


def _peer_matches(
    peer: Mapping[str, Any],
    policy_ns: str,
    other: ModelPod,
    other_ip: IPAddress,
    ns_labels: Mapping[str, Mapping[str, str]],
) -> bool:
    if "ipBlock" in peer:
        block = peer["ipBlock"]
        cidr = IPNetwork(block["cidr"])
        if other_ip.version != cidr.version or other_ip not in cidr:
            return False
        return not any(
            other_ip.version == IPNetwork(e).version and other_ip in IPNetwork(e)
            for e in block.get("except") or []
        )
    if "namespaceSelector" in peer:
        if not selector_matches(peer["namespaceSelector"], ns_labels[other.namespace]):
            return False
    elif other.namespace != policy_ns:
        return False
    return "podSelector" not in peer or selector_matches(peer["podSelector"], other.labels)


def _port_matches(p: Mapping[str, Any], dst: ModelPod, proto: str, port: int) -> bool:
    if p.get("protocol", "TCP") != proto:
        return False
    want = p.get("port")
    if want is None:
        return True
    if isinstance(want, str):
        named = dst.ports.get(want)
        return named is not None and named == (proto, port)
    return want <= port <= p.get("endPort", want)


def _rule_allows(
    rule: Mapping[str, Any],
    peers_key: str,
    policy_ns: str,
    other: ModelPod,
    other_ip: IPAddress,
    dst: ModelPod,
    proto: str,
    port: int,
    ns_labels: Mapping[str, Mapping[str, str]],
) -> bool:
    peers = rule.get(peers_key) or []
    if peers and not any(_peer_matches(p, policy_ns, other, other_ip, ns_labels) for p in peers):
        return False
    ports = rule.get("ports") or []
    return not ports or any(_port_matches(p, dst, proto, port) for p in ports)


def _direction_allows(
    direction: str,
    pod: ModelPod,
    other: ModelPod,
    other_ip: IPAddress,
    dst: ModelPod,
    proto: str,
    port: int,
    policies: Sequence[Manifest],
    ns_labels: Mapping[str, Mapping[str, str]],
) -> bool:
    selecting = [
        p
        for p in policies
        if p["metadata"]["namespace"] == pod.namespace
        and selector_matches(p["spec"].get("podSelector"), pod.labels)
        and direction in policy_types(p["spec"])
    ]
    if not selecting:
        return True  # not isolated in this direction
    key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    return any(
        _rule_allows(
            rule,
            peers_key,
            p["metadata"]["namespace"],
            other,
            other_ip,
            dst,
            proto,
            port,
            ns_labels,
        )
        for p in selecting
        for rule in p["spec"].get(key) or []
    )


def allowed(
    src: ModelPod,
    dst: ModelPod,
    family: int,
    proto: str,
    port: int,
    policies: Sequence[Manifest],
    ns_labels: Mapping[str, Mapping[str, str]],
) -> bool:
    """Both the source's egress and the destination's ingress must allow."""
    src_ip = next(ip for ip in src.ips if ip.version == family)
    dst_ip = next(ip for ip in dst.ips if ip.version == family)
    return _direction_allows(
        "Egress", src, dst, dst_ip, dst, proto, port, policies, ns_labels
    ) and _direction_allows("Ingress", dst, src, src_ip, dst, proto, port, policies, ns_labels)
