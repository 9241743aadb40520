"""The IPAM records kept in the datastore, as frozen values with their JSON
form: pools, blocks (with their allocations), affinities, handles and the
cluster-wide IPAM settings. Validation of pools lives in ``pool_rules``;
pod interfaces' WorkloadEndpoint records in ``endpoint``."""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from netaddr import IPAddress, IPNetwork

from ipam.endpoint import WorkloadEndpoint


class EncapMode(enum.Enum):
    ALWAYS = "Always"
    CROSS_SUBNET = "CrossSubnet"
    NEVER = "Never"


class Use(enum.Enum):
    WORKLOAD = "Workload"
    TUNNEL = "Tunnel"


@dataclass(frozen=True)
class Pool:
    name: str
    cidr: IPNetwork
    block_size: int
    ipip_mode: EncapMode = EncapMode.NEVER
    vxlan_mode: EncapMode = EncapMode.NEVER
    nat_outgoing: bool = False
    disabled: bool = False
    node_selector: str = "all()"
    allowed_uses: tuple[Use, ...] = (Use.WORKLOAD, Use.TUNNEL)

    @property
    def version(self) -> int:
        return int(self.cidr.version)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "cidr": str(self.cidr),
            "blockSize": self.block_size,
            "ipipMode": self.ipip_mode.value,
            "vxlanMode": self.vxlan_mode.value,
            "natOutgoing": self.nat_outgoing,
            "disabled": self.disabled,
            "nodeSelector": self.node_selector,
            "allowedUses": [u.value for u in self.allowed_uses],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Pool:
        return cls(
            name=d["name"],
            cidr=IPNetwork(d["cidr"]),
            block_size=int(d["blockSize"]),
            ipip_mode=EncapMode(d.get("ipipMode", "Never")),
            vxlan_mode=EncapMode(d.get("vxlanMode", "Never")),
            nat_outgoing=bool(d.get("natOutgoing", False)),
            disabled=bool(d.get("disabled", False)),
            node_selector=d.get("nodeSelector", "all()"),
            allowed_uses=tuple(Use(u) for u in d.get("allowedUses", ["Workload", "Tunnel"])),
        )


@dataclass(frozen=True)
class Allocation:
    """One assigned address of a block. ``seq`` is the block's sequence number
    when it was assigned: a release that names an older seq is stale."""

    handle: str
    seq: int
    attrs: Mapping[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"handle": self.handle, "seq": self.seq, "attrs": dict(self.attrs)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Allocation:
        return cls(handle=d["handle"], seq=int(d["seq"]), attrs=dict(d.get("attrs", {})))


RESERVED_HANDLE_PREFIX = "reserved:"


@dataclass(frozen=True)
class Block:
    """A pool's slice handed to one host (``affinity``). Addresses are
    ordinals from the block's first address."""

    cidr: IPNetwork
    pool: str
    affinity: str | None
    created: float
    seq: int = 0
    allocations: Mapping[int, Allocation] = field(default_factory=dict)
    cursor: int = -1  # the ordinal assigned last; the search resumes after it

    @property
    def size(self) -> int:
        return int(self.cidr.size)

    def address(self, ordinal: int) -> IPAddress:
        return IPAddress(int(self.cidr.first) + ordinal, self.cidr.version)

    def ordinal(self, ip: IPAddress) -> int:
        return int(ip) - int(self.cidr.first)

    @property
    def workload_count(self) -> int:
        return sum(
            1 for a in self.allocations.values() if not a.handle.startswith(RESERVED_HANDLE_PREFIX)
        )

    @property
    def free_count(self) -> int:
        return self.size - len(self.allocations)

    def with_allocations(
        self, allocations: Mapping[int, Allocation], seq: int, cursor: int | None = None
    ) -> Block:
        return replace(
            self,
            allocations=dict(allocations),
            seq=seq,
            cursor=self.cursor if cursor is None else cursor,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "cidr": str(self.cidr),
            "pool": self.pool,
            "affinity": self.affinity,
            "created": self.created,
            "seq": self.seq,
            "cursor": self.cursor,
            "allocations": {str(k): v.to_dict() for k, v in sorted(self.allocations.items())},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Block:
        return cls(
            cidr=IPNetwork(d["cidr"]),
            pool=d["pool"],
            affinity=d.get("affinity"),
            created=float(d.get("created", 0.0)),
            seq=int(d.get("seq", 0)),
            allocations={int(k): Allocation.from_dict(v) for k, v in d["allocations"].items()},
            cursor=int(d.get("cursor", -1)),
        )


class AffinityState(enum.Enum):
    PENDING = "pending"  # claim started: the block may or may not exist yet
    CONFIRMED = "confirmed"
    PENDING_DELETION = "pendingDeletion"  # release started


@dataclass(frozen=True)
class Affinity:
    host: str
    cidr: IPNetwork
    state: AffinityState
    since: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "cidr": str(self.cidr),
            "state": self.state.value,
            "since": self.since,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Affinity:
        return cls(
            host=d["host"],
            cidr=IPNetwork(d["cidr"]),
            state=AffinityState(d["state"]),
            since=float(d.get("since", 0.0)),
        )


@dataclass(frozen=True)
class Handle:
    """Which blocks hold addresses of one handle (container id + interface),
    and how many in each. Written in the same transaction as the blocks."""

    handle: str
    blocks: Mapping[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"handle": self.handle, "blocks": dict(sorted(self.blocks.items()))}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Handle:
        return cls(handle=d["handle"], blocks={k: int(v) for k, v in d["blocks"].items()})


@dataclass(frozen=True)
class IpamSettings:
    """Cluster-wide IPAM behaviour (Calico's IPAMConfiguration)."""

    strict_affinity: bool = False
    max_blocks_per_host: int = 0  # 0: unlimited
    min_block_age_s: float = 300.0  # an empty affine block is released after this

    def to_dict(self) -> dict[str, Any]:
        return {
            "strictAffinity": self.strict_affinity,
            "maxBlocksPerHost": self.max_blocks_per_host,
            "minBlockAgeSeconds": self.min_block_age_s,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> IpamSettings:
        return cls(
            strict_affinity=bool(d.get("strictAffinity", False)),
            max_blocks_per_host=int(d.get("maxBlocksPerHost", 0)),
            min_block_age_s=float(d.get("minBlockAgeSeconds", 300.0)),
        )


@dataclass(frozen=True)
class Snapshot:
    """Everything IPAM keeps, read in one consistent listing."""

    pools: dict[str, Pool]
    blocks: dict[str, tuple[Block, int]]  # str(cidr) -> (block, mod_revision)
    affinities: dict[tuple[str, str], tuple[Affinity, int]]  # (host, cidr)
    handles: dict[str, tuple[Handle, int]]
    settings: IpamSettings
    revision: int
    endpoints: dict[tuple[str, str], tuple[WorkloadEndpoint, int]] = field(
        default_factory=dict
    )  # (node, handle)


def dumps(d: Mapping[str, Any]) -> bytes:
    return json.dumps(d, separators=(",", ":"), sort_keys=True).encode()


def loads(b: bytes) -> Any:
    return json.loads(b)
