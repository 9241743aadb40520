"""The reflector process: registers itself in etcd, keeps a copy of the
cluster's keys (``datastore.mirror``), and keeps BIRD's configuration equal
to what the node registry and the BGP resources in it ask for
(level-triggered: every change re-plans everything; BIRD's ``configure``
restarts only the protocols whose text changed). A plan that
cannot be made, or that BIRD refuses, leaves the running configuration in
place and is reported (log, /status, /readiness, metrics).

Stopping (SIGTERM) ends BIRD too. On a bare host a ``kill -9`` of this
process leaves BIRD serving, and the next run adopts it without resetting a
session. In the container this process is PID 1 and BIRD its child in the
container's PID namespace, which the kernel ends with its init: BIRD ends
with this process whatever the signal, the container exits with it, and
the container is the unit systemd restarts (Restart=on-failure on the exit
status conmon passes on). Nothing is adopted there: redundant reflector
pairs, and graceful restart at the clients, carry the routes meanwhile."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import Any

from bgpd.bird_config import BirdConfigError, render_bird
from bgpd.bird_ctl import BgpSessionInfo, BirdCtlError, bgp_sessions
from bgpd.bird_supervisor import BirdConfigRejected, BirdPaths, BirdSupervisor
from datastore.mirror import StoreMirror
from ipam.selector import SelectorError
from meshroute.bgp_secrets import REDACTED, SecretStore, watch_password_files
from meshroute.bgp_store import BgpStore
from meshroute.etcd_options import open_store
from meshroute.peering import decide_node_as
from meshroute.reflector.config import ReflectorConfig
from meshroute.reflector.metrics import reflector_metrics
from meshroute.reflector.plan import (
    CLUSTER_ID_LABEL,
    REFLECTOR_LABEL,
    ReflectorSession,
    Tuning,
    plan_bird_config,
    plan_sessions,
    session_problems,
)
from meshroute.reflector.view import ReflectorView, ResourceRefused, load_reflector_view
from meshroute.registry import NodeRecord, Registry
from meshroute.runtime.exposition import render
from meshroute.runtime.http import Endpoints, Health, serve_http
from meshroute.runtime.long_tasks import LongTasks
from meshroute.runtime.systemd import Notifier

log = logging.getLogger("meshroute.reflector")

LEASE_TTL_S = 30
DEBOUNCE_S = 0.02
POLL_S = 2.0  # BIRD's session table for health and metrics
STARTUP_GRACE_S = 60.0


class ConfigRefused(ValueError):
    """The resources ask for a configuration that cannot be made."""


class ReflectorProcess:
    def __init__(self, config: ReflectorConfig, notifier: Notifier | None = None) -> None:
        self.config = config
        self.notifier = notifier or Notifier()
        self.store = open_store(config.etcd)
        prefix = config.etcd.prefix
        self.registry = Registry(self.store, prefix)  # writes this reflector's record
        # the view is read from a copy of the cluster's keys, kept by one watch
        self.mirror = StoreMirror(self.store, [(prefix.rstrip("/") + "/").encode()])
        self.nodes = Registry(self.mirror, prefix)
        self.bgp_store = BgpStore(self.mirror, prefix)
        self.secrets = SecretStore(self.mirror, prefix)
        self.password_files: frozenset[str] = frozenset()
        self.paths = BirdPaths(Path(config.bird.work_dir))
        self.bird = BirdSupervisor(
            self.paths,
            bird=config.bird.bird,
            wrap=("ip", "netns", "exec", config.netns) if config.netns else (),
        )
        self.started = time.monotonic()
        self.local_as = 0
        self.sessions: list[ReflectorSession] = []
        self.bird_sessions: dict[str, BgpSessionInfo] = {}
        self.bird_answered = 0.0
        self.config_error: str | None = None
        self.reloads = 0
        self.refused = 0
        self._applied_once = asyncio.Event()
        self._configure_pending = False
        self._dirty = asyncio.Event()
        self.tasks = LongTasks()

    # ---- identity ----------------------------------------------------------

    def record(self) -> NodeRecord:
        c = self.config
        labels = {**c.labels, REFLECTOR_LABEL: "true", CLUSTER_ID_LABEL: str(c.cluster_id)}
        ipv6 = str(c.ipv6) if c.ipv6 else None
        return NodeRecord(c.name, labels, ipv4=str(c.ipv4), ipv6=ipv6, asn=c.as_number)

    @property
    def router_id(self) -> str:
        return str(self.config.router_id or self.config.ipv4.ip)

    # ---- plan --------------------------------------------------------------

    def decide_config(self, view: ReflectorView) -> tuple[list[ReflectorSession], str]:
        """The sessions and BIRD's text for ``view``; raises ConfigRefused."""
        me = self.record()
        try:
            sessions = plan_sessions(me, view.nodes, view.bgp_config, view.bgp_peers)
        except SelectorError as e:  # pre-checked per BGPPeer; kept as a last guard
            raise ConfigRefused(f"selector: {e}") from e
        problems = session_problems(sessions)
        if problems:
            raise ConfigRefused("\n".join(problems))
        b = self.config.bird
        try:
            text = render_bird(
                plan_bird_config(
                    router_id=self.config.router_id or self.config.ipv4.ip,
                    local_address=self.config.ipv4.ip,
                    local_address6=self.config.ipv6.ip if self.config.ipv6 else None,
                    local_as=decide_node_as(me, view.bgp_config),
                    cluster_id=str(self.config.cluster_id),
                    sessions=sessions,
                    port=view.bgp_config.listen_port,
                    bfd_profiles=view.bfd_profiles,
                    tuning=Tuning(
                        b.connect_delay_seconds, b.connect_retry_seconds, b.error_wait_seconds
                    ),
                    log_file=None,
                )
            )
        except BirdConfigError as e:
            raise ConfigRefused(str(e)) from e
        return sessions, text

    async def apply(self) -> bool:
        """Read etcd, plan, validate, install, reload. False when refused
        (the running configuration stays). etcd errors propagate."""
        try:
            view = await load_reflector_view(self.nodes, self.bgp_store, self.secrets)
            self.password_files = view.password_files
            me = self.record()
            local_as = decide_node_as(me, view.bgp_config)
            sessions, text = self.decide_config(view)
            changed = await asyncio.to_thread(self.bird.install, text)
        except (ResourceRefused, ConfigRefused, BirdConfigRejected) as e:
            if isinstance(e, ResourceRefused):
                self.password_files = e.password_files
            self._refuse(str(e))
            return False
        self.local_as = local_as
        self.sessions = sessions
        if self.bird.running and (changed or self._configure_pending):
            # pending until BIRD confirms: a failed configure is retried by
            # the next pass even though the file no longer changes
            self._configure_pending = True
            await self.bird.configure()
            self._configure_pending = False
            self.reloads += 1
            log.info("BIRD reconfigured: %d sessions", len(sessions))
        if self.config_error is not None:
            log.info("configuration accepted again")
        self.config_error = None
        self._applied_once.set()
        return True

    def _refuse(self, why: str) -> None:
        if why != self.config_error:
            log.error("refusing the new configuration; BIRD keeps its last good one:\n%s", why)
        self.config_error = why
        self.refused += 1

    # ---- run ---------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        c = self.config
        self.notifier.notify("STATUS=connecting to etcd")
        await self.registry.upsert(self.record())  # fails fast without etcd
        await self.mirror.sync()
        revision = (await self.mirror.list(self._watch_prefixes()[0])).revision

        self.paths.workdir.mkdir(parents=True, exist_ok=True)
        await self.apply()
        if not self.paths.config.exists():
            # nothing good yet: BIRD starts without sessions and waits for one
            view = ReflectorView({}, (await self.bgp_store.config()), {})
            await asyncio.to_thread(self.bird.install, self.decide_config(view)[1])
        await self.bird.start()
        await self.bird.configure()  # an adopted BIRD may hold an older file

        http = await serve_http(
            Endpoints(
                self.liveness, self.readiness, self.metrics, self.status, self.read_bird_sessions
            ),
            c.http.listen,
        )
        self.tasks.spawn("mirror", self.mirror.run())
        for i, prefix in enumerate(self._watch_prefixes()):
            self.tasks.spawn(f"watch{i}", self._watch(prefix, revision))
        self.tasks.spawn("apply", self._apply_loop())
        self.tasks.spawn("bird", self.bird.supervise())
        self.tasks.spawn("poll", self._poll_bird())
        self.tasks.spawn(
            "password files", watch_password_files(lambda: self.password_files, self._dirty.set)
        )
        self.tasks.spawn("alive", self.registry.stay_alive(c.name, LEASE_TTL_S))
        if self.notifier.watchdog_interval_s:
            self.tasks.spawn(
                "watchdog", self.tasks.watchdog(self.notifier.watchdog_interval_s, self.notifier)
            )
        self.notifier.notify("READY=1", f"STATUS=reflecting for {len(self.sessions)} sessions")
        try:
            await self.tasks.run_until(stop)
        finally:
            self.notifier.notify("STOPPING=1")
            http.close()
            await self.tasks.cancel_all()
            await self.bird.stop()
            await self.store.close()

    def _watch_prefixes(self) -> list[bytes]:
        root = self.config.etcd.prefix.rstrip("/")
        return [f"{root}/nodes/".encode(), self.bgp_store.watch_prefix, self.secrets.watch_prefix]

    async def _watch(self, prefix: bytes, revision: int) -> None:
        async for _ in self.mirror.changes(prefix, revision):
            self._dirty.set()

    async def _apply_loop(self) -> None:
        """A change after a quiet spell is applied at once (a node joining
        is one write, and the view is read from memory); changes that come
        meanwhile wait ``DEBOUNCE_S`` after it and go together."""
        failures = 0
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            try:
                await self.apply()
                failures = 0
            except Exception as e:  # etcd away, BIRD restarting: retry
                failures += 1
                log.warning("cannot apply the configuration (%s); retrying", e)
                await asyncio.sleep(min(10.0, 0.2 * 2**failures))
                self._dirty.set()
            await asyncio.sleep(DEBOUNCE_S)

    async def _poll_bird(self) -> None:
        while True:
            await self.read_bird_sessions()
            await asyncio.sleep(POLL_S)

    async def read_bird_sessions(self) -> None:
        """BIRD's session table now (every POLL_S for health, and before each
        /status and /metrics answer); the last one stays while BIRD is away."""
        with contextlib.suppress(BirdCtlError):
            found = await bgp_sessions(str(self.paths.socket))
            self.bird_sessions = {s.protocol: s for s in found}
            self.bird_answered = time.monotonic()

    # ---- operator-facing state ----------------------------------------------

    def established(self) -> list[ReflectorSession]:
        return [
            s
            for s in self.sessions
            if (info := self.bird_sessions.get(s.protocol)) is not None and info.established
        ]

    def liveness(self) -> Health:
        return self.tasks.liveness()

    def readiness(self) -> Health:
        if not self._applied_once.is_set():
            return Health(False, "no configuration accepted yet")
        if not self.bird.running:
            return Health(False, "BIRD is not running (restarting)")
        if time.monotonic() - self.bird_answered > 3 * POLL_S:
            return Health(False, "BIRD's control socket does not answer")
        note = " (a newer configuration was refused, see /status)" if self.config_error else ""
        if not self.sessions:
            return Health(True, f"ready (no sessions configured){note}")
        up = self.established()
        if not up and time.monotonic() - self.started > STARTUP_GRACE_S:
            return Health(False, "no BGP session is established")
        if not up:
            return Health(False, "waiting for a first BGP session")
        return Health(True, f"ready: {len(up)}/{len(self.sessions)} sessions established{note}")

    def status(self) -> dict[str, Any]:
        rows = []
        for s in self.sessions:
            info = self.bird_sessions.get(s.protocol)
            rows.append(
                {
                    "peer": str(s.address),
                    "node": s.node,
                    "role": s.role,
                    "asn": s.peer_as,
                    "protocol": s.protocol,
                    "state": info.bgp_state if info else "unknown",
                    "since": info.since.timestamp() if info and info.since else 0.0,
                    "received": info.received if info else 0,
                    "exported": info.exported if info else 0,
                    "lastError": info.last_error if info else "",
                    "password": REDACTED if s.password else None,
                }
            )
        return {
            "role": "reflector",
            "node": self.config.name,
            "asn": self.local_as,
            "routerId": self.router_id,
            "clusterId": str(self.config.cluster_id),
            "ready": self.readiness().ok,
            "birdPid": self.bird.pid,
            "birdRestarts": self.bird.restarts,
            "configError": self.config_error,
            "sessions": rows,
        }

    def metrics(self) -> bytes:
        return render(reflector_metrics(self))
