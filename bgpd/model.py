"""The values bgpd speaks in: peers, paths, the events ExaBGP reports and the
commands it takes, and the best routes it hands to its user. Shared by the
codec, the speaker, the RIB and policy; plain frozen values, no I/O."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from netaddr import IPAddress, IPNetwork


class Origin(enum.IntEnum):
    IGP = 0
    EGP = 1
    INCOMPLETE = 2


class SessionState(enum.Enum):
    IDLE = "idle"
    CONNECT = "connect"  # TCP up, OPEN not yet exchanged ("connected" in ExaBGP)
    ESTABLISHED = "established"  # ExaBGP: "up"
    DOWN = "down"


@dataclass(frozen=True, slots=True)
class PathAttrs:
    next_hop: IPAddress
    as_path: tuple[int, ...] = ()
    origin: Origin = Origin.IGP
    local_pref: int | None = None  # None: not sent (eBGP); 100 assumed for iBGP
    med: int | None = None
    communities: tuple[tuple[int, int], ...] = ()
    originator_id: IPAddress | None = None
    cluster_list: tuple[IPAddress, ...] = ()


@dataclass(frozen=True, slots=True)
class Path:
    """One route as received from one peer. Slots on the per-prefix values
    (Path, PathAttrs, BestRoute): the RIB holds one Path and one BestRoute per
    prefix, ~350 bytes each with a __dict__, ~100 without."""

    prefix: IPNetwork
    peer: IPAddress
    peer_as: int
    peer_router_id: IPAddress | None
    ebgp: bool
    attrs: PathAttrs


# ---- events from ExaBGP ----------------------------------------------------


@dataclass(frozen=True)
class StateEvent:
    peer: IPAddress
    peer_as: int | None
    state: SessionState
    reason: str = ""


@dataclass(frozen=True)
class OpenEvent:
    """The peer's OPEN: its AS and router id (needed by best path)."""

    peer: IPAddress
    peer_as: int
    router_id: IPAddress
    direction: str  # "receive" | "send"


@dataclass(frozen=True)
class UpdateEvent:
    peer: IPAddress
    peer_as: int
    announced: tuple[tuple[IPNetwork, PathAttrs], ...] = ()
    withdrawn: tuple[IPNetwork, ...] = ()


@dataclass(frozen=True)
class EorEvent:
    peer: IPAddress
    family: str  # "ipv4 unicast"


@dataclass(frozen=True)
class NotificationEvent:
    peer: IPAddress
    code: int
    subcode: int
    data: str = ""


@dataclass(frozen=True)
class AckEvent:
    """ExaBGP's answer to one API command: ``done`` or ``error``."""

    ok: bool
    text: str = ""


@dataclass(frozen=True)
class ExabgpNotice:
    """ExaBGP's own notification, not from a peer: ``shutdown`` when it
    stops (expected on every clean stop, not an error)."""

    text: str


@dataclass(frozen=True)
class MalformedLine:
    """A line the codec could not understand; logged and counted, never fatal."""

    line: str
    reason: str


Event = (
    StateEvent
    | OpenEvent
    | UpdateEvent
    | EorEvent
    | NotificationEvent
    | AckEvent
    | ExabgpNotice
    | MalformedLine
)


# ---- commands to ExaBGP ----------------------------------------------------


@dataclass(frozen=True)
class Announce:
    prefix: IPNetwork
    next_hop: IPAddress | None  # None: "next-hop self"
    communities: tuple[tuple[int, int], ...] = ()
    local_pref: int | None = None
    neighbor: IPAddress | None = None  # None: every neighbour


@dataclass(frozen=True)
class Withdraw:
    prefix: IPNetwork
    neighbor: IPAddress | None = None


@dataclass(frozen=True)
class SendEor:
    family: str = "ipv4 unicast"
    neighbor: IPAddress | None = None


@dataclass(frozen=True)
class RouteRefresh:
    family: str = "ipv4 unicast"
    neighbor: IPAddress | None = None


@dataclass(frozen=True)
class Teardown:
    """Close an established session with a Cease NOTIFICATION (RFC 4486);
    subcode 10 is "BFD Down" (RFC 9384)."""

    neighbor: IPAddress
    subcode: int = 10


Command = Announce | Withdraw | SendEor | RouteRefresh | Teardown


# ---- what bgpd hands its user ---------------------------------------------


@dataclass(frozen=True, slots=True)
class BestRoute:
    """The winning next hops for one prefix (several: ECMP) and why."""

    prefix: IPNetwork
    next_hops: tuple[IPAddress, ...]
    reason: str = ""
