"""Policy resources through the CLI against real etcd: a Kubernetes
NetworkPolicy manifest applies unchanged, get/delete work, and a bad file
names file, document and field and writes nothing (not even its good
documents)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lab.etcd import EtcdCluster
from tests.harness.cli import cli

pytestmark = pytest.mark.etcd

# As exported from a Kubernetes cluster (metadata a cluster adds, status).
K8S_POLICY = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: web-allow
  namespace: x
  uid: 7c1b4a44-0000-4000-8000-000000000000
  resourceVersion: "1234"
  generation: 1
  creationTimestamp: "2026-01-01T00:00:00Z"
  annotations: {owner: team-x}
spec:
  podSelector:
    matchLabels: {app: web}
    matchExpressions:
    - {key: tier, operator: In, values: [front, edge]}
  policyTypes: [Ingress, Egress]
  ingress:
  - from:
    - podSelector: {matchLabels: {app: client}}
      namespaceSelector: {matchLabels: {team: y}}
    - ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}
    ports:
    - {protocol: TCP, port: 80}
    - {protocol: UDP, port: 8000, endPort: 8080}
    - {port: http}
  egress:
  - to: [{namespaceSelector: {}}]
    ports: [{protocol: UDP, port: 53}]
status: {}
"""
GNP = """\
apiVersion: meshroute.io/v1
kind: GlobalNetworkPolicy
metadata: {name: deny-icmp}
spec:
  order: 10
  selector: "has(app)"
  types: [Ingress]
  ingress:
  - action: Deny
    protocol: ICMP
    icmp: {type: 8, code: 0}
  - action: Pass
    protocol: TCP
    source: {nets: [192.0.2.0/24], notPorts: [22, "1000:2000"]}
    destination: {selector: "app == 'db'", ports: [postgres]}
"""
NS = """\
apiVersion: meshroute.io/v1
kind: Namespace
metadata: {name: y, labels: {team: y}}
"""


def docs(server: EtcdCluster, prefix: str, kind: str) -> list[dict]:
    out = cli(server, prefix, "get", kind, "-o", "json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_apply_get_delete(etcd_server: EtcdCluster, etcd_prefix: str) -> None:
    r = cli(etcd_server, etcd_prefix, "apply", "-f", "-", stdin="---\n".join([K8S_POLICY, GNP, NS]))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:3] == [
        "networkpolicy/x/web-allow created",
        "globalnetworkpolicy/deny-icmp created",
        "namespace/y created",
    ]
    (np_,) = docs(etcd_server, etcd_prefix, "networkpolicies")
    assert np_["spec"]["ingress"][0]["from"][1]["ipBlock"]["except"] == ["10.1.0.0/16"]
    assert np_["spec"]["ingress"][0]["ports"][2] == {"port": "http", "protocol": "TCP"}
    assert "egress" in np_["spec"] and np_["metadata"]["namespace"] == "x"
    (gnp,) = docs(etcd_server, etcd_prefix, "gnp")
    assert gnp["spec"]["order"] == 10 and gnp["spec"]["ingress"][1]["action"] == "Pass"
    assert docs(etcd_server, etcd_prefix, "namespaces")[0]["metadata"]["labels"] == {"team": "y"}
    table = cli(etcd_server, etcd_prefix, "get", "netpol")
    assert "web-allow" in table.stdout and "Ingress,Egress" in table.stdout
    again = cli(etcd_server, etcd_prefix, "apply", "-f", "-", stdin=GNP)
    assert again.stdout.strip() == "globalnetworkpolicy/deny-icmp configured"

    assert cli(etcd_server, etcd_prefix, "delete", "networkpolicy", "x/web-allow").returncode == 0
    assert cli(etcd_server, etcd_prefix, "delete", "gnp", "deny-icmp").returncode == 0
    assert cli(etcd_server, etcd_prefix, "delete", "namespace", "y").returncode == 0
    for kind in ("networkpolicies", "gnp", "namespaces"):
        assert docs(etcd_server, etcd_prefix, kind) == []
    gone = cli(etcd_server, etcd_prefix, "delete", "gnp", "deny-icmp")
    assert gone.returncode == 1 and "does not exist" in gone.stderr
    bad = cli(etcd_server, etcd_prefix, "delete", "networkpolicy", "no-namespace")
    assert bad.returncode == 1 and "NAMESPACE/NAME" in bad.stderr


NP_HEAD = (
    "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: bad, namespace: x}\n"
)
GNP_HEAD = "apiVersion: meshroute.io/v1\nkind: GlobalNetworkPolicy\nmetadata: {name: bad}\n"


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        (NP_HEAD + "spec: {podSelector: {}, colour: blue}\n", "spec.colour: Extra inputs"),
        (
            NP_HEAD + "spec: {podSelector: {matchExpressions: [{key: a, operator: Near}]}}\n",
            "spec.podSelector.matchExpressions.0.operator",
        ),
        (
            NP_HEAD + "spec: {podSelector: {matchExpressions: [{key: a, operator: In}]}}\n",
            "spec.podSelector.matchExpressions.0.values: required",
        ),
        (
            NP_HEAD + "spec: {podSelector: {matchLabels: {'a b': c}}}\n",
            "spec.podSelector.matchLabels: 'a b' is not a valid label key",
        ),
        (
            NP_HEAD
            + "spec: {ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, except: [11.0.0.0/16]}}]}]}\n",
            "spec.ingress.0.from.0.ipBlock.except.0: 11.0.0.0/16 is not inside 10.0.0.0/8",
        ),
        (NP_HEAD + "spec: {ingress: [{from: [{}]}]}\n", "spec.ingress.0.from.0: give podSelector"),
        (
            NP_HEAD + "spec: {egress: [{ports: [{port: http, endPort: 90}]}]}\n",
            "spec.egress.0.ports.0.endPort: needs a numbered port",
        ),
        (
            NP_HEAD + "spec: {egress: [{ports: [{port: 0}]}]}\n",
            "spec.egress.0.ports.0.port: 0 is not in 1..65535",
        ),
        (
            NP_HEAD + "spec: {egress: [{ports: [{port: Not_A_Name}]}]}\n",
            "is not a port number or a valid port name",
        ),
        (
            NP_HEAD + "spec: {egress: [{ports: [{protocol: ICMP}]}]}\n",
            "spec.egress.0.ports.0.protocol",
        ),
        (NP_HEAD + "spec: {policyTypes: [Sideways]}\n", "spec.policyTypes.0"),
        (
            "apiVersion: networking.k8s.io/v2\nkind: NetworkPolicy\nmetadata: {name: n}\n",
            "apiVersion: Input should be 'networking.k8s.io/v1'",
        ),
        (GNP_HEAD + "spec: {selector: \"app = 'x'\"}\n", "spec.selector: unexpected"),
        (
            GNP_HEAD + 'spec: {ingress: [{action: Allow, source: {selector: "has("}}]}\n',
            "spec.ingress.0.source.selector",
        ),
        (GNP_HEAD + "spec: {ingress: [{action: Maybe}]}\n", "spec.ingress.0.action"),
        (
            GNP_HEAD + "spec: {ingress: [{action: Allow, destination: {ports: [80]}}]}\n",
            "spec.ingress.0.destination.ports: ports need protocol",
        ),
        (
            GNP_HEAD + "spec: {ingress: [{action: Allow, protocol: TCP, icmp: {type: 8}}]}\n",
            "spec.ingress.0.icmp: needs protocol ICMP",
        ),
        (
            GNP_HEAD
            + "spec: {ingress: [{action: Allow, protocol: TCP, destination: {ports: ['9:1']}}]}\n",
            "spec.ingress.0.destination.ports.0: '9:1' is not a port or range",
        ),
        (GNP_HEAD + "spec: {order: .nan}\n", "spec.order"),
        (GNP_HEAD + "spec: {order: .inf}\n", "spec.order"),
        (
            GNP_HEAD + "spec: {ingress: [{action: Allow, protocol: GRE}]}\n",
            "spec.ingress.0.protocol",
        ),
        (
            GNP_HEAD + "spec: {selector: '" + "x" * 100_000 + "'}\n",
            "spec.selector: String should have at most 4096 characters",
        ),
        (
            "apiVersion: meshroute.io/v1\nkind: Namespace\nmetadata: {name: Bad_NS}\n",
            "metadata.name: 'Bad_NS' is not a DNS label",
        ),
        (
            "apiVersion: meshroute.io/v1\nkind: Namespace\n"
            "metadata: {name: n, labels: {k: 'v v'}}\n",
            "metadata.labels.k: 'v v' is not a valid label value",
        ),
    ],
)
def test_bad_policy_file_names_file_document_field_and_writes_nothing(
    etcd_server: EtcdCluster, etcd_prefix: str, tmp_path: Path, doc: str, expected: str
) -> None:
    f = tmp_path / "policy.yaml"
    f.write_text(NS + "---\n" + doc)
    r = cli(etcd_server, etcd_prefix, "apply", "-f", str(f))
    assert r.returncode == 1, r.stdout
    assert "nothing applied" in r.stderr and expected in r.stderr, r.stderr
    assert f"{f}: document 2 (" in r.stderr
    assert "Traceback" not in r.stderr
    assert len(r.stderr) < 3000
    assert docs(etcd_server, etcd_prefix, "namespaces") == []


def test_named_port_no_pod_has_is_valid(etcd_server: EtcdCluster, etcd_prefix: str) -> None:
    doc = NP_HEAD + "spec: {ingress: [{ports: [{port: nobody-has-it}]}]}\n"
    r = cli(etcd_server, etcd_prefix, "apply", "-f", "-", stdin=doc)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (
            b"apiVersion: meshroute.io/v1\nkind: GlobalNetworkPolicy\nmetadata: {name: a}\n"
            b"spec: {order: 1e999}\n",
            "spec.order",
        ),
        (
            b"apiVersion: meshroute.io/v1\nkind: GlobalNetworkPolicy\nmetadata: {name: a}\n"
            b"spec: {ingress: [{action: Allow, source: {nets: [10.0.0.0/33]}}]}\n",
            "spec.ingress.0.source.nets.0",
        ),
    ],
)
def test_hostile_files_get_one_clear_error(
    etcd_server: EtcdCluster, etcd_prefix: str, tmp_path: Path, content: bytes, expected: str
) -> None:
    f = tmp_path / "hostile.yaml"
    f.write_bytes(content)
    r = cli(etcd_server, etcd_prefix, "apply", "-f", str(f))
    assert r.returncode == 1 and expected in r.stderr, r.stderr[:500]
    assert "Traceback" not in r.stderr and len(r.stderr) < 2000
