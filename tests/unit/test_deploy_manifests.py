"""The Kubernetes manifest in configs/kubernetes, checked offline against
the Kubernetes 1.37 JSON schemas (``kubernetes-validate``, strict: unknown
fields are errors). No cluster runs it here; docs/deploy.md says so."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
MANIFEST = REPO / "configs" / "kubernetes" / "meshroute-node.yaml"
K8S = "1.37.0"


def docs() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]


@pytest.mark.parametrize("doc", docs(), ids=lambda d: d["kind"])
def test_valid_against_the_kubernetes_schema(doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, K8S, strict=True)


def test_the_checker_refuses_a_broken_daemonset() -> None:
    [ds] = [d for d in docs() if d["kind"] == "DaemonSet"]
    ds["spec"]["template"]["spec"]["hostNetwrok"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(ds, K8S, strict=True)


def test_the_daemonset_is_what_docs_deploy_describes() -> None:
    [ds] = [d for d in docs() if d["kind"] == "DaemonSet"]
    pod = ds["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True
    inits = {c["name"]: c for c in pod["initContainers"]}
    assert inits["install-cni"]["args"] == ["install-cni"]
    compile(inits["config"]["command"][2], "config init container", "exec")
    [node] = pod["containers"]
    caps = node["securityContext"]["capabilities"]
    assert caps == {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW", "NET_BIND_SERVICE"]}
    mounts = {m["name"]: m["mountPath"] for m in node["volumeMounts"]}
    secrets = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    assert secrets == {"etcd-certs": "meshroute-etcd"}
    env = {e["name"]: e["value"] for e in node["env"]}
    assert env["MESHROUTE_ETCD_CERT_FILE"].startswith(mounts["etcd-certs"] + "/")
    assert "configs/kubernetes/meshroute-node.yaml" in (REPO / "docs" / "deploy.md").read_text()
