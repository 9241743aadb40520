"""The node's packet-filter part: policy resources, namespaces, workload
endpoints and pools from etcd, lowered and compiled for this node, with the
DNAT of the ServiceAddresses (``services_plan``, felix_lite's
``service_nat``) merged in, handed to felix_lite's policy reconciler (which
owns table ``inet meshroute``).

``mark_dirty`` is all an etcd change does; ``run`` re-reads and compiles
(level-triggered, a burst of changes costs one pass). Counters are read
back from the kernel every ``COUNTERS_S`` seconds for ``/metrics`` and
``meshroute status --policy``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from typing import Any

from datastore.port import KvStore
from felix_lite.nft_lib import NftLib
from felix_lite.nft_model import RuleCounter, merge_rulesets
from felix_lite.nft_reconciler import NftError, PolicyReconciler
from felix_lite.policy_compiler import PolicyCompiler
from felix_lite.policy_inputs import Endpoint
from felix_lite.service_nat import plan_service_ruleset
from ipam.ipam import Ipam
from meshroute.node.services_plan import endpoint_addresses, plan_service_nat
from meshroute.policy_lowering import (
    EndpointRecordError,
    PolicyLowering,
    endpoint_from_record,
    plan_policy_input,
)
from meshroute.policy_store import PolicyStore
from meshroute.service_store import ServiceStore

log = logging.getLogger(__name__)

DEBOUNCE_S = 0.01
COUNTERS_S = 10.0


class PolicyAgent:
    def __init__(
        self,
        store: KvStore,
        ipam: Ipam,
        prefix: str,
        node: str,
        netns: str | None,
        resync_seconds: float,
    ) -> None:
        self.store = store
        self.ipam = ipam
        self.node = node
        self.policies = PolicyStore(store, prefix)
        self.services = ServiceStore(store, prefix)
        self.endpoints_prefix = (prefix.rstrip("/") + "/ipam/v1/endpoints/").encode()
        # libnftables in this process: no nft process (nor ip netns exec) per change
        self.reconciler = PolicyReconciler(
            NftLib(netns), resync_interval=resync_seconds, counters=NftLib(netns)
        )
        self.bad_records: dict[str, str] = {}
        self.compiler = PolicyCompiler()
        # Kept between passes so that a pod's arrival re-parses one record and
        # the compiler sees the same policy values (its fast path).
        self._records: dict[bytes, tuple[bytes, Endpoint]] = {}
        self.lower = PolicyLowering()
        self.endpoint_count = 0
        self.policy_count = 0
        self.service_count = 0  # service addresses this node delivers
        self.compile_seconds = 0.0
        # The store revision of the inputs behind the desired ruleset, and
        # the newest one the kernel is known to enforce: a client that wrote
        # at revision R waits for appliedRevision >= R on every node.
        self._desired_revision = 0
        self._applied_revision = 0
        self._dirty = asyncio.Event()
        self._dirty.set()

    def mark_dirty(self) -> None:
        self._dirty.set()

    async def load_endpoints(self) -> tuple[tuple[Endpoint, ...], int]:
        """The workload endpoints and the store revision they were read at."""
        listing = await self.store.list(self.endpoints_prefix)
        out = []
        bad = {}
        records = {}
        for key, v in sorted(listing.items.items()):
            known = self._records.get(key)
            if known is not None and known[0] == v.value:
                records[key] = known
                out.append(known[1])
                continue
            try:
                ep = endpoint_from_record(v.value)
            except EndpointRecordError as e:
                bad[key.decode(errors="replace")] = str(e)[:200]
                continue
            records[key] = (v.value, ep)
            out.append(ep)
        self._records = records
        for k in bad.keys() - self.bad_records.keys():
            log.warning("ignoring workload endpoint %s: %s", k, bad[k])
        self.bad_records = bad
        return tuple(out), listing.revision

    async def run(self) -> None:
        failures = 0
        while True:
            await self._dirty.wait()
            await asyncio.sleep(DEBOUNCE_S)
            self._dirty.clear()
            try:
                state = await self.policies.load()
                endpoints, endpoints_revision = await self.load_endpoints()
                pools = await self.ipam.pools()
                start = time.monotonic()
                inp = plan_policy_input(self.node, state, endpoints, pools, self.lower(state))
                ruleset = await asyncio.to_thread(self.compiler.compile, inp)
                services = await self.services.load()
                pairs = [(ep.node, ep.ips) for ep in endpoints]
                nat = plan_service_nat(
                    services.addresses,
                    endpoint_addresses(pairs, self.node),
                    endpoint_addresses(pairs),
                )
                ruleset = merge_rulesets(ruleset, plan_service_ruleset(nat))
                self.service_count = len(nat)
                self.compile_seconds = time.monotonic() - start
                self.endpoint_count = len(endpoints)
                self.policy_count = len(inp.policies)
                # after set_desired, so that status() never pairs this
                # revision with the previous ruleset's convergence
                self.reconciler.set_desired(ruleset)
                self._desired_revision = min(state.revision, endpoints_revision)
                failures = 0
            except Exception as e:
                failures += 1
                log.warning("cannot compute the policy ruleset (%s); retrying", e)
                await asyncio.sleep(min(10.0, 0.2 * 2**failures))
                self._dirty.set()

    async def read_counters(self) -> None:
        while True:
            await asyncio.sleep(COUNTERS_S)
            try:
                await self.reconciler.refresh_counters()
            except NftError as e:
                log.warning("cannot read policy counters: %s", e)

    def rule_counters(self) -> list[dict[str, Any]]:
        """Packets and bytes per policy rule (summed over address families)
        and per default deny (by the policies that selected the endpoint)."""
        return summarize_counters(self.reconciler.counters)

    def applied_revision(self) -> int:
        desired = self._desired_revision  # read before converged: see run()
        if self.reconciler.converged:
            self._applied_revision = max(self._applied_revision, desired)
        return self._applied_revision

    def status(self) -> dict[str, Any]:
        r = self.reconciler
        return {
            "appliedRevision": self.applied_revision(),
            "endpoints": self.endpoint_count,
            "policies": self.policy_count,
            "services": self.service_count,
            "converged": r.converged,
            "transactions": r.applied,
            "refused": r.failures,
            "lastError": r.last_error,
            "badEndpointRecords": len(self.bad_records),
            "compileSeconds": round(self.compile_seconds, 4),
            "rules": self.rule_counters(),
        }


def summarize_counters(counters: tuple[RuleCounter, ...]) -> list[dict[str, Any]]:
    sums: dict[tuple[str, str, str, str], list[int]] = defaultdict(lambda: [0, 0])
    for c in counters:
        words = c.label.split()
        if len(words) == 4 and words[2].startswith("r"):  # policy rule
            key = (words[0], words[1], words[2], words[3])
        elif words[:1] == ["default-deny"] and len(words) == 4:  # no policy allowed it
            key = (f"default-deny {words[3]}", words[1], words[2], "deny")
        else:
            continue
        sums[key][0] += c.packets
        sums[key][1] += c.bytes
    return [
        {"policy": p, "direction": d, "rule": r, "action": a, "packets": n, "bytes": b}
        for (p, d, r, a), (n, b) in sorted(sums.items())
    ]
