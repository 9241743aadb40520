"""Pods and pings in a built lab: pods made by ``meshroute-cni`` (routed
pods, the default) or by Debian's CNI ``bridge`` plugin with
``meshroute-cni-ipam`` (``pod_mode="bridge"``), against their node's IPAM
socket, with an IPv6 address too in a dual-stack lab; a ping matrix per
address family run from inside each source namespace, in parallel."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from lab.build import Lab
from lab.netns import NetnsFactory
from lab.state import PodRecord
from lab.topology import NodePlan, PodMode

BRIDGE_PLUGIN = "/usr/lib/cni/bridge"
ROUTED_PLUGIN = "meshroute-cni"
POD_BRIDGE = "cni0"
# one plugin run: its own request timeout (30 s, the netconf's default)
# plus the plugin's start; ``lab_up`` stretches it under CPU emulation
CNI_TIMEOUT_S = 60.0


def pod_netconf(node: NodePlan, mode: PodMode = "routed") -> dict[str, Any]:
    """A node with an IPv6 address gives its pods one too."""
    families = {"assign_ipv6": True} if node.address6 else {}
    if mode == "routed":
        return {
            "cniVersion": "1.0.0",
            "name": "meshroute-lab",
            "type": ROUTED_PLUGIN,
            "socket": node.ipam_socket,
            **({"ipam": families} if families else {}),
        }
    return {
        "cniVersion": "1.0.0",
        "name": "meshroute-lab",
        "type": "bridge",
        "bridge": POD_BRIDGE,
        "isGateway": True,
        "ipam": {"type": "meshroute-cni-ipam", "socket": node.ipam_socket, **families},
    }


def _plugin(conf: dict[str, Any], cni_path: str) -> str:
    """The executable a runtime would run for ``conf``: its type, looked up in CNI_PATH."""
    for d in cni_path.split(":"):
        path = os.path.join(d, conf["type"])
        if os.path.exists(path):
            return path
    raise RuntimeError(f"CNI plugin {conf['type']} is not in {cni_path}")


def run_cni(
    node_netns: str,
    command: str,
    pod_netns: str,
    container_id: str,
    conf: dict[str, Any],
    cni_path: str,
    cni_args: str | None = None,
    timeout: float = CNI_TIMEOUT_S,
) -> dict[str, Any]:
    """The plugin as a runtime on the node would run it; ``cni_args`` as an
    orchestrator passes them (default: namespace ``lab``, named after the
    container)."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": container_id,
        "CNI_NETNS": f"/var/run/netns/{pod_netns}",
        "CNI_IFNAME": "eth0",
        "CNI_PATH": cni_path,
        "CNI_ARGS": cni_args or orchestrator_args("lab", container_id),
    }
    p = subprocess.run(
        ["ip", "netns", "exec", node_netns, _plugin(conf, cni_path)],
        input=json.dumps(conf),
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if p.returncode != 0:
        raise RuntimeError(
            f"CNI {command} {container_id} failed: {p.stdout.strip()} {p.stderr.strip()}"
        )
    out = json.loads(p.stdout) if p.stdout.strip() else {}
    return out if isinstance(out, dict) else {}


def orchestrator_args(
    namespace: str,
    name: str,
    labels: Mapping[str, str] | None = None,
    ports: Sequence[tuple[str, str, int]] = (),
) -> str:
    """``CNI_ARGS`` as an orchestrator passes them: the pod's namespace and
    name, its labels and its named ports ``(name, protocol, port)``."""
    args = ["IgnoreUnknown=1", f"K8S_POD_NAMESPACE={namespace}", f"K8S_POD_NAME={name}"]
    if labels:
        args.append("MESHROUTE_LABELS=" + ",".join(f"{k}={v}" for k, v in labels.items()))
    if ports:
        args.append("MESHROUTE_PORTS=" + ",".join(f"{n}/{p}/{port}" for n, p, port in ports))
    return ";".join(args)


def create_pod(
    lab: Lab,
    node: NodePlan,
    label: str,
    container_id: str,
    cni_bin_dir: str | os.PathLike[str],
    cni_args: str | None = None,
    timeout: float = CNI_TIMEOUT_S,
) -> PodRecord:
    """One pod on ``node`` (its IPAM service must be running); it is
    recorded in the lab state before its CNI ADD, so ``teardown`` removes it
    even when the ADD fails half way."""
    cni_path = f"{cni_bin_dir}:{os.path.dirname(BRIDGE_PLUGIN)}"
    conf = pod_netconf(node, lab.plan.params.pod_mode)
    ns = NetnsFactory(prefix=lab.state.prefix).new(label).name
    lab.state.pods.append(PodRecord(label, node.name, ns, container_id, ""))
    lab.state.save()
    at = len(lab.state.pods) - 1
    res = run_cni(lab.state.ns(node.ns), "ADD", ns, container_id, conf, cni_path, cni_args, timeout)
    ips = [str(ip["address"]).split("/")[0] for ip in res["ips"]]
    address = next(ip for ip in ips if ":" not in ip)
    address6 = next((ip for ip in ips if ":" in ip), "")
    rec = PodRecord(label, node.name, ns, container_id, address, address6)
    lab.state.pods[at] = rec
    lab.state.save()
    return rec


def create_pods(
    lab: Lab,
    node: NodePlan,
    cni_bin_dir: str | os.PathLike[str],
    timeout: float = CNI_TIMEOUT_S,
) -> list[PodRecord]:
    """Create the node's planned pods (see ``create_pod``); ``timeout`` for
    each plugin run."""
    return [
        create_pod(lab, node, p.label, p.container_id, cni_bin_dir, timeout=timeout)
        for p in node.pods
    ]


def delete_pods(lab: Lab, cni_bin_dir: str | os.PathLike[str]) -> None:
    """CNI DEL for every pod with an address (gives the addresses back)."""
    cni_path = f"{cni_bin_dir}:{os.path.dirname(BRIDGE_PLUGIN)}"
    for rec in lab.state.pods:
        if rec.address:
            node = lab.plan.node(rec.node)
            conf = pod_netconf(node, lab.plan.params.pod_mode)
            run_cni(lab.state.ns(node.ns), "DEL", rec.netns, rec.container_id, conf, cni_path)


# ---- ping matrix ---------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    label: str
    netns: str
    address: str


@dataclass(frozen=True)
class PingMatrix:
    labels: tuple[str, ...]
    ok: frozenset[tuple[str, str]]  # (source, destination) pairs that answered

    @property
    def failures(self) -> list[tuple[str, str]]:
        return [(a, b) for a in self.labels for b in self.labels if (a, b) not in self.ok]

    @property
    def all_ok(self) -> bool:
        return not self.failures


def ping_once(netns: str, address: str, timeout_s: int = 1, count: int = 1) -> bool:
    family = ["-6"] if ":" in address else []
    p = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            netns,
            "ping",
            *family,
            "-n",
            "-q",
            "-c",
            str(count),
            "-W",
            str(timeout_s),
            address,
        ],
        capture_output=True,
        timeout=timeout_s * count + 5,
    )
    return p.returncode == 0


def ping_matrix(
    endpoints: Sequence[Endpoint],
    *,
    timeout_s: int = 1,
    workers: int = 16,
    ping: Callable[[str, str, int], bool] | None = None,
) -> PingMatrix:
    """Every endpoint pings every endpoint (itself too) from inside its
    own namespace; a failed ping is retried once, so one lost first packet
    (ARP, a route a moment late) is not a failure."""
    probe = ping or (lambda ns, addr, t: ping_once(ns, addr, t))
    pairs = [(a, b) for a in endpoints for b in endpoints]

    def one(pair: tuple[Endpoint, Endpoint]) -> bool:
        a, b = pair
        return probe(a.netns, b.address, timeout_s) or probe(a.netns, b.address, timeout_s)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(one, pairs))
    ok = frozenset((a.label, b.label) for (a, b), r in zip(pairs, results, strict=True) if r)
    return PingMatrix(tuple(e.label for e in endpoints), ok)


def format_matrix(m: PingMatrix) -> str:
    width = max([len(x) for x in m.labels] + [4])
    head = " " * width + " " + " ".join(f"{x:>{width}}" for x in m.labels)
    rows = [head]
    for a in m.labels:
        cells = ["ok" if (a, b) in m.ok else "FAIL" for b in m.labels]
        rows.append(f"{a:<{width}} " + " ".join(f"{c:>{width}}" for c in cells))
    n = len(m.labels) ** 2
    rows.append(f"{n - len(m.failures)}/{n} pairs answered")
    return "\n".join(rows)


def pod_endpoints(lab: Lab, version: int = 4) -> list[Endpoint]:
    """The pods' addresses of one family (IPv6: those of a dual-stack lab)."""
    out = []
    for p in lab.state.pods:
        address = p.address if version == 4 else p.address6
        if address:
            out.append(Endpoint(p.label, p.netns, address))
    return out


def node_endpoints(lab: Lab) -> list[Endpoint]:
    return [Endpoint(n.ns, lab.state.ns(n.ns), n.ip) for n in lab.plan.nodes]
