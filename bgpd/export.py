"""What the node announces, and the commands that take the speaker from
what it has announced to that. Pure: no I/O, no clock.

The node announces only what it is the authority for: its own blocks and,
as host routes (/32, /128), the addresses it borrowed from other nodes'
blocks. Routes learned from peers are never re-announced (a node is not a
transit router; reflection is the reflector's job).

Communities: every announcement carries the configured communities, plus
those of each ``CommunityRule`` whose CIDR contains the prefix (like
Calico's BGPConfiguration ``prefixAdvertisements``), deduplicated and sorted
so the same inputs always give the same announcement. A community is an
``(asn, value)`` pair, each 0..65535 (RFC 1997).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from netaddr import IPAddress, IPNetwork

from bgpd.model import Announce, Withdraw

Community = tuple[int, int]
ExportKey = tuple[IPNetwork, IPAddress | None]  # (prefix, neighbour or None for all)


def validate_community(community: tuple[int, int]) -> Community:
    """The pair itself, or ValueError naming what is wrong."""
    if len(community) != 2:
        raise ValueError(f"community {community!r}: want (asn, value)")
    asn, value = community
    for name, part in (("asn", asn), ("value", value)):
        if isinstance(part, bool) or not isinstance(part, int) or not 0 <= part <= 65535:
            raise ValueError(f"community {community!r}: {name} must be an integer 0..65535")
    return (asn, value)


def parse_community(text: str) -> Community:
    """``"64512:100"`` -> ``(64512, 100)``."""
    asn, sep, value = text.strip().partition(":")
    if not sep or not asn.isdigit() or not value.isdigit():
        raise ValueError(f"community {text!r}: want ASN:VALUE, e.g. 64512:100")
    return validate_community((int(asn), int(value)))


@dataclass(frozen=True)
class CommunityRule:
    """Extra communities for announcements inside ``cidr``."""

    cidr: IPNetwork
    communities: tuple[Community, ...]

    def __post_init__(self) -> None:
        for c in self.communities:
            validate_community(c)


@dataclass(frozen=True)
class ExportPolicy:
    communities: tuple[Community, ...] = ()
    rules: tuple[CommunityRule, ...] = ()
    next_hop: IPAddress | None = None  # None: "next-hop self"
    local_pref: int | None = None

    def __post_init__(self) -> None:
        for c in self.communities:
            validate_community(c)


@dataclass(frozen=True)
class ExportPlan:
    announce: tuple[Announce, ...]  # new, or with changed attributes (replaces)
    withdraw: tuple[Withdraw, ...]


def _host_route(address: IPAddress) -> IPNetwork:
    return IPNetwork((int(address), 32 if address.version == 4 else 128), version=address.version)


def _sort_key(key: ExportKey) -> tuple[int, int, int, int, int]:
    prefix, neighbour = key
    n = (0, 0) if neighbour is None else (neighbour.version, int(neighbour))
    return (prefix.version, prefix.first, prefix.prefixlen, *n)


def _communities_for(prefix: IPNetwork, policy: ExportPolicy) -> tuple[Community, ...]:
    found = set(policy.communities)
    for rule in policy.rules:
        if rule.cidr.version == prefix.version and prefix in rule.cidr:
            found.update(rule.communities)
    return tuple(sorted(found))


def plan_exports(
    own_blocks: Iterable[IPNetwork],
    borrowed: Iterable[IPAddress],
    policy: ExportPolicy,
) -> dict[ExportKey, Announce]:
    """The announcements the node wants, keyed by (prefix, neighbour)."""
    prefixes = {IPNetwork(b).cidr for b in own_blocks}
    prefixes.update(_host_route(a) for a in borrowed)
    return {
        (p, None): Announce(
            prefix=p,
            next_hop=policy.next_hop,
            communities=_communities_for(p, policy),
            local_pref=policy.local_pref,
        )
        for p in prefixes
    }


def plan_announcements(
    desired: Mapping[ExportKey, Announce], announced: Mapping[ExportKey, Announce]
) -> ExportPlan:
    """Announce what is wanted and not announced as wanted; withdraw what is
    announced and no longer wanted. In prefix order, so plans are stable."""
    announce = [
        desired[k] for k in sorted(desired, key=_sort_key) if announced.get(k) != desired[k]
    ]
    withdraw = [
        Withdraw(prefix=k[0], neighbor=k[1])
        for k in sorted(announced, key=_sort_key)
        if k not in desired
    ]
    return ExportPlan(tuple(announce), tuple(withdraw))


def announced_after(
    announced: Mapping[ExportKey, Announce], plan: ExportPlan
) -> dict[ExportKey, Announce]:
    """What has been announced once the plan's commands were acknowledged."""
    after = dict(announced)
    for w in plan.withdraw:
        after.pop((w.prefix, w.neighbor), None)
    for a in plan.announce:
        after[(a.prefix, a.neighbor)] = a
    return after
