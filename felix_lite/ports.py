"""The ports the reconciler drives: the kernel route table, the VXLAN
neighbour/FDB tables and the tunnel devices (the host's links and addresses
are read by ``felix_lite.netlink_host``).

Two implementations each: ``felix_lite.fake_table`` (in memory, for unit and
property tests) and the netlink adapters (``felix_lite.netlink_table``,
``felix_lite.tunnels``). One contract suite
(``tests/integration/test_route_table_contract.py``) runs against both.

Conventions every implementation follows:

- Everything is ``async``; an adapter that blocks does so off the event loop
  (its own thread or ``asyncio.to_thread``).
- Routes carry interface *names*; the adapter resolves them to indexes. An
  unknown name is a per-route failure (``ENODEV``), not an exception.
- ``apply_*`` never raises for a bad item: it returns one ``OpFailure`` per
  item the kernel refused (errno from the NLMSG_ERROR that answered that
  item's message), and applies every other item of the batch. Exceptions are
  for a broken channel (socket closed, namespace gone).
- Route ops:
  ``ADD``     -> RTM_NEWROUTE with NLM_F_CREATE|NLM_F_EXCL: the key (table,
                 dst, tos 0, metric 0) must be free. A foreign route already
                 there makes it fail with EEXIST, so we never overwrite it.
  ``REPLACE`` -> RTM_NEWROUTE with NLM_F_CREATE|NLM_F_REPLACE: used only for
                 keys the reconciler already owns (seen in ``dump_owned``).
  ``DELETE``  -> RTM_DELROUTE carrying our protocol number, so the kernel
                 itself refuses to delete a route of another protocol.
  All carry ``proto``; the MTU goes in RTA_METRICS; ``onlink`` is
  RTNH_F_ONLINK; several next hops are one RTA_MULTIPATH.
- ``dump_owned`` yields only routes whose protocol is ``proto`` in ``table``
  (unicast with next hops, or blackhole), streamed: it must not build the
  whole dump as a list (100k routes through pyroute2 cost ~400 MB).
  ``KernelRoute.kind`` of a dumped route is the adapter's best guess (see
  ``felix_lite.delta.decide_route_equal``: only blackhole-or-not matters).
- Neighbour and FDB ops: ``REPLACE`` (create or update, NUD_PERMANENT) and
  ``DELETE``. Every permanent neighbour and every FDB entry with a
  destination on the VXLAN device is owned by felix_lite (the device is ours).
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, NamedTuple, Protocol, TypeVar

from felix_lite.model import FdbEntry, IpipDevice, KernelRoute, NeighborEntry, VxlanDevice

T = TypeVar("T")


class Op(enum.Enum):
    ADD = "add"
    REPLACE = "replace"
    DELETE = "delete"


class RouteOp(NamedTuple):
    """A named tuple, not a dataclass: a full pass makes one per route, and a
    frozen dataclass costs three times as much to build."""

    op: Op
    route: KernelRoute


@dataclass(frozen=True)
class NeighborOp:
    op: Op  # REPLACE or DELETE
    entry: NeighborEntry


@dataclass(frozen=True)
class FdbOp:
    op: Op  # REPLACE or DELETE
    entry: FdbEntry


@dataclass(frozen=True)
class OpFailure(Generic[T]):
    """The kernel refused one item of a batch. ``errno`` is positive
    (``errno.EEXIST``...); ``message`` is for humans and logs."""

    item: T
    errno: int
    message: str = ""


class RouteTable(Protocol):
    def dump_owned(
        self, proto: int, table: int, known: Mapping[tuple[int, str], KernelRoute] | None = None
    ) -> AsyncIterator[KernelRoute]:
        """Stream the routes of protocol ``proto`` in ``table``. A route the
        kernel holds exactly as ``known[route.key]`` (by
        ``delta.decide_route_equal``) may be yielded as that very object:
        a resync that finds everything in place builds nothing."""
        ...

    async def apply_routes(self, ops: Sequence[RouteOp], proto: int) -> list[OpFailure[RouteOp]]:
        """Apply a batch: ``batch_size`` upserts or up to ``delete_batch_size``
        (32k) deletes. The reconciler keeps ``batches_ahead`` batches ahead,
        so several calls of one pass may be in flight at once and may reach
        the kernel in any order (no two ops of a pass share a key)."""
        ...

    async def dump_neighbors(self, ifname: str) -> list[NeighborEntry]:
        """Permanent neighbours on ``ifname``; empty if the device is missing."""
        ...

    async def apply_neighbors(self, ops: Sequence[NeighborOp]) -> list[OpFailure[NeighborOp]]: ...

    async def dump_fdb(self, ifname: str) -> list[FdbEntry]:
        """FDB entries with a destination on ``ifname``; empty if missing."""
        ...

    async def apply_fdb(self, ops: Sequence[FdbOp]) -> list[OpFailure[FdbOp]]: ...


class TunnelDevices(Protocol):
    """Creates and configures tunnel devices idempotently. ``None`` means the
    mode is off: remove (or, for the kernel's fallback ``tunl0``, bring down
    and strip) what meshroute created; the adapter recognises its own devices
    itself (for instance by an ifalias), so this works after a restart.
    Raise on failure; the reconciler retries with backoff."""

    async def apply_ipip(self, desired: IpipDevice | None) -> None: ...

    async def apply_vxlan(self, desired: VxlanDevice | None) -> None: ...

    async def apply_vxlan6(self, desired: VxlanDevice | None) -> None: ...
