"""``meshroute-cni``, the routed main plugin, for real: ``meshroute ipam
serve`` (a real process on real etcd) makes each pod's veth in a "node"
network namespace, pods in their own namespaces reach each other and the
node through /32 routes (with the node's blackhole for its block in
place, as felix_lite installs it), every pod interface gets its
WorkloadEndpoint record with the handle, CHECK sees a broken pod, DEL
removes veth, addresses and record, and bad input gets CNI error objects."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from netaddr import IPNetwork

from datastore.etcd import EtcdStore
from datastore.port import Put
from ipam.cni_service import HostIdentity, IpamService
from ipam.endpoint import WorkloadEndpoint
from ipam.ipam import Ipam
from ipam.model import Pool, dumps
from ipam.pod_link import host_iface_name
from lab.etcd import EtcdCluster
from lab.netns import Netns, NetnsFactory, run
from tests.harness.cni import VENV_BIN, PluginRun, run_plugin, start_ipam_service

pytestmark = [pytest.mark.etcd, pytest.mark.netns]

POOL = Pool("pods", IPNetwork("10.244.0.0/16"), 26)
POOL6 = Pool("pods6", IPNetwork("fd00:244::/48"), 122)
HOST = "node-a"
NODE_IP = "192.0.2.1"


def ipam_call(endpoint: str, prefix: str, fn: Any) -> Any:
    async def go() -> Any:
        store = EtcdStore([endpoint])
        try:
            return await fn(Ipam(store, prefix=prefix))
        finally:
            await store.close()

    return asyncio.run(go())


@dataclass
class Rig:
    node: Netns
    sock: str
    prefix: str
    etcd: str
    netns: NetnsFactory

    def conf(self, **extra: Any) -> dict[str, Any]:
        return {
            "cniVersion": "1.0.0",
            "name": "meshroute-routed",
            "type": "meshroute-cni",
            "socket": self.sock,
            **extra,
        }

    def cni(
        self,
        command: str,
        pod: Netns | None,
        conf: dict[str, Any] | bytes,
        container_id: str | None = None,
        ifname: str = "eth0",
        cni_args: str | None = None,
    ) -> PluginRun:
        name = pod.name if pod else "gone"
        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": container_id if container_id is not None else f"ctr-{name}",
            "CNI_IFNAME": ifname,
            "CNI_PATH": str(VENV_BIN),
            "CNI_ARGS": cni_args
            if cni_args is not None
            else "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web",
        }
        if pod is not None:
            env["CNI_NETNS"] = f"/var/run/netns/{pod.name}"
        return run_plugin(env, conf)

    def endpoints(self) -> dict[str, WorkloadEndpoint]:
        async def read(i: Ipam) -> dict[str, WorkloadEndpoint]:
            return {ep.handle: ep for ep, _ in await i.endpoints()}

        return ipam_call(self.etcd, self.prefix, read)  # type: ignore[no-any-return]


@pytest.fixture
def rig(
    etcd_server: EtcdCluster, etcd_prefix: str, tmp_path: Path, netns: NetnsFactory
) -> Iterator[Rig]:
    """The node namespace (an address on lo, forwarding on) and the IPAM
    service as its own process, putting veth host ends into it."""

    async def pools(i: Ipam) -> None:
        await i.apply_pool(POOL)
        await i.apply_pool(POOL6)

    ipam_call(etcd_server.endpoint, etcd_prefix, pools)
    node = netns.new("node")
    node.ip("addr", "add", f"{NODE_IP}/32", "dev", "lo")
    node.sh("sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1")
    sock = str(tmp_path / "ipam.sock")
    p = start_ipam_service(
        [
            sys.executable,
            "-m",
            "meshroute.cli",
            "ipam",
            "serve",
            "--host",
            HOST,
            "--socket",
            sock,
            "--netns",
            node.name,
            "--etcd",
            etcd_server.endpoint,
            "--prefix",
            etcd_prefix,
        ]
    )
    try:
        yield Rig(node, sock, etcd_prefix, etcd_server.endpoint, netns)
    finally:
        p.terminate()
        _, err = p.communicate(timeout=15)
    assert p.returncode == 0, err
    assert "Traceback" not in err, err


def _ping(src: Netns, dst: str) -> None:
    flag = "-6" if ":" in dst else "-4"
    src.sh(f"ping {flag} -n -c1 -W2 {dst}")


def test_routed_pods_reach_each_other_and_the_node(rig: Rig) -> None:
    pods = [rig.netns.new(f"pod{i}") for i in range(3)]
    results = {}
    for i, pod in enumerate(pods):
        r = rig.cni(
            "ADD",
            pod,
            rig.conf(labels={"app": "web"}, ports=[{"name": "http", "port": 80}]),
            cni_args=f"K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-{i};MESHROUTE_LABELS=tier=front",
        )
        assert r.rc == 0, (r.raw, r.stderr)
        assert r.out is not None
        results[pod.name] = r.out

    ips = {}
    for pod in pods:
        out = results[pod.name]
        [entry] = out["ips"]
        addr = IPNetwork(entry["address"])
        assert addr.prefixlen == 32 and addr.ip in POOL.cidr and entry["interface"] == 1
        ips[pod.name] = str(addr.ip)
        host_if = host_iface_name(f"ctr-{pod.name}.eth0")
        assert out["interfaces"][0]["name"] == host_if
        assert out["interfaces"][0]["mac"] == "ee:ee:ee:ee:ee:ee"
        assert out["interfaces"][1]["sandbox"] == f"/var/run/netns/{pod.name}"
        assert out["routes"] == [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}]
        # no bridge; a host route per pod to its own veth
        assert f"{addr.ip} dev {host_if} proto static scope link" in rig.node.ip("-4", "route")
        assert "default via 169.254.1.1 dev eth0" in pod.ip("-4", "route")
        assert f"{addr.ip}/32" in pod.ip("-4", "addr", "show", "dev", "eth0")
    assert "bridge" not in rig.node.ip("-d", "link")
    assert len(set(ips.values())) == 3
    [block] = {IPNetwork(f"{ip}/26").cidr for ip in ips.values()}

    # felix_lite blackholes the node's own block: the /32s still win
    rig.node.ip("route", "add", "blackhole", str(block))
    for src in pods:
        _ping(src, NODE_IP)
        for dst in pods:
            _ping(src, ips[dst.name])

    # one endpoint record per pod interface, written with its handle
    eps = rig.endpoints()
    for i, pod in enumerate(pods):
        ep = eps[f"ctr-{pod.name}.eth0"]
        assert ep.node == HOST and ep.namespace == "shop" and ep.pod == f"web-{i}"
        assert ep.host_iface == host_iface_name(ep.handle)
        assert ep.ips == (f"{ips[pod.name]}/32",)
        assert dict(ep.labels) == {"app": "web", "tier": "front"}
        assert [p.to_dict() for p in ep.ports] == [{"name": "http", "protocol": "TCP", "port": 80}]

    # CHECK: fine, then a pod whose host route is gone fails it
    for pod in pods:
        r = rig.cni("CHECK", pod, rig.conf(prevResult=results[pod.name]))
        assert r.rc == 0, r.raw
    broken = pods[2]
    rig.node.ip("route", "del", f"{ips[broken.name]}/32")
    r = rig.cni("CHECK", broken, rig.conf(prevResult=results[broken.name]))
    assert r.rc == 1 and r.out is not None and r.out["code"] == 103, r.raw
    assert f"no route to {ips[broken.name]}" in r.out["msg"]

    # DEL (twice): veth, addresses and the endpoint record go
    gone = pods[0]
    for _ in range(2):
        r = rig.cni("DEL", gone, rig.conf())
        assert r.rc == 0, r.raw
    assert host_iface_name(f"ctr-{gone.name}.eth0") not in rig.node.ip("link")
    assert "eth0" not in gone.ip("link")
    assert f"ctr-{gone.name}.eth0" not in rig.endpoints()
    snap = ipam_call(rig.etcd, rig.prefix, lambda i: i.snapshot())
    assert f"ctr-{gone.name}.eth0" not in snap.handles
    _ping(pods[1], NODE_IP)

    # a DEL after the pod's namespace is gone still cleans up
    last = pods[1]
    run(["ip", "netns", "del", last.name])
    rig.netns.created.remove(last)
    r = rig.cni("DEL", None, rig.conf(), container_id=f"ctr-{last.name}")
    assert r.rc == 0, r.raw
    assert f"ctr-{last.name}.eth0" not in rig.endpoints()


def test_dual_stack_pod(rig: Rig) -> None:
    a, b = rig.netns.new("v6a"), rig.netns.new("v6b")
    conf = rig.conf(ipam={"assign_ipv4": True, "assign_ipv6": True})
    got = {}
    for pod in (a, b):
        r = rig.cni("ADD", pod, conf)
        assert r.rc == 0, (r.raw, r.stderr)
        assert r.out is not None
        got[pod.name] = [IPNetwork(x["address"]) for x in r.out["ips"]]
        assert [n.prefixlen for n in got[pod.name]] == [32, 128]
        assert {"dst": "::/0", "gw": "fe80::ecee:eeff:feee:eeee"} in r.out["routes"]
    for dst in got[b.name]:
        _ping(a, str(dst.ip))
    ep = rig.endpoints()[f"ctr-{a.name}.eth0"]
    assert ep.ips == tuple(str(n) for n in got[a.name])


BAD_INPUT: list[tuple[str, Any, int]] = [
    ("container_id", "x" * 100_000, 4),
    ("container_id", "../../etc", 4),
    ("container_id", "a/b", 4),
    ("container_id", "-leading", 4),
    # a surrogate reaches the plugin's environment as invalid UTF-8
    ("container_id", "caf\udce9", 4),
    ("ifname", "eth0/../x", 4),
    ("ifname", "averyveryverylongname", 4),
    ("ifname", "..", 4),
    ("ifname", "e th0", 4),
    ("cni_args", "K8S_POD_NAME", 4),
    ("cni_args", "K8S_POD_NAMESPACE=Bad_NS", 4),
    ("cni_args", "K8S_POD_NAME=" + "p" * 300, 4),
    ("cni_args", "MESHROUTE_LABELS=app=we b", 4),
    ("cni_args", "MESHROUTE_LABELS=" + ",".join(f"k{i}=v" for i in range(100)), 4),
    ("cni_args", "MESHROUTE_PORTS=http/ICMP/80", 4),
    ("cni_args", "MESHROUTE_PORTS=http/TCP/99999", 4),
    ("cni_args", "A=" + "x" * 20_000, 4),
    ("labels", {"": "x"}, 7),
    ("labels", {"app": "x" * 64}, 7),
    ("labels", {"a/b/c": "x"}, 7),
    ("labels", {"app": 5}, 7),
    ("labels", ["app"], 7),
    ("ports", [{"name": "HTTP", "port": 80}], 7),
    ("ports", [{"name": "http", "port": 1e300}], 7),
    ("ports", [{"name": "http", "port": float("inf")}], 6),  # JSON has no Infinity
    ("ports", [{"name": "http", "port": True}], 7),
    ("ports", [{"name": "http", "port": 80, "extra": 1}], 7),
    ("mtu", 1e300, 7),
    ("mtu", float("nan"), 6),
    ("timeout", float("nan"), 6),
    ("timeout", 1e300, 7),
]

HOSTILE_CONFIGS = [
    (b"[" * 100_000 + b"]" * 100_000, 6),
    (b'{"cniVersion": "1.0.0", "name": "n", "type": "meshroute-cni", "timeout": NaN}', 6),
    (b'{"cniVersion": "1.0.0", "name": "n", "type": "meshroute-cni", "timeout": 1e999}', 7),
    (b"\xff\xfe{", 6),
    (b'{"cniVersion": "1.0.0", "name": "n", "type": "meshroute-cni", "ipam": [1]}', 7),
]


def test_bad_input_gets_cni_errors_and_changes_nothing(rig: Rig) -> None:
    """Every case against one service: each gets its CNI error code, a
    short answer and no traceback; none writes a record or makes a link."""
    pod = rig.netns.new("bad")
    wrong = []
    runs = []
    for field, value, code in BAD_INPUT:
        kw: dict[str, Any] = {}
        conf = rig.conf()
        if field in ("container_id", "ifname", "cni_args"):
            kw[field] = value
        else:
            conf[field] = value
        runs.append(
            (
                f"{field}={str(value)[:30]}",
                code,
                rig.cni("ADD", pod, json.dumps(conf).encode(), **kw),
            )
        )
    for stdin, code in HOSTILE_CONFIGS:
        runs.append((repr(stdin[:30]), code, rig.cni("ADD", pod, stdin)))
    for what, code, r in runs:
        ok = (
            r.rc == 1
            and r.out is not None
            and r.out["code"] == code
            and len(r.raw) < 1000
            and b"Traceback" not in r.stderr
        )
        if not ok:
            wrong.append((what, code, r.raw[:300], r.stderr[-300:]))
    assert not wrong, wrong
    assert rig.endpoints() == {}
    assert "eth0" not in pod.ip("link")
    assert " mr" not in rig.node.ip("-o", "link")


def test_failed_attach_gives_everything_back(rig: Rig) -> None:
    """A pod that already has the interface: the ADD fails with code 105,
    and its addresses and endpoint record are released again."""
    pod = rig.netns.new("taken")
    pod.ip("link", "add", "eth0", "type", "veth", "peer", "name", "eth1")
    r = rig.cni("ADD", pod, rig.conf())
    assert r.rc == 1 and r.out is not None and r.out["code"] == 105, r.raw
    assert "eth0" in r.out["msg"] + r.out.get("details", "")
    assert rig.endpoints() == {}
    snap = ipam_call(rig.etcd, rig.prefix, lambda i: i.snapshot())
    assert not snap.handles
    assert host_iface_name(f"ctr-{pod.name}.eth0") not in rig.node.ip("link")


async def test_start_removes_veths_that_no_endpoint_names(
    etcd_server: EtcdCluster, etcd_prefix: str, tmp_path: Path, netns: NetnsFactory
) -> None:
    """A crash between making a pod's veth and undoing its failed ADD leaves
    a host end nobody names: the service's next start removes it, and
    keeps the ones endpoint records name (and every other interface)."""
    node = netns.new("node")
    named, stray = host_iface_name("kept.eth0"), host_iface_name("lost.eth0")
    for name in (named, stray, "mrbr0"):
        node.ip("link", "add", name, "type", "veth", "peer", "name", f"p{name[2:]}"[:15])
    store = EtcdStore([etcd_server.endpoint])
    try:
        ipam = Ipam(store, prefix=etcd_prefix)
        ep = WorkloadEndpoint(HOST, "shop", "kept", "kept", "eth0", host_iface=named)
        key = ipam.keys.endpoint(HOST, ep.handle)
        await store.txn([], [Put(key, dumps(ep.to_dict()))])
        service = IpamService(ipam, HostIdentity(HOST), host_netns=node.name)
        await service.start(str(tmp_path / "ipam.sock"))
        await service.stop()
    finally:
        await store.close()
    links = node.ip("-o", "link")
    assert f"{named}@" in links and "mrbr0@" in links
    assert stray not in links


def test_parallel_adds_and_dels_stay_consistent(rig: Rig) -> None:
    """Twelve pods added 6 at a time, then deleted 6 at a time: distinct
    addresses, one record and one veth each, ``ipam check`` clean, and
    nothing left after the DELs."""
    pods = [rig.netns.new(f"par{i}") for i in range(12)]
    with ThreadPoolExecutor(6) as pool:
        adds = list(pool.map(lambda p: rig.cni("ADD", p, rig.conf()), pods))
    assert all(r.rc == 0 for r in adds), [r.raw for r in adds if r.rc]
    ips = {r.out["ips"][0]["address"] for r in adds if r.out}
    assert len(ips) == 12
    eps = rig.endpoints()
    assert {ep.ips[0] for ep in eps.values()} == ips
    links = rig.node.ip("-o", "link")
    assert all(host_iface_name(h) in links for h in eps)

    async def check(i: Ipam) -> list[Any]:
        return await i.check({HOST})

    assert ipam_call(rig.etcd, rig.prefix, check) == []
    with ThreadPoolExecutor(6) as pool:
        dels = list(pool.map(lambda p: rig.cni("DEL", p, rig.conf()), pods))
    assert all(r.rc == 0 for r in dels), [r.raw for r in dels if r.rc]
    assert rig.endpoints() == {}
    assert " mr" not in rig.node.ip("-o", "link")
    assert ipam_call(rig.etcd, rig.prefix, check) == []
