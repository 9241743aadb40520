"""The policy reconciler: owns table ``inet meshroute`` whole and keeps it
equal to the compiler's desired ruleset. Level-triggered:

- ``set_desired`` stores the ruleset and marks the reconciler dirty; the
  loop in ``run`` does the work, so a burst of changes costs one pass.
- A *full* pass (at start, every ``resync_interval`` seconds, after a
  refused transaction) reads the table back with ``nft -j`` and diffs against
  that: after a restart the previous run's table is adopted, and only what
  differs changes. Incremental passes diff against what the last successful
  transaction left.
- Every pass is one transaction (one ``nft -f`` script, through the port:
  ``felix_lite.nft_lib.NftLib`` in the node). When nft refuses it, the
  kernel keeps the last good ruleset (nft applies all or nothing); the
  error is logged and counted and the pass retried after a backoff.
- Nothing is written before the first ``set_desired``: a restarted process
  leaves the last ruleset enforcing until it knows what it wants.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from felix_lite.nft_model import FAMILY, TABLE, RuleCounter, Ruleset, TableState
from felix_lite.nft_script import parse_table_json, plan_nft_script

log = logging.getLogger(__name__)


class NftError(Exception):
    """nft refused a transaction or could not run."""


class NftPort(Protocol):
    """What the reconciler needs of nftables: ``NftLib`` (libnftables in
    this process) or ``NftCli`` (an ``nft`` process per call)."""

    async def read(self, terse: bool = False) -> str | None: ...

    async def apply(self, script: str) -> None: ...


class NftCli:
    """The ``nft`` command, in a network namespace or not: a process per call."""

    def __init__(self, netns: str | None = None, nft: str = "nft") -> None:
        self.argv: tuple[str, ...] = ("ip", "netns", "exec", netns, nft) if netns else (nft,)

    async def _run(self, args: Sequence[str], stdin: bytes | None = None) -> tuple[int, str, str]:
        p = await asyncio.create_subprocess_exec(
            *self.argv,
            *args,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await p.communicate(stdin)
        return p.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")

    async def read(self, terse: bool = False) -> str | None:
        """``nft -j list table inet meshroute``; None when there is no table.
        ``terse``: without set and map elements (``nft -t``), which are most
        of the output on a node with thousands of pods."""
        return listed(*await self._run(["-j", *(["-t"] if terse else []), *LIST_TABLE]))

    async def apply(self, script: str) -> None:
        applied(*await self._run(["-f", "-"], stdin=script.encode()))


LIST_TABLE = ("list", "table", FAMILY, TABLE)


def listed(rc: int, out: str, err: str) -> str | None:
    """A port's answer to listing the table: its text, None when there is
    no table, NftError for anything else."""
    if rc != 0:
        if "No such file or directory" in err:
            return None
        raise NftError(f"nft list failed: {err.strip()[:300]}")
    return out


def applied(rc: int, out: str, err: str) -> None:
    """A port's answer to a transaction: NftError when nft refused it."""
    if rc != 0:
        raise NftError(err.strip()[:2000] or f"nft exited {rc}")


@dataclass(frozen=True)
class PolicyPass:
    full: bool
    statements: int
    seconds: float
    error: str | None = None


class PolicyReconciler:
    def __init__(
        self,
        nft: NftPort,
        resync_interval: float = 10.0,
        backoff_initial: float = 0.2,
        backoff_max: float = 30.0,
        counters: NftPort | None = None,
    ) -> None:
        self.nft = nft
        # The periodic counter read may take a port of its own: a read of a
        # large table through the one libnftables context would hold up the
        # next transaction (a pod add) for as long as it takes.
        self.counters_nft = counters or nft
        self.resync_interval = resync_interval
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.desired: Ruleset | None = None
        self.actual: TableState | None = None
        self.known = False  # whether ``actual`` reflects the kernel
        self.counters: tuple[RuleCounter, ...] = ()
        self.failures = 0  # refused transactions since start
        self.consecutive_failures = 0
        self.last_error: str | None = None
        self.applied = 0  # transactions that changed something
        self.last_pass: PolicyPass | None = None
        self._dirty = asyncio.Event()
        self._converged = asyncio.Event()
        self._next_full = 0.0

    def set_desired(self, ruleset: Ruleset) -> None:
        if ruleset == self.desired:
            return
        self.desired = ruleset
        self._converged.clear()
        self._dirty.set()

    @property
    def converged(self) -> bool:
        return self._converged.is_set()

    async def wait_converged(self) -> None:
        await self._converged.wait()

    async def run(self) -> None:
        while True:
            timeout = max(0.0, self._next_full - time.monotonic())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout if self.known else None):
                    await self._dirty.wait()
            self._dirty.clear()
            if self.desired is None:
                continue
            result = await self.pass_once()
            if result.error is not None:
                delay = min(
                    self.backoff_max,
                    self.backoff_initial * 2 ** max(0, self.consecutive_failures - 1),
                )
                await asyncio.sleep(delay)
                self._dirty.set()

    async def refresh_counters(self) -> None:
        """Read the kernel's counters without changing anything (rules
        only: counters live in rules, and the elements are not needed)."""
        text = await self.counters_nft.read(terse=True)
        state = None if text is None else await asyncio.to_thread(parse_table_json, text)
        self.counters = state.counters if state else ()

    async def pass_once(self, full: bool | None = None) -> PolicyPass:
        """One pass: diff (against the kernel when full) and one transaction."""
        assert self.desired is not None
        desired = self.desired
        start = time.monotonic()
        full = (not self.known or start >= self._next_full) if full is None else full
        if full:
            text = await self.nft.read()
            self.actual = None if text is None else await asyncio.to_thread(parse_table_json, text)
            self.counters = self.actual.counters if self.actual else ()
            self.known = True
            self._next_full = start + self.resync_interval
        lines = await asyncio.to_thread(plan_nft_script, desired, self.actual)
        if lines:
            try:
                await self.nft.apply("\n".join(lines) + "\n")
            except NftError as e:
                self.failures += 1
                self.consecutive_failures += 1
                self.last_error = str(e)
                self.known = False  # re-read: the kernel kept the last good ruleset
                log.error("nft refused the policy transaction (kept the last one): %s", e)
                self.last_pass = PolicyPass(full, len(lines), time.monotonic() - start, str(e))
                return self.last_pass
            self.applied += 1
            self.actual = TableState.of(desired)
        self.consecutive_failures = 0
        if self.desired is desired:
            self._converged.set()
        self.last_pass = PolicyPass(full, len(lines), time.monotonic() - start)
        return self.last_pass
