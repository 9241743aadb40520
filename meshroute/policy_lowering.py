"""From the stored policy resources, WorkloadEndpoint records and pools to
felix_lite's ``PolicyInput``: Kubernetes NetworkPolicy and Calico-style
GlobalNetworkPolicy both become felix_lite policies in Calico's rule model.
Pure.

Kubernetes' meanings kept here: ``policyTypes`` absent means Ingress, plus
Egress when there are egress rules; an absent or empty ``from``/``to`` is
every peer and absent or empty ``ports`` every port; a peer with only a
``podSelector`` is the policy's own namespace; ``namespaceSelector`` alone
is every pod of the matching namespaces; both in one peer is their AND. A
namespace carries the label ``kubernetes.io/metadata.name``.
"""

from __future__ import annotations

import functools
import json
import operator
import socket
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from netaddr import AddrFormatError, IPNetwork

from felix_lite.policy_inputs import (
    GLOBAL_TIER,
    NAMESPACED_TIER,
    Action,
    Direction,
    Endpoint,
    EntityMatch,
    NamedPort,
    NamespaceInfo,
    NatPool,
    Policy,
    PolicyInput,
    PortRange,
    Rule,
    Selector,
)
from ipam.model import Pool
from ipam.selector import parse_selector
from meshroute.policy_resources import (
    EntityRule,
    GlobalNetworkPolicyResource,
    GlobalRule,
    LabelSelector,
    NetworkPolicyPeer,
    NetworkPolicyPort,
    NetworkPolicyResource,
    normal_protocol,
    parse_port,
)
from meshroute.policy_store import PolicyState

NAME_LABEL = "kubernetes.io/metadata.name"
ALL = "all()"


def selector(text: str) -> Selector:
    return Selector(text, parse_selector(text))


def _quote(v: str) -> str:
    return f"'{v}'"


def k8s_selector_text(s: LabelSelector | None) -> str:
    """A Kubernetes LabelSelector in the project's selector syntax (label
    keys and values were validated: no quotes can appear)."""
    if s is None:
        return ALL
    terms = [f"{k} == {_quote(v)}" for k, v in sorted((s.match_labels or {}).items())]
    for r in s.match_expressions or []:
        values = ", ".join(_quote(v) for v in sorted(set(r.values or [])))
        terms.append(
            {
                "In": f"{r.key} in {{{values}}}",
                "NotIn": f"{r.key} not in {{{values}}}",
                "Exists": f"has({r.key})",
                "DoesNotExist": f"!has({r.key})",
            }[r.operator]
        )
    return " && ".join(terms) or ALL


def _k8s_peer(p: NetworkPolicyPeer, namespace: str) -> EntityMatch:
    if p.ip_block is not None:
        return EntityMatch(nets=(p.ip_block.cidr,), not_nets=tuple(p.ip_block.except_ or ()))
    pods = selector(k8s_selector_text(p.pod_selector))
    if p.namespace_selector is None:
        return EntityMatch(selector=pods, namespace=namespace)
    return EntityMatch(
        selector=pods, namespace_selector=selector(k8s_selector_text(p.namespace_selector))
    )


def _k8s_ports(
    ports: list[NetworkPolicyPort] | None,
) -> list[tuple[str | None, tuple[PortRange, ...]]]:
    """(protocol, ports) groups: one felix rule each. A port entry without
    a port is the whole protocol."""
    if not ports:
        return [(None, ())]
    by_proto: dict[str, list[PortRange] | None] = {}
    for p in ports:
        proto = p.protocol.lower()
        if p.port is None:
            by_proto[proto] = None
            continue
        have = by_proto.setdefault(proto, [])
        if have is None:
            continue
        if isinstance(p.port, str):
            have.append(PortRange(name=p.port))
        else:
            have.append(PortRange(p.port, p.end_port or p.port))
    return [(proto, tuple(rs or ())) for proto, rs in sorted(by_proto.items())]


def lower_network_policy(r: NetworkPolicyResource) -> Policy:
    ns = r.metadata.namespace
    s = r.spec
    types: set[str] = set(s.policy_types or [])
    if not types:
        types = {"Ingress"} | ({"Egress"} if s.egress else set())
    ingress = []
    for ing in s.ingress or []:
        peers = [_k8s_peer(p, ns) for p in ing.from_ or []] or [EntityMatch()]
        for proto, ports in _k8s_ports(ing.ports):
            for peer in peers:
                ingress.append(
                    Rule(Action.ALLOW, proto, source=peer, destination=EntityMatch(ports=ports))
                )
    egress = []
    for eg in s.egress or []:
        peers = [_k8s_peer(p, ns) for p in eg.to or []] or [EntityMatch()]
        for proto, ports in _k8s_ports(eg.ports):
            for peer in peers:
                dest = EntityMatch(
                    peer.selector,
                    peer.namespace_selector,
                    peer.namespace,
                    peer.nets,
                    peer.not_nets,
                    ports,
                )
                egress.append(Rule(Action.ALLOW, proto, destination=dest))
    return Policy(
        key=f"np/{ns}/{r.metadata.name}",
        tier=NAMESPACED_TIER,
        selector=selector(k8s_selector_text(s.pod_selector)),
        types=frozenset(Direction(t.lower()) for t in types),
        namespace=ns,
        ingress=tuple(ingress),
        egress=tuple(egress),
    )


def _ports(ports: list[int | str] | None) -> tuple[PortRange, ...]:
    out = []
    for p in ports or []:
        got = parse_port(p)
        out.append(PortRange(name=got) if isinstance(got, str) else PortRange(*got))
    return tuple(out)


def _entity(e: EntityRule) -> EntityMatch:
    return EntityMatch(
        selector=selector(e.selector) if e.selector is not None else None,
        namespace_selector=selector(e.namespace_selector)
        if e.namespace_selector is not None
        else None,
        nets=tuple(e.nets or ()),
        not_nets=tuple(e.not_nets or ()),
        ports=_ports(e.ports),
        not_ports=_ports(e.not_ports),
    )


def _global_rule(r: GlobalRule) -> Rule:
    return Rule(
        Action(r.action),
        normal_protocol(r.protocol),
        r.icmp.type if r.icmp else None,
        r.icmp.code if r.icmp else None,
        _entity(r.source),
        _entity(r.destination),
    )


def lower_global_policy(r: GlobalNetworkPolicyResource) -> Policy:
    s = r.spec
    if s.types:
        types = {Direction(t.lower()) for t in s.types}
    else:  # Calico's default
        types = {Direction.INGRESS} if s.ingress or not s.egress else set()
        types |= {Direction.EGRESS} if s.egress else set()
    return Policy(
        key=f"gnp/{r.metadata.name}",
        tier=GLOBAL_TIER,
        selector=selector(s.selector),
        types=frozenset(types),
        order=s.order,
        namespace_selector=selector(s.namespace_selector) if s.namespace_selector else None,
        ingress=tuple(_global_rule(x) for x in s.ingress or []),
        egress=tuple(_global_rule(x) for x in s.egress or []),
    )


_NAMESPACE = operator.attrgetter("namespace")


def plan_namespaces(state: PolicyState, endpoints: Iterable[Endpoint]) -> tuple[NamespaceInfo, ...]:
    labels: dict[str, dict[str, str]] = defaultdict(dict)
    for ns in set(map(_NAMESPACE, endpoints)):  # one C-level pass over thousands of pods
        labels[ns]
    for n in state.namespaces:
        labels[n.metadata.name].update(n.metadata.labels or {})
    for p in state.network_policies:
        labels[p.metadata.namespace]
    for name, lb in labels.items():
        lb[NAME_LABEL] = name
    return tuple(NamespaceInfo(n, tuple(sorted(lb.items()))) for n, lb in sorted(labels.items()))


def lower_policies(state: PolicyState) -> tuple[Policy, ...]:
    return tuple(
        [lower_global_policy(r) for r in state.global_policies]
        + [lower_network_policy(r) for r in state.network_policies]
    )


class PolicyLowering:
    """``lower_policies`` with memory: a resource object that was lowered
    last time keeps its ``Policy`` object, so a change to one of 500
    policies lowers one, and the compiler's comparisons of the rest are
    identity checks. (``PolicyStore.load`` keeps the objects of records
    that did not change.)"""

    def __init__(self) -> None:
        self._last: dict[int, tuple[object, Policy]] = {}

    def __call__(self, state: PolicyState) -> tuple[Policy, ...]:
        seen: dict[int, tuple[object, Policy]] = {}

        def one(r: object, lower: Callable[[], Policy]) -> Policy:
            got = self._last.get(id(r))
            if got is None or got[0] is not r:  # the id of an object since freed
                got = (r, lower())
            seen[id(r)] = got
            return got[1]

        out = [one(r, functools.partial(lower_global_policy, r)) for r in state.global_policies]
        out += [one(r, functools.partial(lower_network_policy, r)) for r in state.network_policies]
        self._last = seen
        return tuple(out)


def plan_policy_input(
    node: str,
    state: PolicyState,
    endpoints: tuple[Endpoint, ...],
    pools: Iterable[Pool],
    policies: tuple[Policy, ...] | None = None,
) -> PolicyInput:
    """``policies``: ``lower_policies(state)`` when the caller kept them."""
    return PolicyInput(
        node=node,
        endpoints=endpoints,
        namespaces=plan_namespaces(state, endpoints),
        policies=lower_policies(state) if policies is None else policies,
        pools=tuple(NatPool(p.cidr, p.nat_outgoing) for p in pools if not p.disabled),
    )


# ---- WorkloadEndpoint records (written by the CNI path) --------------------


class EndpointRecordError(ValueError):
    pass


def _str(d: Mapping[str, Any], k: str, limit: int = 253) -> str:
    v = d.get(k)
    if not isinstance(v, str) or not v or len(v) > limit:
        raise EndpointRecordError(f"{k}: expected a string of 1..{limit} characters")
    return v


def _host_iface(d: Mapping[str, Any]) -> str:
    """ "" when the pod's host side is not a veth of ours (a bridge plugin's):
    its addresses still fill selector sets, but no rule can sit in its path."""
    v = d.get("hostIface", "")
    if not isinstance(v, str) or len(v) > 15:
        raise EndpointRecordError("hostIface: expected an interface name of at most 15 characters")
    return v


def _ip_network(x: object) -> IPNetwork:
    """``ADDRESS/PREFIXLEN`` (or an address alone) as netaddr reads it, by
    way of libc: a node's start parses every pod's addresses, and netaddr's
    own parser costs several times more (five times for IPv6)."""
    if not isinstance(x, str):
        raise ValueError(f"not an address: {x!r:.40}")
    addr, slash, plen = x.partition("/")
    fam, af, bits = (6, socket.AF_INET6, 128) if ":" in addr else (4, socket.AF_INET, 32)
    try:
        value = int.from_bytes(socket.inet_pton(af, addr), "big")
    except OSError as e:
        raise ValueError(f"not an IPv{fam} address: {addr[:40]!r}") from e
    if slash and not (plen.isascii() and plen.isdigit() and len(plen) <= 3):
        raise ValueError(f"bad prefix length: {plen[:10]!r}")
    return IPNetwork((value, int(plen) if slash else bits), version=fam)


def endpoint_from_record(raw: bytes) -> Endpoint:
    """A WorkloadEndpoint record's JSON as felix_lite's Endpoint."""
    try:
        d = json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise EndpointRecordError(f"not JSON: {e}") from e
    if not isinstance(d, dict):
        raise EndpointRecordError("not a JSON object")
    try:
        ips = tuple(_ip_network(x) for x in d.get("ips") or [])
        labels = d.get("labels") or {}
        if not isinstance(labels, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
        ):
            raise EndpointRecordError("labels: expected a map of strings")
        ports = tuple(
            NamedPort(str(p["name"]), str(p.get("protocol", "TCP")).lower(), int(p["port"]))
            for p in d.get("ports") or []
        )
    except (KeyError, TypeError, ValueError, AddrFormatError) as e:
        raise EndpointRecordError(f"bad field: {str(e)[:100]}") from e
    return Endpoint(
        node=_str(d, "node"),
        namespace=_str(d, "namespace", 63),
        pod=_str(d, "pod"),
        iface=_host_iface(d),
        ips=tuple(ip for ip in ips),
        labels=tuple(sorted(labels.items())),
        ports=ports,
    )
