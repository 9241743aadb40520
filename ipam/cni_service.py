"""The local IPAM service the CNI plugin talks to: one per host, holding the
etcd connection (one ``Ipam``) and serving add / del / check for this host.

Wire protocol (unix stream socket, 0600): each request is one JSON object
on one line, each reply one JSON object on one line, in order; a client may
send several requests on one connection (the plugin sends one). Requests::

    {"op": "add", "containerId": "...", "ifname": "eth0", "namespace": "...",
     "pod": "...", "ipv4": true, "ipv6": false, "ipv4Pools": [], "ipv6Pools": [],
     "ips": ["10.244.0.9"]}
    {"op": "del", "containerId": "...", "ifname": "eth0"}
    {"op": "check", "containerId": "...", "ifname": "eth0", "expect": ["10.244.0.9"]}

Every request may carry the pod's ``labels`` (a mapping) and named
``ports`` (``[{"name", "protocol", "port"}]``); an add writes them into the
pod interface's WorkloadEndpoint record, in the transaction that writes
its addresses. A request from the main plugin ``meshroute-cni`` also
carries ``"attach": {"netns": "/var/run/netns/...", "mtu": 1500}``: the
service then makes the pod's routed veth too (``pod_link``), removes it on
del and checks it on check.

Replies are ``{"ok": true, "ips": [{"address", "gateway"?}], "routes": [...]}``
(plus ``"interfaces": [{"name", "mac", "sandbox"?}]`` for an attach) or
``{"ok": false, "code", "msg", "details"}`` with the CNI error codes of
``cni_plugin``. The handle of a pod's addresses is ``<containerId>.<ifname>``.

Writes (add, del) run one at a time: this service is the only writer of
this host's blocks, and serialising here turns what would be CAS conflicts
between concurrent pods on the same block into a short queue. Checks run
concurrently.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import json
import logging
import os
import socket
import stat
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from netaddr import AddrFormatError, IPAddress

from datastore.port import RequestTooLarge, StoreError
from ipam import cni_args, cni_json
from ipam.allocator import IpamError, PoolExhausted
from ipam.cni_plugin import (
    ERR_ADDRESS_REFUSED,
    ERR_CHECK_FAILED,
    ERR_INTERNAL,
    ERR_INVALID_CONFIG,
    ERR_INVALID_ENV,
    ERR_LINK,
    ERR_POOL_EXHAUSTED,
    ERR_TOO_LARGE,
    ERR_TRY_AGAIN,
    MAX_LIST,
    MAX_LIST_ITEM,
    container_id_problem,
    ifname_problem,
)
from ipam.endpoint import NamedPort, WorkloadEndpoint
from ipam.ipam import AssignedAddress, AssignRequest, Conflict, Ipam
from ipam.pod_link import (
    LinkInfo,
    PodLink,
    PodLinkError,
    apply_pod_link,
    check_pod_link,
    host_iface_name,
    remove_pod_link,
    sweep_host_ifaces,
)
from ipam.quoting import quote

log = logging.getLogger(__name__)

MAX_REQUEST = 1 << 20
DRAIN_TIMEOUT_S = 10.0


class BadRequest(Exception):
    """A request the service cannot understand; ``code`` is the CNI error
    code (4 for what came from the runtime's ``CNI_*`` variables)."""

    def __init__(self, msg: str, code: int = ERR_INVALID_CONFIG) -> None:
        super().__init__(msg)
        self.code = code


@dataclass(frozen=True)
class HostIdentity:
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Attach:
    """The pod's end of a routed veth, for the main plugin."""

    netns: str
    mtu: int


@dataclass(frozen=True)
class Request:
    op: str
    container_id: str
    ifname: str
    namespace: str = cni_args.DEFAULT_NAMESPACE
    pod: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    ports: tuple[NamedPort, ...] = ()
    attach: Attach | None = None
    ipv4: bool = True
    ipv6: bool = False
    ipv4_pools: tuple[str, ...] = ()
    ipv6_pools: tuple[str, ...] = ()
    ips: tuple[IPAddress, ...] = ()
    expect: tuple[IPAddress, ...] = ()

    @property
    def handle(self) -> str:
        return f"{self.container_id}.{self.ifname}"


def _strs(d: Mapping[str, Any], key: str) -> tuple[str, ...]:
    v = d.get(key, [])
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise BadRequest(f"{key} must be a list of strings")
    if len(v) > MAX_LIST:
        raise BadRequest(f"{key} has more than {MAX_LIST} entries")
    for x in v:
        if len(x) > MAX_LIST_ITEM:
            raise BadRequest(f"{key}: {quote(x)} is longer than {MAX_LIST_ITEM} characters")
    return tuple(v)


def _ips(d: Mapping[str, Any], key: str) -> tuple[IPAddress, ...]:
    out = []
    for s in _strs(d, key):
        try:
            out.append(IPAddress(s.split("/")[0]))
        except (AddrFormatError, ValueError) as e:
            raise BadRequest(f"{key}: {quote(s)} is not an IP address") from e
    return tuple(out)


def _checked(d: Mapping[str, Any], key: str, problem_of: Callable[[str], str | None]) -> str:
    v = d.get(key, "")
    if not isinstance(v, str):
        raise BadRequest(f"{key} must be a string", ERR_INVALID_ENV)
    problem = problem_of(v)
    if problem:
        raise BadRequest(f"{key} {quote(v)} {problem}", ERR_INVALID_ENV)
    return v


def _bool(d: Mapping[str, Any], key: str, default: bool) -> bool:
    v = d.get(key, default)
    if not isinstance(v, bool):
        raise BadRequest(f"{key} must be true or false, not {quote(v)}")
    return v


def _attach(v: object, op: str) -> Attach | None:
    if v is None:
        return None
    if not isinstance(v, dict) or not isinstance(v.get("netns", ""), str):
        raise BadRequest("attach must be {netns, mtu}")
    netns = str(v.get("netns", ""))
    if op != "del" and not (netns.startswith("/") and len(netns) < 4096 and "\0" not in netns):
        raise BadRequest(f"attach.netns {quote(netns)} is not an absolute path")
    mtu = v.get("mtu", 1500)
    if isinstance(mtu, bool) or not isinstance(mtu, int) or not 576 <= mtu <= 65535:
        raise BadRequest(f"attach.mtu {quote(mtu)} is not an MTU (576-65535)")
    return Attach(netns, mtu)


def decode_request(d: object) -> Request:
    """A request, checked as the plugin checks what the runtime gave it (a
    client of this socket need not be our plugin)."""
    if not isinstance(d, dict):
        raise BadRequest("request is not a JSON object")
    op = d.get("op")
    if op not in ("add", "del", "check"):
        raise BadRequest(f"unknown op {quote(op)}")
    container_id = _checked(d, "containerId", container_id_problem)
    try:  # from CNI_ARGS: the runtime's environment
        namespace = cni_args.namespace(
            str(d.get("namespace") or cni_args.DEFAULT_NAMESPACE), "namespace"
        )
        pod = cni_args.pod_name(str(d.get("pod") or container_id), "pod")
    except cni_args.Invalid as e:
        raise BadRequest(str(e), ERR_INVALID_ENV) from e
    try:
        labels = cni_args.labels(d.get("labels"), "labels")
        ports = tuple(
            NamedPort(str(p["name"]), str(p["protocol"]), int(str(p["port"])))
            for p in cni_args.ports(d.get("ports"), "ports")
        )
    except cni_args.Invalid as e:
        raise BadRequest(str(e)) from e
    return Request(
        op=op,
        container_id=container_id,
        ifname=_checked(d, "ifname", ifname_problem),
        namespace=namespace,
        pod=pod,
        labels=labels,
        ports=ports,
        attach=_attach(d.get("attach"), op),
        ipv4=_bool(d, "ipv4", True),
        ipv6=_bool(d, "ipv6", False),
        ipv4_pools=_strs(d, "ipv4Pools"),
        ipv6_pools=_strs(d, "ipv6Pools"),
        ips=_ips(d, "ips"),
        expect=_ips(d, "expect"),
    )


def plan_reply(addresses: Sequence[AssignedAddress]) -> dict[str, Any]:
    """The CNI view of a handle's addresses. With a gateway (L2-segment mode,
    the host's own block) the address carries the block's prefix length and
    the family gets a default route via the gateway; otherwise it is a host
    route (/32, /128) and routing is the main plugin's business."""
    ips: list[dict[str, Any]] = []
    routes: list[dict[str, Any]] = []
    for a in sorted(addresses, key=lambda a: (a.ip.version, int(a.ip))):
        if a.gateway is not None:
            entry = {"address": f"{a.ip}/{a.block.prefixlen}", "gateway": str(a.gateway)}
            dst = "0.0.0.0/0" if a.ip.version == 4 else "::/0"
            if not any(r["dst"] == dst for r in routes):
                routes.append({"dst": dst, "gw": str(a.gateway)})
        else:
            entry = {"address": f"{a.ip}/{32 if a.ip.version == 4 else 128}"}
        ips.append(entry)
    return {"ok": True, "ips": ips, "routes": routes}


def plan_attach_reply(
    reply: dict[str, Any], host_iface: str, req: Request, info: LinkInfo
) -> dict[str, Any]:
    """A routed pod's reply: its two interfaces, addresses on the pod's,
    and the default routes the pod got."""
    assert req.attach is not None
    ips = [{**ip, "interface": 1} for ip in reply["ips"]]
    routes = []
    if any(":" not in ip["address"] for ip in ips):
        routes.append({"dst": "0.0.0.0/0", "gw": "169.254.1.1"})
    if any(":" in ip["address"] for ip in ips):
        routes.append({"dst": "::/0", "gw": "fe80::ecee:eeff:feee:eeee"})
    interfaces = [
        {"name": host_iface, "mac": info.host_mac},
        {"name": req.ifname, "mac": info.pod_mac, "sandbox": req.attach.netns},
    ]
    return {"ok": True, "interfaces": interfaces, "ips": ips, "routes": routes}


def error_reply(code: int, msg: str, details: str = "") -> dict[str, Any]:
    return {"ok": False, "code": code, "msg": msg, "details": details}


def decide_error(e: Exception) -> dict[str, Any]:
    """Map an IPAM failure to the CNI error the plugin reports."""
    if isinstance(e, BadRequest):
        return error_reply(e.code, str(e))
    if isinstance(e, RequestTooLarge):
        return error_reply(ERR_TOO_LARGE, "the request is too large for the IPAM datastore", str(e))
    if isinstance(e, StoreError):
        return error_reply(ERR_TRY_AGAIN, "the IPAM datastore (etcd) is unreachable", str(e))
    if isinstance(e, Conflict):
        return error_reply(ERR_TRY_AGAIN, "too many concurrent IPAM changes", str(e))
    if isinstance(e, PoolExhausted):
        return error_reply(ERR_POOL_EXHAUSTED, str(e))
    if isinstance(e, IpamError):
        return error_reply(ERR_ADDRESS_REFUSED, str(e))
    if isinstance(e, PodLinkError):
        return error_reply(ERR_LINK, "cannot set up the pod's interface", str(e))
    return error_reply(
        ERR_INTERNAL, "internal error of the IPAM service", f"{type(e).__name__}: {quote(str(e))}"
    )


class IpamService:
    """``host_netns``: where the host ends of routed pods' veths go (None:
    this process's own namespace; the lab names the node's)."""

    def __init__(self, ipam: Ipam, host: HostIdentity, host_netns: str | None = None) -> None:
        self.ipam = ipam
        self.host = host
        self.host_netns = host_netns
        # One thread for netlink: it enters namespaces, so it is nobody else's.
        self._links = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pod-links")
        self._writes = asyncio.Lock()
        self._server: asyncio.AbstractServer | None = None
        self._path: str | None = None
        self._conns: set[asyncio.Task[None]] = set()

    async def housekeeping(self) -> None:
        """Give back the host's empty blocks, between requests (under the
        write lock, so no ADD races the release)."""
        try:
            async with self._writes:
                released = await self.ipam.release_empty_blocks(self.host.name)
        except (StoreError, IpamError) as e:
            log.warning("releasing empty blocks failed, will retry: %s", e)
            return
        for cidr in released:
            log.info("released empty block %s", cidr)

    # ---- requests --------------------------------------------------------

    async def handle(self, raw: object) -> dict[str, Any]:
        try:
            req = decode_request(raw)
            if req.op == "add":
                async with self._writes:
                    if req.attach is None:
                        return plan_reply(await self._add(req))
                    return await self._add_attached(req)
            if req.op == "del":
                async with self._writes:
                    if req.attach is not None:
                        # The veth first: a crash after it leaves the addresses,
                        # which the runtime's repeated DEL releases.
                        await self._link(remove_pod_link, host_iface_name(req.handle))
                    freed = await self.ipam.release_handle(req.handle, self.host.name)
                log.info("released %s: %s", req.handle, ", ".join(map(str, freed)) or "nothing")
                return {"ok": True}
            return await self._check(req)
        except Exception as e:
            reply = decide_error(e)
            internal = reply["code"] == ERR_INTERNAL
            log.log(
                logging.ERROR if internal else logging.WARNING,
                "request failed: %s (%s)",
                reply["msg"],
                reply["details"],
                exc_info=internal,  # a traceback only for what is our bug
            )
            return reply

    async def _link(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args, host_netns)`` on the netlink thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._links, functools.partial(fn, *args, self.host_netns)
        )

    async def _add_attached(self, req: Request) -> dict[str, Any]:
        """Addresses and endpoint record first, then the veth; when the veth
        fails, both are given back (and a veth half made is removed)."""
        assert req.attach is not None
        if self.ipam.l2_segment:
            raise BadRequest(
                "this node's IPAM is in L2-segment mode (ipam.l2Segment): meshroute-cni needs "
                "routed mode; use the bridge plugin with meshroute-cni-ipam, or routed mode"
            )
        host_iface = host_iface_name(req.handle)
        got = await self._add(req, host_iface)
        link = PodLink(
            host_iface, req.ifname, req.attach.netns, tuple(a.ip for a in got), req.attach.mtu
        )
        try:
            info = await self._link(apply_pod_link, link)
        except BaseException:
            await self.ipam.release_handle(req.handle, self.host.name)
            raise
        return plan_attach_reply(plan_reply(got), host_iface, req, info)

    def _endpoint(self, req: Request, host_iface: str) -> WorkloadEndpoint:
        return WorkloadEndpoint(
            node=self.host.name,
            namespace=req.namespace,
            pod=req.pod,
            container_id=req.container_id,
            ifname=req.ifname,
            host_iface=host_iface,
            labels=req.labels,
            ports=req.ports,
        )

    async def _add(self, req: Request, host_iface: str = "") -> list[AssignedAddress]:
        have = await self.ipam.addresses_of(req.handle, self.host.name)
        if have:
            return have  # a repeated ADD gets what the first one got
        # A record a crash left without addresses must not lend this pod its labels.
        await self.ipam.drop_stale_endpoint(self.host.name, req.handle)
        attrs = {
            "namespace": req.namespace,
            "pod": req.pod,
            "containerId": req.container_id,
            "node": self.host.name,
        }
        if host_iface:
            attrs["hostIface"] = host_iface
        endpoint = self._endpoint(req, host_iface)
        try:
            if req.ips:
                return await self._assign_requested(req, attrs, endpoint)
            return await self._assign_auto(req, attrs, endpoint)
        except BaseException:
            # All or nothing, the endpoint record included.
            await self.ipam.release_handle(req.handle, self.host.name)
            raise

    async def _assign_requested(
        self, req: Request, attrs: Mapping[str, str], endpoint: WorkloadEndpoint
    ) -> list[AssignedAddress]:
        return [
            await self.ipam.assign_ip(self.host.name, ip, req.handle, attrs, endpoint)
            for ip in req.ips
        ]

    async def _assign_auto(
        self, req: Request, attrs: Mapping[str, str], endpoint: WorkloadEndpoint
    ) -> list[AssignedAddress]:
        def ask(v4: bool, v6: bool, pools: Sequence[str]) -> AssignRequest:
            return AssignRequest(
                host=self.host.name,
                handle=req.handle,
                attrs=attrs,
                num_v4=int(v4),
                num_v6=int(v6),
                pools=tuple(pools),
                labels=self.host.labels,
                endpoint=endpoint,
            )

        both = req.ipv4 and req.ipv6
        if not both or bool(req.ipv4_pools) == bool(req.ipv6_pools):
            # One call: the pool filter works per IP version, so the two lists can be joined.
            return await self.ipam.assign(ask(req.ipv4, req.ipv6, req.ipv4_pools + req.ipv6_pools))
        # Only one family names pools: two calls, so the other family is not
        # narrowed to nothing. All or nothing, as in one call.
        got = await self.ipam.assign(ask(True, False, req.ipv4_pools))
        return got + await self.ipam.assign(ask(False, True, req.ipv6_pools))

    async def _check(self, req: Request) -> dict[str, Any]:
        owned = {a.ip for a in await self.ipam.addresses_of(req.handle)}
        missing = [ip for ip in req.expect if ip not in owned]
        if missing:
            return error_reply(
                ERR_CHECK_FAILED,
                f"{', '.join(map(str, missing))} no longer assigned to {req.handle}",
                f"IPAM holds {', '.join(map(str, sorted(owned))) or 'nothing'} for it",
            )
        if req.attach is not None:
            link = PodLink(
                host_iface_name(req.handle),
                req.ifname,
                req.attach.netns,
                tuple(sorted(owned)),
                req.attach.mtu,
            )
            problems = await self._link(check_pod_link, link)
            if problems:
                return error_reply(ERR_CHECK_FAILED, "; ".join(problems))
        return {"ok": True}

    async def sweep_links(self) -> list[str]:
        """Remove routed pods' host ends that no endpoint record of this
        node names (a crash undoing a failed ADD leaves them)."""
        async with self._writes:
            keep = [ep.host_iface for ep, _ in await self.ipam.endpoints(self.host.name)]
            gone: list[str] = await self._link(sweep_host_ifaces, keep)
        for name in gone:
            log.info("removed %s: no endpoint names it", name)
        return gone

    # ---- the socket ------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        try:
            while True:
                try:
                    line = await reader.readline()
                except (ValueError, asyncio.LimitOverrunError):
                    writer.write(_encode(error_reply(ERR_INVALID_CONFIG, "request too long")))
                    break
                if not line:
                    break
                try:
                    raw = cni_json.loads(line)
                except (ValueError, UnicodeDecodeError) as e:
                    reply = error_reply(ERR_INVALID_CONFIG, "request is not JSON", str(e)[:200])
                except RecursionError:
                    reply = error_reply(ERR_INVALID_CONFIG, "request is nested too deeply")
                else:
                    reply = await self.handle(raw)
                writer.write(_encode(reply))
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            self._conns.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def start(self, path: str) -> None:
        """Check etcd answers (fail fast otherwise), settle what a previous
        run of this host's service left half way (claims, pods' veths), then
        listen on ``path``."""
        await self.ipam.pools()
        for cidr, outcome in await self.ipam.settle_own_claims(self.host.name):
            log.info("block %s: claim or release left half way by a previous run %s", cidr, outcome)
        await self.sweep_links()
        remove_stale_socket(path)
        os.makedirs(os.path.dirname(path) or ".", mode=0o755, exist_ok=True)
        old = os.umask(0o177)  # the socket is born 0600: no window for others
        try:
            self._server = await asyncio.start_unix_server(
                self._connection, path, limit=MAX_REQUEST
            )
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        self._path = path

    async def stop(self) -> None:
        """Stop listening, let running requests finish (bounded), remove the socket."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        if self._conns:
            _, pending = await asyncio.wait(set(self._conns), timeout=DRAIN_TIMEOUT_S)
            for t in pending:
                t.cancel()
        if self._path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._path)
            self._path = None
        self._links.shutdown(wait=True)


def _encode(reply: Mapping[str, Any]) -> bytes:
    return json.dumps(reply, separators=(",", ":")).encode() + b"\n"


def remove_stale_socket(path: str) -> None:
    """Remove a socket file left by a dead service; refuse to start when a
    live one answers there or the path is not a socket."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise IpamError(f"{path} exists and is not a socket")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(1.0)
    try:
        s.connect(path)
    except OSError as e:
        if e.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise IpamError(f"{path}: {e}") from e
    else:
        raise IpamError(f"another IPAM service is listening on {path}")
    finally:
        s.close()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    log.info("removed stale socket %s", path)


async def serve(
    ipam: Ipam,
    host: HostIdentity,
    path: str,
    *,
    stop: asyncio.Event,
    ready: Callable[[], None] | None = None,
    housekeeping_s: float = 60.0,
    host_netns: str | None = None,
) -> None:
    """Run the service until ``stop`` is set; raises StoreError at once when
    etcd cannot be reached at start. Every ``housekeeping_s`` it gives back
    the host's empty blocks that reached the configured minimum age."""
    service = IpamService(ipam, host, host_netns)
    await service.start(path)
    try:
        if ready is not None:
            ready()
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(housekeeping_s):
                    await stop.wait()
            if not stop.is_set():
                await service.housekeeping()
    finally:
        await service.stop()
