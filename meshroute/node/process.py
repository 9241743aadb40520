"""The node process: one asyncio program that owns this host's part of the
cluster. Each long-lived part is a task that owns its state; handlers only
mark work dirty, loops do the work (level-triggered):

- etcd changes -> ``_view_loop``: re-read the cluster view, re-plan peers
  (ExaBGP's config), announcements (own blocks, borrowed /32s) and bgpd's
  import context;
- ExaBGP events -> bgpd's ``Sessions`` (session facts, graceful restart,
  End-of-RIB sync, max-prefix hold-down) and its RIB (policy, best path);
- the RIB's changed best routes, the view, the host (felix_lite's
  ``NetlinkHost``: links, addresses, underlay routes from netlink
  notifications) -> ``_felix_loop``: felix_lite's incremental planner turns
  just what changed into a change of the reconciler's desired state, which
  owns the kernel table. Routes are programmed as they are learned, from
  the first update on; once bgpd's sessions are synced (End-of-RIB from
  every peer, or its timeout) the planner's whole state is handed over, and
  only from then on is what nobody wants any more swept from the kernel (a
  restarted node keeps the last run's routes until its peers resent
  theirs). A full rebuild (every best route planned again, the whole
  desired state handed over) happens every ``felix.resyncIntervalSeconds``;
- the IPAM service answers the CNI plugin on its socket.

Stopping (SIGTERM) leaves the kernel routes in place and lets ExaBGP close
without NOTIFICATION, so graceful-restart peers keep our routes while a new
process starts (``systemctl restart``); ``decommission`` withdraws first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import subprocess
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from netaddr import IPAddress

from bgpd.bfd.client import BfdClient
from bgpd.bfd.packet import State
from bgpd.bfd.speaker import BfdChange
from bgpd.gtsm import GtsmError, GtsmRule, GtsmTable, plan_gtsm
from bgpd.model import Event, MalformedLine, RouteRefresh, SessionState, Teardown
from bgpd.policy import ImportContext
from bgpd.rib import Rib
from bgpd.sessions import Sessions
from bgpd.speaker import Speaker, SpeakerSettings
from datastore.mirror import StoreMirror
from felix_lite.host_state import HostChange
from felix_lite.incremental import IncrementalPlanner
from felix_lite.netlink_host import NetlinkHost
from felix_lite.netlink_table import NetlinkRouteTable
from felix_lite.reconciler import Reconciler
from felix_lite.tunnels import NetlinkTunnels
from ipam.cni_service import HostIdentity, IpamService
from ipam.ipam import Ipam
from meshroute.bgp_secrets import REDACTED, watch_password_files
from meshroute.etcd_options import open_store
from meshroute.node.bfd_plan import decide_bfd_change, diag_text, plan_bfd_sessions
from meshroute.node.bgp_plan import (
    plan_bgp_announcements,
    plan_exabgp_config,
    plan_import_context,
    session_peer,
    to_felix_changes,
)
from meshroute.node.config import NodeConfig
from meshroute.node.metrics import node_metrics
from meshroute.node.plan import (
    decide_encap_in_use,
    decide_vtep_mac,
    decide_vxlan6_in_use,
    plan_announcements,
    plan_felix_input,
)
from meshroute.node.policy import PolicyAgent
from meshroute.node.readiness import decide_readiness
from meshroute.node.view import ClusterView, ViewSources, load_view
from meshroute.peering import PeerPlan, decide_node_as, plan_peers
from meshroute.registry import NodeRecord, Registry
from meshroute.runtime.exposition import render
from meshroute.runtime.heap import settle_long_lived
from meshroute.runtime.http import Endpoints, Health, serve_http
from meshroute.runtime.long_tasks import LongTasks
from meshroute.runtime.systemd import Notifier

log = logging.getLogger("meshroute.node")

LEASE_TTL_S = 30
DEBOUNCE_S = 0.02
SETTLE_WAIT_S = 60.0


def exabgp_argv(name: str) -> tuple[str, ...]:
    """ExaBGP from this Python's environment first, then PATH."""
    if "/" in name:
        return (name,)
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return (str(beside),)
    found = shutil.which(name)
    return (found or name,)


class NodeProcess:
    def __init__(self, config: NodeConfig, notifier: Notifier | None = None) -> None:
        self.config = config
        self.notifier = notifier or Notifier()
        self.store = open_store(config.etcd)
        prefix = config.etcd.prefix
        self.cluster_prefix = (prefix.rstrip("/") + "/").encode()
        # writers (the node's record, its tunnel addresses, CNI) use the
        # store; the view and the policy read the copy the watch keeps
        self.mirror = StoreMirror(self.store, [self.cluster_prefix])
        self.sources = ViewSources.over(self.mirror, prefix, l2_segment=config.ipam.l2_segment)
        self.ipam = Ipam(self.store, prefix=prefix, l2_segment=config.ipam.l2_segment)
        self.registry = Registry(self.store, prefix)
        self.started = time.monotonic()
        self.view: ClusterView | None = None
        self.tunnel_address: IPAddress | None = None
        self.tunnel_address6: IPAddress | None = None  # VTEP on the IPv6 underlay
        self.peers: dict[IPAddress, PeerPlan] = {}
        self.rib = Rib(ImportContext(), max_paths=8)
        self.host: NetlinkHost | None = None
        self.planner: IncrementalPlanner | None = None
        self._host_dirty = True  # the view or the host changed: re-plan the host part
        self._rebuild_due = True
        # the reconciler holds the planner's whole state (after bgpd synced)
        self._whole_handed = asyncio.Event()
        self._ready = asyncio.Event()
        self.local_as = 0
        self._side_tasks: set[asyncio.Task[None]] = set()
        self._view_dirty = asyncio.Event()
        self._felix_dirty = asyncio.Event()
        self.tasks = LongTasks()
        self.reconciler: Reconciler | None = None
        self.speaker: Speaker | None = None
        self.sessions: Sessions | None = None
        self.gtsm = GtsmTable(("ip", "netns", "exec", config.netns) if config.netns else ())
        self._gtsm_desired: frozenset[GtsmRule] = frozenset()
        self.service: IpamService | None = None
        self.policy = PolicyAgent(
            self.mirror,
            self.sources.ipam,
            prefix,
            config.node_name,
            config.netns,
            config.felix.resync_seconds,
        )
        self.bfd = BfdClient(
            Path(config.bgp.work_dir) / "bfd",
            wrap=("ip", "netns", "exec", config.netns) if config.netns else (),
            on_change=self._on_bfd_change,
        )

    # ---- start and stop --------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        c = self.config
        self.notifier.notify("STATUS=connecting to etcd")
        await self.mirror.sync()  # fails fast
        view = await load_view(self.sources)
        await self._register(view)

        table = await asyncio.to_thread(NetlinkRouteTable, c.netns)
        self.reconciler = Reconciler(
            table,
            tunnels=await asyncio.to_thread(NetlinkTunnels, c.netns),
            proto=c.felix.route_protocol,
            table=c.felix.route_table,
            resync_interval=c.felix.resync_seconds,
        )
        self.host = NetlinkHost(
            c.netns,
            own_proto=c.felix.route_protocol,
            table=c.felix.route_table,
            resync_interval=c.felix.resync_seconds,
        )
        self.tasks.spawn("host", self.host.run(self._on_host_changed))
        await self.host.wait_ready()

        self.service = IpamService(
            self.ipam, HostIdentity(c.node_name, dict(c.labels)), host_netns=c.netns
        )
        await self.service.start(c.ipam.socket)

        self.local_as = decide_node_as(self._me(view), view.bgp_config)
        exa = plan_exabgp_config(c, self.local_as, view.bgp_config.listen_port, [])
        self.speaker = Speaker(
            exa,
            SpeakerSettings(
                workdir=Path(c.bgp.work_dir),
                exabgp=exabgp_argv(c.bgp.exabgp),
                wrap=("ip", "netns", "exec", c.netns) if c.netns else (),
            ),
            on_event=self._on_bgp_event,
        )
        self.sessions = Sessions(
            self.rib,
            self.speaker.peer_state,
            on_routes_changed=self._felix_dirty.set,
            on_peers_changed=self._view_dirty.set,
        )
        await self.speaker.start()
        await self.bfd.start()  # adopts the BFD daemon a previous run left, in the background
        await self._apply_view(view)

        http = await serve_http(
            Endpoints(self.liveness, self.readiness, self.metrics, self.status), c.http.listen
        )
        self.tasks.spawn("mirror", self.mirror.run())
        self.tasks.spawn("watch", self._watch_etcd(view))
        self.tasks.spawn("view", self._view_loop())
        self.tasks.spawn("felix", self._felix_loop())
        self.tasks.spawn("reconciler", self.reconciler.run())
        self.tasks.spawn("policy", self.policy.run())
        self.tasks.spawn("policy-nft", self.policy.reconciler.run())
        self.tasks.spawn("policy-counters", self.policy.read_counters())
        self.tasks.spawn("alive", self.registry.stay_alive(c.node_name, LEASE_TTL_S))
        self.tasks.spawn("housekeeping", self._housekeeping())
        self.tasks.spawn(
            "password files",
            watch_password_files(
                lambda: self.view.password_files if self.view else frozenset(),
                self._view_dirty.set,
            ),
        )
        ready = asyncio.create_task(self._become_ready(), name="ready")  # ends by design
        self.sessions.start()
        if self.notifier.watchdog_interval_s:
            self.tasks.spawn(
                "watchdog", self.tasks.watchdog(self.notifier.watchdog_interval_s, self.notifier)
            )
        try:
            await self.tasks.run_until(stop)
        finally:
            self.notifier.notify("STOPPING=1")
            http.close()
            self.sessions.close()
            ready.cancel()
            await self.tasks.cancel_all()
            await self.service.stop()
            await self.bfd.stop()  # the daemon keeps BFD up while we restart
            # Without terminating it, ExaBGP would outlive us; terminated, it
            # closes without NOTIFICATION and GR peers keep our routes.
            await self.speaker.stop(terminate_exabgp=True)
            await self.store.close()

    async def decommission(self) -> None:
        """Withdraw everything before the node goes away for good."""
        if self.speaker is not None:
            await self.speaker.withdraw_all()
        await self.bfd.terminate()

    def _me(self, view: ClusterView) -> NodeRecord:
        c = self.config
        existing = view.nodes.get(c.node_name)
        return NodeRecord(
            name=c.node_name,
            labels=dict(c.labels),
            ipv4=str(c.ipv4),
            ipv6=str(c.ipv6) if c.ipv6 else None,
            asn=c.as_number,
            tunnel_address=str(self.tunnel_address)
            if self.tunnel_address
            else (existing.tunnel_address if existing else None),
            vtep_mac=decide_vtep_mac(c.node_name),
            tunnel_address6=str(self.tunnel_address6)
            if self.tunnel_address6
            else (existing.tunnel_address6 if existing else None),
            vtep_mac6=decide_vtep_mac(c.node_name, 6) if c.ipv6 else None,
        )

    async def _register(self, view: ClusterView) -> None:
        ipip, vxlan = decide_encap_in_use(view)
        if ipip or vxlan:
            got = await self.ipam.tunnel_address(self.config.node_name, dict(self.config.labels))
            self.tunnel_address = got.ip if got else None
        if decide_vxlan6_in_use(view, self.config):
            labels = dict(self.config.labels)
            got = await self.ipam.tunnel_address(self.config.node_name, labels, version=6)
            self.tunnel_address6 = got.ip if got else None
        await self.registry.upsert(self._me(view))

    async def _housekeeping(self) -> None:
        assert self.service is not None
        while True:
            await asyncio.sleep(self.config.ipam.housekeeping_seconds)
            await self.service.housekeeping()
            await self._apply_gtsm()  # resync: repairs a table changed behind our back

    async def _apply_gtsm(self) -> None:
        """Inbound GTSM (bgpd.gtsm): before ExaBGP hears of a GTSM peer."""
        try:
            if await asyncio.to_thread(self.gtsm.apply, self._gtsm_desired):
                log.info("GTSM table now covers %d rules", len(self._gtsm_desired))
        except (GtsmError, OSError, subprocess.SubprocessError) as e:
            log.warning("cannot apply the GTSM table (%s); retrying at the next resync", e)

    async def _become_ready(self) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(30):
                await self._programmed()
        self._ready.set()
        self.notifier.notify("READY=1", f"STATUS=serving {len(self.peers)} BGP peers")

    # ---- etcd -> view ----------------------------------------------------

    async def _watch_etcd(self, view: ClusterView) -> None:
        async for _ in self.mirror.changes(self.cluster_prefix, view.ipam.revision):
            self._view_dirty.set()
            self.policy.mark_dirty()

    async def _view_loop(self) -> None:
        failures = 0
        while True:
            await self._view_dirty.wait()
            await asyncio.sleep(DEBOUNCE_S)
            self._view_dirty.clear()
            try:
                view = await load_view(self.sources)
                if (self.tunnel_address is None and any(decide_encap_in_use(view))) or (
                    self.tunnel_address6 is None and decide_vxlan6_in_use(view, self.config)
                ):
                    await self._register(view)
                await self._apply_view(view)
                failures = 0
            except Exception as e:
                failures += 1
                log.warning("cannot refresh the cluster view (%s); retrying", e)
                await asyncio.sleep(min(10.0, 0.2 * 2**failures))
                self._view_dirty.set()

    async def _apply_view(self, view: ClusterView) -> None:
        assert self.speaker is not None and self.sessions is not None
        if self.view is None or view.peer_problems != self.view.peer_problems:
            for problem in view.peer_problems:
                log.error("%s", problem)
        if self.view is None or view.service_problems != self.view.service_problems:
            for problem in view.service_problems:
                log.error("%s", problem)
        self.view = view
        self._host_dirty = True
        me = self._me(view)
        self.local_as = decide_node_as(me, view.bgp_config)
        peers = plan_peers(me, view.nodes, view.bgp_config, view.bgp_peers)
        self.peers = {p.address: p for p in peers}
        raised = self.sessions.set_peers(session_peer(p) for p in peers)
        self.bfd.set_sessions(plan_bfd_sessions(self.config, peers, view.bfd_profiles))
        configured = [p for p in peers if not self.sessions.held_down(p.address)]
        self._gtsm_desired = plan_gtsm(
            {p.address: p.ttl_security for p in configured if p.ttl_security}
        )
        await self._apply_gtsm()
        exa = plan_exabgp_config(
            self.config, self.local_as, view.bgp_config.listen_port, configured
        )
        await self.speaker.apply_config(exa)
        announce = plan_announcements(view, self.config.node_name)
        v6 = self.config.ipv6.ip if self.config.ipv6 else None
        self.speaker.set_desired(plan_bgp_announcements(announce, view.bgp_config.communities, v6))
        ctx = plan_import_context(view, self.config, self.tunnel_address, self.local_as)
        if ctx != self.rib.context:
            result = self.rib.set_context(ctx)
            if result.refresh_needed:
                raised = list(self.peers)
        if raised:
            await self._refresh_peers(raised)
        self._felix_dirty.set()

    async def _refresh_peers(self, peers: list[IPAddress]) -> None:
        """The import policy now accepts more from these peers: ask them to
        send again."""

        assert self.speaker is not None and self.sessions is not None
        up = [p for p in peers if self.sessions.state(p) is SessionState.ESTABLISHED]
        if up:
            fam = {4: "ipv4 unicast", 6: "ipv6 unicast"}
            await self.speaker.send([RouteRefresh(fam[p.version], p) for p in up])

    # ---- ExaBGP events -> RIB --------------------------------------------

    def _on_bgp_event(self, e: Event) -> None:
        if isinstance(e, MalformedLine):  # counted by the speaker
            log.warning("malformed line from ExaBGP (%s): %.200s", e.reason, e.line)
        elif self.sessions is not None:
            self.sessions.on_event(e)

    def _on_bfd_change(self, c: BfdChange) -> None:
        """BFD Up after a Down asks the peer for everything again; BFD Down
        (bgpd's sessions drop the peer's routes) tears the session down
        through ExaBGP's API. ExaBGP's configuration is left alone: removing
        and re-adding a neighbour by reload a second later lost its
        announcements."""
        if self.sessions is None:
            return
        if c.new is State.UP:
            if self.sessions.bfd_up(c.peer):
                fam = {4: "ipv4 unicast", 6: "ipv6 unicast"}[c.peer.version]
                self._side_task(self._send([RouteRefresh(fam, c.peer)]))
            return
        verdict = decide_bfd_change(c)
        if verdict is None:
            return
        if self.sessions.bfd_down(c.peer, verdict.reason, tear_down=verdict.tear_down):
            log.warning("peer %s: %s; closing its BGP session", c.peer, verdict.reason)
            self._side_task(self._send([Teardown(c.peer)]))

    async def _send(self, cmds: list[Teardown | RouteRefresh]) -> None:
        if self.speaker is not None:
            for ack in await self.speaker.send(cmds):
                if not ack.ok:
                    log.warning("ExaBGP refused %s: %s", cmds, ack.text)

    def _side_task(self, coro: Coroutine[Any, Any, None]) -> None:
        t = asyncio.create_task(coro)
        self._side_tasks.add(t)
        t.add_done_callback(self._side_tasks.discard)

    # ---- RIB + view + links -> kernel -------------------------------------

    def _on_host_changed(self, changed: set[HostChange]) -> None:
        if HostChange.LINKS in changed and self.reconciler is not None:
            self.reconciler.request_resync()  # the kernel drops routes with a link
        self._host_dirty = True
        self._felix_dirty.set()

    async def _programmed(self) -> None:
        """Until the kernel holds the whole desired state once."""
        assert self.reconciler is not None
        await self._whole_handed.wait()  # set_desired cleared "converged"
        await self.reconciler.wait_converged()

    @property
    def unroutable(self) -> int:
        return self.planner.unroutable_count if self.planner is not None else 0

    async def _felix_loop(self) -> None:
        assert self.reconciler is not None and self.sessions is not None
        loop = asyncio.get_running_loop()
        rebuild_at = loop.time()
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(rebuild_at - loop.time()):
                    await self._felix_dirty.wait()
            # No debounce: a pass costs the size of its change, so a flap goes
            # straight through; one turn of the loop lets the lines already
            # read reach the RIB first, which is all the batching needed.
            await asyncio.sleep(0)
            self._felix_dirty.clear()
            if self.view is None:
                continue
            if loop.time() >= rebuild_at:
                self._rebuild_due = True
                rebuild_at = loop.time() + self.config.felix.resync_seconds
            self._plan_pass()

    def _plan_pass(self) -> None:
        """Hand the reconciler what changed since the last pass: the host
        part when the view or the host changed, then the best routes the
        RIB changed. A rebuild plans everything again from scratch. Once
        bgpd is synced, the first pass (and every rebuild) hands over the
        whole state, which lets the reconciler sweep."""
        assert self.reconciler is not None and self.host is not None and self.view is not None
        assert self.sessions is not None
        host = self.planner.host if self.planner is not None and not self._host_dirty else None
        if host is None:
            self._host_dirty = False
            host = plan_felix_input(
                self.config,
                self.view,
                self.host.interfaces(),
                (),
                self.tunnel_address,
                self.host.underlay(),
                self.tunnel_address6,
            )
        synced = self.sessions.synced.is_set()
        fresh = self.planner is None or (self._rebuild_due and self._whole_handed.is_set())
        if fresh:
            self._rebuild_due = False
            self.planner = IncrementalPlanner(host)
            self.planner.update(to_felix_changes(self.rib.take_all()))
        else:
            assert self.planner is not None
            self.reconciler.apply_change(self.planner.set_host(host))
            if self.rib.changes_pending:
                changes = to_felix_changes(self.rib.take_changes())
                self.reconciler.apply_change(self.planner.update(changes))
        assert self.planner is not None
        if synced and (fresh or not self._whole_handed.is_set()):
            self.reconciler.set_whole(self.planner.whole())
            self._whole_handed.set()
            self._side_task(self._settle_heap())
        elif fresh:  # before the sync: what is planned so far, nothing swept
            self.reconciler.apply_change(self.planner.whole())
        for u in self.planner.take_new_unroutable():
            log.info("not installed: %s via %s: %s", u.prefix, u.nexthop, u.reason)

    async def _settle_heap(self) -> None:
        """Once the whole table is in the kernel (or a minute on), freeze
        what the node holds (``meshroute.runtime.heap``): after the install,
        not before, whose clock the full collection would lengthen."""
        assert self.reconciler is not None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(SETTLE_WAIT_S):
                await self.reconciler.wait_converged()
        t0 = time.perf_counter()
        frozen = settle_long_lived()
        log.info(
            "heap settled: %d objects frozen in %.0f ms", frozen, 1000 * (time.perf_counter() - t0)
        )

    # ---- operator-facing state -------------------------------------------

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    async def wait_ready(self) -> None:
        await self._ready.wait()

    def liveness(self) -> Health:
        return self.tasks.liveness()

    def readiness(self) -> Health:
        up = self.sessions.established() if self.sessions is not None else []
        return decide_readiness(self.ready, self.peers, up, time.monotonic() - self.started)

    def status(self) -> dict[str, Any]:
        bfd_status = {
            s.peer: {
                "state": s.state.name.lower(),
                "multihop": s.multihop,
                "txIntervalMs": s.tx_interval_ms,
                "detectTimeMs": s.detect_time_ms,
                "diagnostic": diag_text(s.diag),
                "remoteDiagnostic": diag_text(s.remote_diag),
            }
            for s in self.bfd.status()
        }
        assert self.sessions is not None
        s = self.sessions
        peers = []
        for addr, p in sorted(self.peers.items()):
            peers.append(
                {
                    "peer": str(addr),
                    "asn": p.peer_as,
                    "type": p.kind,
                    "state": s.state(addr).value,
                    "since": s.since(addr),
                    "accepted": self.rib.accepted_count(addr),
                    "received": self.rib.received_count(addr),
                    "rejected": self.rib.rejects.for_peer(addr),
                    "heldDown": s.held_down(addr),
                    "downReason": s.down_reason.get(addr),
                    "bfd": bfd_status.get(addr),
                    "password": REDACTED if p.password else None,
                }
            )
        return {
            "node": self.config.node_name,
            "asn": self.local_as,
            "routerId": str(self.config.router_id),
            "ready": self.readiness().ok,
            "peers": peers,
            "policy": self.policy.status(),
            "peerProblems": list(self.view.peer_problems) if self.view else [],
        }

    def metrics(self) -> bytes:
        return render(node_metrics(self))
