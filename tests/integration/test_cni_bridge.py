"""Debian's CNI ``bridge`` plugin, run for real inside a "host" network
namespace, delegating IPAM to ``meshroute-cni-ipam``, which asks
``meshroute ipam serve`` (a real process on real etcd): three pods get
distinct addresses of the host's block, ping each other, pass CHECK, and
DEL gives their addresses back (twice, without complaint)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from netaddr import IPAddress, IPNetwork

from datastore.etcd import EtcdStore
from ipam.ipam import Ipam
from ipam.model import Pool
from lab.etcd import EtcdCluster
from lab.netns import Netns, NetnsFactory
from tests.harness.cni import PLUGIN_NAME, plugin_argv, start_ipam_service

pytestmark = [pytest.mark.etcd, pytest.mark.netns]

BRIDGE = Path("/usr/lib/cni/bridge")
POOL = Pool("pods", IPNetwork("10.244.0.0/16"), 26)
HOST = "node-a"


def ipam_call(endpoint: str, prefix: str, fn: Any) -> Any:
    async def go() -> Any:
        store = EtcdStore([endpoint])
        try:
            return await fn(Ipam(store, prefix=prefix, l2_segment=True))
        finally:
            await store.close()

    return asyncio.run(go())


@pytest.fixture
def service(
    etcd_server: EtcdCluster, etcd_prefix: str, tmp_path: Path
) -> Iterator[tuple[str, str]]:
    """``meshroute ipam serve`` as its own process; yields the socket path
    and the prefix, stops it with SIGTERM and checks it left cleanly."""
    ipam_call(etcd_server.endpoint, etcd_prefix, lambda i: i.apply_pool(POOL))
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
            "--l2-segment",
            "--etcd",
            etcd_server.endpoint,
            "--prefix",
            etcd_prefix,
        ]
    )
    try:
        yield sock, etcd_prefix
    finally:
        p.terminate()
        _, err = p.communicate(timeout=15)
    assert p.returncode == 0, err
    assert not os.path.exists(sock), "socket left behind after SIGTERM"


@pytest.fixture
def cni_path(tmp_path: Path) -> str:
    """A plugin directory as a runtime has it: our IPAM plugin next to Debian's."""
    d = tmp_path / "cni-bin"
    d.mkdir()
    argv = plugin_argv()
    if len(argv) == 1:
        (d / PLUGIN_NAME).symlink_to(argv[0])
    else:
        script = d / PLUGIN_NAME
        script.write_text(f"#!/bin/sh\nexec {' '.join(argv)}\n")
        script.chmod(0o755)
    return f"{d}:{BRIDGE.parent}"


def bridge(
    host: Netns, command: str, pod: Netns, conf: dict[str, Any], cni_path: str
) -> tuple[int, dict[str, Any] | None, str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": f"ctr-{pod.name}",
        "CNI_NETNS": f"/var/run/netns/{pod.name}",
        "CNI_IFNAME": "eth0",
        "CNI_PATH": cni_path,
        "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod.name}",
    }
    p = subprocess.run(
        ["ip", "netns", "exec", host.name, str(BRIDGE)],
        input=json.dumps(conf).encode(),
        env=env,
        capture_output=True,
        timeout=30,
    )
    out = json.loads(p.stdout) if p.stdout.strip() else None
    return p.returncode, out, p.stderr.decode()


def test_bridge_pods_get_meshroute_addresses(
    netns: NetnsFactory, service: tuple[str, str], cni_path: str, etcd_server: EtcdCluster
) -> None:
    sock, prefix = service
    host = netns.new("host")
    pods = [netns.new(f"pod{i}") for i in range(3)]
    conf: dict[str, Any] = {
        "cniVersion": "1.0.0",
        "name": "meshroute-bridge",
        "type": "bridge",
        "bridge": "mrbr0",
        "isGateway": True,
        "ipMasq": False,
        "ipam": {"type": PLUGIN_NAME, "socket": sock},
    }

    results = {}
    for pod in pods:
        rc, out, err = bridge(host, "ADD", pod, conf, cni_path)
        assert rc == 0, (out, err)
        assert out is not None
        results[pod.name] = out

    ips = {}
    for pod in pods:
        [entry] = results[pod.name]["ips"]
        iface = IPNetwork(entry["address"])
        ips[pod.name] = iface.ip
        assert iface.prefixlen == 26 and iface.ip in POOL.cidr
        assert entry["gateway"] == str(iface.cidr[1])
        assert f"{iface.ip}/26" in pod.ip("-4", "addr", "show", "dev", "eth0")
        assert f"default via {iface.cidr[1]}" in pod.ip("route")
    assert len(set(ips.values())) == 3
    blocks = {IPNetwork(f"{ip}/26").cidr for ip in ips.values()}
    assert len(blocks) == 1, "one host, one block"
    [block] = blocks
    assert f"{block[1]}/26" in host.ip("-4", "addr", "show", "dev", "mrbr0")

    # etcd agrees: each pod's handle owns exactly its address, with its attributes
    for pod in pods:
        owned = ipam_call(
            etcd_server.endpoint, prefix, lambda i, p=pod: i.addresses_of(f"ctr-{p.name}.eth0")
        )
        assert [a.ip for a in owned] == [ips[pod.name]]
    snap = ipam_call(etcd_server.endpoint, prefix, lambda i: i.snapshot())
    b, _ = snap.blocks[str(block)]
    assert b.affinity == HOST
    a0 = b.allocations[b.ordinal(ips[pods[0].name])]
    assert a0.attrs["pod"] == pods[0].name and a0.attrs["node"] == HOST

    for src in pods:
        for dst in pods:
            if src is not dst:
                src.sh(f"ping -c1 -W2 {ips[dst.name]}")

    for pod in pods:
        check = {**conf, "prevResult": results[pod.name]}
        rc, out, err = bridge(host, "CHECK", pod, check, cni_path)
        assert rc == 0, (out, err)

    gone = pods[0]
    for _ in range(2):
        rc, out, err = bridge(host, "DEL", gone, conf, cni_path)
        assert rc == 0, (out, err)
    handle = f"ctr-{gone.name}.eth0"
    assert ipam_call(etcd_server.endpoint, prefix, lambda i: i.addresses_of(handle)) == []
    snap = ipam_call(etcd_server.endpoint, prefix, lambda i: i.snapshot())
    assert handle not in snap.handles
    b, _ = snap.blocks[str(block)]
    assert b.ordinal(ips[gone.name]) not in b.allocations
    assert IPAddress(ips[pods[1].name]) in [b.address(o) for o in b.allocations]

    # CHECK of the deleted pod now fails (its address is no longer held)
    rc, out, _ = bridge(host, "CHECK", gone, {**conf, "prevResult": results[gone.name]}, cni_path)
    assert rc != 0 and out is not None and out.get("code")

    # the survivors still reach each other
    pods[1].sh(f"ping -c1 -W2 {ips[pods[2].name]}")
