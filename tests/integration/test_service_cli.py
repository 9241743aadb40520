"""ServiceAddresses and the BGPConfiguration's service ranges through the
CLI against real etcd: apply, get, delete; conflicts (an address twice, an
address in a pool) and bad documents name file, document and field, and
write nothing, not even the good documents beside them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from lab.etcd import EtcdCluster
from tests.harness.cli import cli

pytestmark = [pytest.mark.etcd, pytest.mark.slow]

POOL = """\
apiVersion: meshroute.io/v1
kind: IPPool
metadata: {name: pods}
spec: {cidr: 10.244.0.0/16}
"""


def service(name: str, address: str, *endpoints: str, ports: object = None) -> str:
    doc = {
        "apiVersion": "meshroute.io/v1",
        "kind": "ServiceAddress",
        "metadata": {"name": name},
        "spec": {
            "address": address,
            "ports": ports or [{"port": 80, "protocol": "TCP", "targetPort": 8080}],
            "endpoints": list(endpoints),
        },
    }
    return yaml.safe_dump(doc)


def names(etcd: EtcdCluster, prefix: str) -> list[str]:
    got = cli(etcd, prefix, "get", "serviceaddresses", "-o", "json")
    assert got.returncode == 0, got.stderr
    return [d["metadata"]["name"] for d in json.loads(got.stdout)]


def test_apply_get_delete(etcd_server: EtcdCluster, etcd_prefix: str) -> None:
    text = "---\n".join(
        [
            POOL,
            service("web", "203.0.113.10", "10.244.1.5", "10.244.2.7"),
            service("web6", "2001:db8:5::10", "fd00:244::5", ports=[{"port": 443}]),
        ]
    )
    got = cli(etcd_server, etcd_prefix, "apply", "-f", "-", stdin=text)
    assert got.returncode == 0, got.stderr
    assert "serviceaddress/web created" in got.stdout
    table = cli(etcd_server, etcd_prefix, "get", "svcaddr")
    assert "203.0.113.10" in table.stdout and "80/TCP" in table.stdout, table.stdout
    docs = json.loads(cli(etcd_server, etcd_prefix, "get", "serviceaddress", "-o", "json").stdout)
    web = next(d for d in docs if d["metadata"]["name"] == "web")
    assert web["spec"]["endpoints"] == ["10.244.1.5", "10.244.2.7"]
    assert web["spec"]["ports"] == [{"port": 80, "protocol": "TCP", "targetPort": 8080}]

    # applied again with one endpoint less: configured, in place
    again = cli(
        etcd_server,
        etcd_prefix,
        "apply",
        "-f",
        "-",
        stdin=service("web", "203.0.113.10", "10.244.1.5"),
    )
    assert "serviceaddress/web configured" in again.stdout, again.stderr

    gone = cli(etcd_server, etcd_prefix, "delete", "serviceaddress", "web")
    assert gone.returncode == 0 and "serviceaddress/web deleted" in gone.stdout
    assert names(etcd_server, etcd_prefix) == ["web6"]
    missing = cli(etcd_server, etcd_prefix, "delete", "serviceaddress", "web")
    assert missing.returncode != 0 and "does not exist" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_conflicts_refuse_the_whole_apply(etcd_server: EtcdCluster, etcd_prefix: str) -> None:
    assert cli(etcd_server, etcd_prefix, "apply", "-f", "-", stdin=POOL).returncode == 0
    first = service("a", "203.0.113.10", "10.244.1.5")
    assert cli(etcd_server, etcd_prefix, "apply", "-f", "-", stdin=first).returncode == 0

    text = "---\n".join(
        [
            service("ok", "203.0.113.11", "10.244.1.6"),
            service("b", "203.0.113.10", "10.244.1.7"),  # a's address
            service("in-pool", "10.244.9.9", "10.244.1.8"),
        ]
    )
    got = cli(etcd_server, etcd_prefix, "apply", "-f", "-", stdin=text)
    assert got.returncode != 0
    assert "document 2 (ServiceAddress b): spec.address: 203.0.113.10 is already" in got.stderr
    assert "existing serviceaddress a" in got.stderr
    assert "document 3 (ServiceAddress in-pool): spec.address: 10.244.9.9 is in IP pool pods" in (
        got.stderr
    )
    assert names(etcd_server, etcd_prefix) == ["a"]  # not even "ok"

    # a ServiceAddress re-applied with its own address is no conflict
    moved = service("a", "203.0.113.10", "10.244.1.9")
    assert cli(etcd_server, etcd_prefix, "apply", "-f", "-", stdin=moved).returncode == 0


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        (service("x", "203.0.113.1", "fd00::1"), "spec.endpoints.0: fd00::1 is IPv6"),
        (service("x", "nope"), "spec.address: Value error, 'nope' is not an IP address"),
        (
            service("x", "203.0.113.1", *(f"10.1.{i // 250}.{i % 250}" for i in range(1100))),
            "spec.endpoints",
        ),
        (service("x", "203.0.113.1", ports=[{"port": float("nan")}]), "spec.ports.0.port"),
        (
            "apiVersion: meshroute.io/v1\nkind: BGPConfiguration\nmetadata: {name: default}\n"
            "spec: {serviceClusterIPs: [10.96.0.1/12]}\n",
            "spec.serviceClusterIPs.0: 10.96.0.1/12 has host bits set",
        ),
    ],
)
def test_bad_documents_name_the_field(
    etcd_server: EtcdCluster, etcd_prefix: str, tmp_path: Path, doc: str, expected: str
) -> None:
    f = tmp_path / "svc.yaml"
    f.write_text(doc)
    got = cli(etcd_server, etcd_prefix, "apply", "-f", str(f))
    assert got.returncode != 0
    assert expected in got.stderr, got.stderr
    assert str(f) in got.stderr and "document 1" in got.stderr
    assert "Traceback" not in got.stderr
    assert len(got.stderr) < 4000  # a 1100-endpoint list is not echoed back
    assert names(etcd_server, etcd_prefix) == []


def test_service_ranges_apply_and_read_back(etcd_server: EtcdCluster, etcd_prefix: str) -> None:
    text = (
        "apiVersion: meshroute.io/v1\nkind: BGPConfiguration\nmetadata: {name: default}\n"
        "spec:\n  serviceClusterIPs: [10.96.0.0/12, 'fd00:96::/108']\n"
        "  serviceExternalIPs: [198.51.100.0/24]\n  serviceLoadBalancerIPs: [203.0.113.0/24]\n"
    )
    assert cli(etcd_server, etcd_prefix, "apply", "-f", "-", stdin=text).returncode == 0
    got = yaml.safe_load(cli(etcd_server, etcd_prefix, "get", "bgpconfig", "-o", "yaml").stdout)
    spec = got["spec"]
    assert spec["serviceClusterIPs"] == ["10.96.0.0/12", "fd00:96::/108"]
    assert spec["serviceExternalIPs"] == ["198.51.100.0/24"]
    assert spec["serviceLoadBalancerIPs"] == ["203.0.113.0/24"]


def test_the_example_applies_verbatim(etcd_server: EtcdCluster, etcd_prefix: str) -> None:
    assert cli(etcd_server, etcd_prefix, "apply", "-f", "-", stdin=POOL).returncode == 0
    example = Path(__file__).resolve().parents[2] / "configs" / "services.yaml"
    got = cli(etcd_server, etcd_prefix, "apply", "-f", str(example))
    assert got.returncode == 0, got.stderr
    assert names(etcd_server, etcd_prefix) == ["web", "web-v6"]
