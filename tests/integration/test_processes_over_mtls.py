"""``meshroute node`` and ``meshroute reflector`` against an etcd that serves
TLS only and demands client certificates: the reflector takes its
certificates from reflector.yaml, the node from ``MESHROUTE_ETCD_*``; the
node registers, the reflector sees it and their BGP session comes up. A wrong
certificate stops either at start with one line naming the file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from lab.netns import NetnsFactory
from lab.node_rig import node_in
from lab.poll import wait_for
from lab.reflector_rig import Lan, Reflector
from tests.harness.cli import REPO
from tests.harness.etcd_tls import TlsEtcd
from tests.integration.test_etcd_tls import meshroute, tls_env

pytestmark = [pytest.mark.etcd, pytest.mark.netns, pytest.mark.slow, pytest.mark.timeout(180)]
RESOURCES = """
apiVersion: meshroute.io/v1
kind: BGPConfiguration
metadata: {name: default}
spec: {asNumber: 64512, nodeToNodeMeshEnabled: false}
---
apiVersion: meshroute.io/v1
kind: BGPPeer
metadata: {name: to-reflectors}
spec: {nodeSelector: "!has(route-reflector)", peerSelector: "route-reflector == 'true'"}
---
apiVersion: meshroute.io/v1
kind: IPPool
metadata: {name: pods}
spec: {cidr: 10.244.0.0/16, blockSize: 26}
"""


def tls_section(tls: TlsEtcd, prefix: str) -> dict[str, Any]:
    cert, key = tls.pki.client
    return {
        "endpoints": [tls.endpoint],
        "prefix": prefix,
        "caFile": str(tls.pki.ca.file),
        "certFile": str(cert),
        "keyFile": str(key),
    }


def test_node_and_reflector_over_mtls(
    tls_etcd: TlsEtcd, etcd_prefix: str, netns: NetnsFactory, tmp_path: Path
) -> None:
    p, _ = meshroute(tls_env(tls_etcd, etcd_prefix), "apply", "-f", "-", stdin=RESOURCES)
    assert p.returncode == 0, p.stderr
    lan = Lan(netns)
    rr_ns, node_ns = lan.member("rr", "192.0.2.1"), lan.member("node", "192.0.2.11")
    rr = Reflector(
        "rr1",
        "192.0.2.1",
        rr_ns,
        tmp_path / "rr1",
        tls_etcd.endpoint,
        etcd_prefix,
        extra={"etcd": tls_section(tls_etcd, etcd_prefix)},
    )
    # the node's file names only the endpoint; the certificates come from the environment
    node = node_in(
        node_ns, "node-a", "192.0.2.11", 24, tls_etcd.endpoint, etcd_prefix, tmp_path / "a"
    )
    try:
        rr.start()
        node.start(env=tls_etcd.pki.client_env())
        node.wait_ready()

        def session_up() -> bool:
            ss = rr.status()["sessions"] if rr.answering() else []
            return [(s["node"], s["state"]) for s in ss] == [("node-a", "Established")]

        wait_for("the node's session with the reflector", session_up, 60)
        assert node.status()["node"] == "node-a"
    finally:
        node.stop()
        rr.stop()
        sys.stderr.write(node.logs() + "\n" + rr.log())


@pytest.mark.parametrize("what", ["node", "reflector"])
def test_a_wrong_certificate_stops_the_process_at_start(
    tls_etcd: TlsEtcd, etcd_prefix: str, tmp_path: Path, what: str
) -> None:
    section = {
        **tls_section(tls_etcd, etcd_prefix),
        "certFile": str(tls_etcd.pki.expired_client[0]),
    }
    config: dict[str, Any] = {"ipv4": "192.0.2.11/24", "etcd": section}
    if what == "node":
        config["nodeName"] = "n1"
    else:
        config.update(name="rr1", clusterId="244.0.0.1")
    path = tmp_path / f"{what}.yaml"
    path.write_text(yaml.safe_dump(config))
    p = subprocess.run(
        [sys.executable, "-m", "meshroute.cli", what, "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
    )
    assert p.returncode == 1
    assert "Traceback" not in p.stderr
    assert f"cannot start: etcd certFile {section['certFile']}: certificate" in p.stderr
    assert "expired on" in p.stderr
