"""The node's service decisions, all pure (Kubernetes'
``externalTrafficPolicy: Local``, MetalLB's BGP mode, Calico's service
advertisement):

- ``plan_service_prefixes``: what this node advertises: the
  BGPConfiguration's service ranges as they are, and a host route for every
  ServiceAddress with a ready local endpoint (a WorkloadEndpoint of this
  node holding one of its endpoint addresses). The last local endpoint
  gone, the host route is withdrawn, so routers spread traffic by ECMP over
  exactly the nodes that serve it;
- ``plan_service_nat``: how this node delivers each address: to its local
  endpoints; with none (traffic in flight while routers converge on the
  withdrawal) to the cluster's ready endpoints, masqueraded, so no new
  connection fails meanwhile.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from netaddr import IPAddress, IPNetwork

from felix_lite.service_nat import ServiceNat, ServicePort
from meshroute.resources import BGPConfigurationSpec
from meshroute.service_resources import AddressKey, ServiceAddressSpec, address_key


def endpoint_addresses(
    endpoints: Iterable[tuple[str, Iterable[str | IPNetwork]]], node: str | None = None
) -> frozenset[IPAddress]:
    """The pod addresses of (node, host prefixes) of endpoint records, of
    ``node`` only when given."""
    return frozenset(
        IPNetwork(ip).ip for n, ips in endpoints if node is None or n == node for ip in ips
    )


def decide_local_endpoints(
    spec: ServiceAddressSpec, local: frozenset[AddressKey]
) -> tuple[IPAddress, ...]:
    return tuple(e for e, k in zip(spec.endpoints, spec.endpoint_keys, strict=True) if k in local)


def _keys(addresses: frozenset[IPAddress]) -> frozenset[AddressKey]:
    return frozenset(address_key(a) for a in addresses)


def plan_service_prefixes(
    config: BGPConfigurationSpec,
    services: Mapping[str, ServiceAddressSpec],
    local: frozenset[IPAddress],
) -> list[IPNetwork]:
    """Service ranges, then host routes of the addresses served here, each
    prefix once, in address order."""
    mine = _keys(local)
    out = {c.cidr for c in config.service_ranges()}
    out.update(s.host_prefix for s in services.values() if not mine.isdisjoint(s.endpoint_keys))
    return sorted(out, key=lambda c: (c.version, c.value, c.prefixlen))


def plan_service_nat(
    services: Mapping[str, ServiceAddressSpec],
    local: frozenset[IPAddress],
    ready: frozenset[IPAddress],
) -> tuple[ServiceNat, ...]:
    """``local``: this node's endpoint addresses; ``ready``: every node's.
    A service none of whose endpoints is ready anywhere gets no DNAT."""
    mine_keys, ready_keys = _keys(local), _keys(ready)
    out = []
    seen: set[AddressKey] = set()  # apply refuses a second; a stored one is skipped
    for _, spec in sorted(services.items()):
        if (key := address_key(spec.address)) in seen:
            continue
        seen.add(key)
        ports = tuple(ServicePort(p.protocol.lower(), p.port, p.target) for p in spec.ports)
        mine = decide_local_endpoints(spec, mine_keys)
        if mine:
            out.append(ServiceNat(spec.address, ports, mine))
            continue
        elsewhere = decide_local_endpoints(spec, ready_keys)
        if elsewhere:
            out.append(ServiceNat(spec.address, ports, elsewhere, masquerade=True))
    return tuple(out)
