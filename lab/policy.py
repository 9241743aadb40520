"""Network policy in a built lab, driven through meshroute's CLI and files
only: apply manifests (written to the run dir), wait until every node
enforces what etcd holds (each node's ``/status`` reports the etcd revision
its kernel ruleset reflects), and the demo's policy step with its ping
matrix, denied pairs marked."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from lab.build import Lab, meshroute_cli
from lab.pods import PingMatrix, ping_matrix, pod_endpoints
from lab.status import node_get

Say = Callable[[str], None]


def cli(lab: Lab, *args: str) -> str:
    p = meshroute_cli(lab, *args)
    if p.returncode != 0:
        raise RuntimeError(f"meshroute {' '.join(args)}: {p.stderr.strip()[:300]}")
    return p.stdout


def apply_manifests(lab: Lab, docs: Sequence[Mapping[str, Any]], name: str = "policy") -> Path:
    """``meshroute apply -f`` of ``docs``, from a file in the run dir."""
    path = Path(lab.plan.run_dir) / f"{name}.yaml"
    path.write_text(yaml.safe_dump_all([dict(d) for d in docs]))
    cli(lab, "apply", "-f", str(path))
    return path


def etcd_revision(lab: Lab) -> int:
    mgmt = lab.state.namespaces.get("mgmt")
    where = ["ip", "netns", "exec", mgmt] if mgmt else []
    p = subprocess.run(
        [*where, "etcdctl", f"--endpoints={lab.etcd_endpoint}", "endpoint", "status", "-w", "json"],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    )
    return int(json.loads(p.stdout)[0]["Status"]["header"]["revision"])


def applied_revision(lab: Lab, node_name: str) -> int:
    code, body = node_get(lab, lab.plan.node(node_name), "/status")
    if code != 200:
        return -1
    return int((json.loads(body).get("policy") or {}).get("appliedRevision", -1))


def wait_enforced(lab: Lab, timeout: float = 30.0) -> float:
    """Until every node's kernel enforces etcd as it is now (the node
    watches the whole prefix, so any write makes it re-read); the seconds
    it took."""
    t0 = time.monotonic()
    want = etcd_revision(lab)
    lagging = [n.name for n in lab.plan.nodes]
    while lagging:
        lagging = [n for n in lagging if applied_revision(lab, n) < want]
        if not lagging:
            break
        if time.monotonic() - t0 > timeout:
            raise RuntimeError(f"policy at etcd revision {want} not enforced on {lagging}")
        time.sleep(0.05)
    return time.monotonic() - t0


def format_policy_matrix(m: PingMatrix, denied: set[tuple[str, str]]) -> str:
    """The ping matrix with each cell against what the policy says: ``ok``
    and ``deny`` as expected, ``FAIL`` (should answer) and ``LEAK`` (should
    be denied) not."""
    width = max([len(x) for x in m.labels] + [4])
    rows = [" " * width + " " + " ".join(f"{x:>{width}}" for x in m.labels)]
    for a in m.labels:
        cells = []
        for b in m.labels:
            got, deny = (a, b) in m.ok, (a, b) in denied
            cells.append(("LEAK" if got else "deny") if deny else ("ok" if got else "FAIL"))
        rows.append(f"{a:<{width}} " + " ".join(f"{c:>{width}}" for c in cells))
    return "\n".join(rows)


def policy_step(lab: Lab, say: Say) -> bool:
    """Default-deny ingress for the lab's pods plus one allow rule (from
    pods labelled ``role=client``; the first pod gets that label), the ping
    matrix with the denied pairs marked; then the policy removed and the
    full matrix again. True when every cell was as expected."""
    pods = [p for p in lab.state.pods if p.address]
    if len(pods) < 2:
        say("policy step: fewer than two pods, skipped")
        return True
    client = pods[0]
    deny = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "default-deny", "namespace": "lab"},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
    }
    allow = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "allow-client", "namespace": "lab"},
        "spec": {
            "podSelector": {},
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "client"}}}]}],
        },
    }
    cli(lab, "label", "pod", f"lab/{client.container_id}", "role=client")
    path = apply_manifests(lab, [deny, allow], "demo-policy")
    took = wait_enforced(lab)
    say(
        f"policy: applied {path} (default-deny ingress in namespace lab, allow from "
        f"role=client = {client.label}); enforced on every node in {took:.2f} s"
    )
    labels = [p.label for p in pods]
    denied = {(a, b) for a in labels for b in labels if a != b and a != client.label}
    m = ping_matrix(pod_endpoints(lab))
    print(format_policy_matrix(m, denied), flush=True)
    ok = m.ok == frozenset((a, b) for a in labels for b in labels) - denied
    cli(lab, "delete", "networkpolicy", "lab/default-deny")
    cli(lab, "delete", "networkpolicy", "lab/allow-client")
    took = wait_enforced(lab)
    say(f"policy removed; enforced on every node in {took:.2f} s")
    m = ping_matrix(pod_endpoints(lab))
    print(format_policy_matrix(m, set()), flush=True)
    return ok and m.all_ok
