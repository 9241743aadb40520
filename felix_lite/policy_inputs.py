"""What the policy compiler is told: the cluster's workload endpoints, the
namespaces' labels, the policies (Kubernetes NetworkPolicy and
GlobalNetworkPolicy, both already lowered to Calico's rule model by the
composition root) and the IP pools (for natOutgoing).

felix_lite owns these types. Selectors arrive as ``Selector`` values: the
text (which names the nftables set of their members) and a predicate built by
the root from the project's selector parser, so felix_lite never imports it.
"""

from __future__ import annotations

import enum
import functools
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from netaddr import IPNetwork

Labels = Mapping[str, str]


@dataclass(frozen=True)
class Selector:
    text: str
    match: Callable[[Labels], bool] = field(compare=False, hash=False, repr=False)


class Direction(enum.Enum):
    INGRESS = "ingress"
    EGRESS = "egress"


class Action(enum.Enum):
    ALLOW = "Allow"
    DENY = "Deny"
    LOG = "Log"
    PASS = "Pass"


_AF = {4: (socket.AF_INET, 4), 6: (socket.AF_INET6, 16)}


def _text(net: IPNetwork) -> str:
    """``str(net.ip)``: the same canonical text (both follow RFC 5952), from
    libc at a sixth of netaddr's cost, which a full compile pays per pod."""
    af, size = _AF[net.version]
    return socket.inet_ntop(af, net.value.to_bytes(size, "big"))


@dataclass(frozen=True)
class NamedPort:
    name: str
    protocol: str  # "tcp", "udp" or "sctp"
    port: int


@dataclass(frozen=True)
class Endpoint:
    """One pod interface of the cluster. Endpoints of other nodes matter
    too: their addresses fill the selector sets."""

    node: str
    namespace: str
    pod: str
    iface: str  # the host side of the pod's veth; "" when it has none of ours (bridged)
    ips: tuple[IPNetwork, ...]
    labels: tuple[tuple[str, str], ...] = ()
    ports: tuple[NamedPort, ...] = ()

    def __hash__(self) -> int:
        return self._hash

    @functools.cached_property
    def _hash(self) -> int:
        # equal endpoints have equal identities: hashing the addresses
        # (netaddr objects) would cost more than the set lookups it serves;
        # kept, as the compiler hashes every endpoint on each pod change
        return hash((self.node, self.namespace, self.pod, self.iface))

    @property
    def label_map(self) -> dict[str, str]:
        return dict(self.labels)

    @functools.cached_property
    def addresses(self) -> dict[int, tuple[str, ...]]:
        """The addresses as nft writes them, by family."""
        return {fam: tuple(_text(ip) for ip in self.ips if ip.version == fam) for fam in (4, 6)}


@dataclass(frozen=True)
class NamespaceInfo:
    name: str
    labels: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class PortRange:
    """A numbered range (``first``..``last``) or a named port (``name``)."""

    first: int = 0
    last: int = 0
    name: str | None = None


@dataclass(frozen=True)
class EntityMatch:
    """One side (source or destination) of a rule, as in Calico.

    The side is restricted to workload endpoints when ``selector``,
    ``namespace_selector`` or ``namespace`` is set: the endpoint's labels
    match ``selector`` (absent: any), and its namespace is ``namespace``
    or has labels matching ``namespace_selector`` (neither: any namespace).
    """

    selector: Selector | None = None
    namespace_selector: Selector | None = None
    namespace: str | None = None
    nets: tuple[IPNetwork, ...] = ()
    not_nets: tuple[IPNetwork, ...] = ()
    ports: tuple[PortRange, ...] = ()
    not_ports: tuple[PortRange, ...] = ()

    @property
    def selects_endpoints(self) -> bool:
        return (
            self.selector is not None
            or self.namespace_selector is not None
            or self.namespace is not None
        )


@dataclass(frozen=True)
class Rule:
    action: Action
    protocol: str | None = None  # "tcp", "udp", "sctp", "icmp", "icmpv6" or a number
    icmp_type: int | None = None
    icmp_code: int | None = None
    source: EntityMatch = EntityMatch()
    destination: EntityMatch = EntityMatch()


GLOBAL_TIER = 0
NAMESPACED_TIER = 1


@dataclass(frozen=True)
class Policy:
    """``key`` names the policy in counters and chains (``gnp/NAME``,
    ``np/NAMESPACE/NAME``). A namespaced policy (``namespace`` set) applies
    to that namespace's endpoints only."""

    key: str
    tier: int
    selector: Selector
    types: frozenset[Direction]
    order: float | None = None
    namespace: str | None = None
    namespace_selector: Selector | None = None
    ingress: tuple[Rule, ...] = ()
    egress: tuple[Rule, ...] = ()


@dataclass(frozen=True)
class NatPool:
    cidr: IPNetwork
    nat_outgoing: bool


@dataclass(frozen=True)
class PolicyInput:
    node: str
    endpoints: tuple[Endpoint, ...] = ()
    namespaces: tuple[NamespaceInfo, ...] = ()
    policies: tuple[Policy, ...] = ()
    pools: tuple[NatPool, ...] = ()
