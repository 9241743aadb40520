"""What a running lab shows: BIRD's sessions (``birdc show protocols``),
each node's own sessions (its ``/status``), each node's routes as
felix_lite programmed them (direct, vxlan, ipip, blackhole), IPAM use, and
the summary printed after ``lab up``. Parsing and classifying are pure;
reading calls ``birdc``, ``ip``, the nodes' HTTP endpoints and the CLI."""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import Any

import yaml

from lab.build import Lab, meshroute_cli
from lab.frr import bgp_neighbors
from lab.netns import call_in_netns, run
from lab.pods import PingMatrix, format_matrix
from lab.state import PodRecord
from lab.topology import FrrPlan, NodePlan

FELIX_PROTO = 213  # felix_lite's route protocol (node.yaml felix.routeProtocol)
VXLAN_PREFIX = "vxlan"
IPIP_DEVICE = "tunl0"
ROUTE_KINDS = ("direct", "vxlan", "ipip", "blackhole")


@dataclass(frozen=True)
class BirdProtocol:
    name: str
    proto: str
    state: str
    info: str

    @property
    def established(self) -> bool:
        return self.proto == "BGP" and self.info.startswith("Established")


def parse_protocols(text: str) -> list[BirdProtocol]:
    """``birdc show protocols`` output to rows (banner and header skipped)."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 5 or parts[0] in ("BIRD", "Name") or line.startswith(" "):
            continue
        # Since is "hh:mm:ss.mmm" or "YYYY-MM-DD hh:mm:ss"; Info follows it
        rest = parts[5:]
        if rest and ":" in rest[0] and "-" in parts[4]:
            rest = rest[1:]
        out.append(BirdProtocol(parts[0], parts[1], parts[3], " ".join(rest)))
    return out


def bird_protocols(socket_path: str) -> list[BirdProtocol]:
    p = subprocess.run(
        ["birdc", "-s", socket_path, "show", "protocols"],
        capture_output=True,
        text=True,
        timeout=10,
    )
    if p.returncode != 0:
        raise RuntimeError(f"birdc -s {socket_path}: {p.stderr.strip() or p.stdout.strip()}")
    return parse_protocols(p.stdout)


@dataclass(frozen=True)
class NodeRoute:
    dst: str
    kind: str  # one of ROUTE_KINDS
    via: str | None
    dev: str | None


def classify_route(r: Mapping[str, Any]) -> NodeRoute:
    """One entry of ``ip -j route`` (felix_lite's protocol) as a kind."""
    dev = r.get("dev")
    via = r.get("gateway")
    if r.get("type") == "blackhole":
        kind = "blackhole"
    elif dev == IPIP_DEVICE:
        kind = "ipip"
    elif isinstance(dev, str) and dev.startswith(VXLAN_PREFIX):
        kind = "vxlan"
    else:
        kind = "direct"
    if via is None and r.get("nexthops"):
        via = ",".join(str(h.get("gateway")) for h in r["nexthops"])
    return NodeRoute(str(r.get("dst")), kind, via, dev if isinstance(dev, str) else None)


def node_routes(netns: str, proto: int = FELIX_PROTO, version: int = 4) -> list[NodeRoute]:
    family = f"-{version}"
    out = run(["ip", "-n", netns, family, "-j", "route", "show", "proto", str(proto)], check=False)
    entries = json.loads(out) if out.strip() else []
    return [classify_route(e) for e in entries]


def unrouted_pods(
    routes_by_node: Mapping[str, Iterable[str]], pods: Iterable[PodRecord]
) -> list[tuple[str, str]]:
    """(node, pod address) pairs where none of the node's route
    destinations (``ip -j route``'s ``dst``: blackholes left out by the
    caller) covers a pod on another node, both families: what a ping matrix
    would find unreachable for want of a route."""
    nets = {
        node: [
            ip_network(net)
            for d in dsts
            for net in (("0.0.0.0/0", "::/0") if d == "default" else (d,))
        ]
        for node, dsts in routes_by_node.items()
    }
    missing = []
    for node, have in nets.items():
        for pod in pods:
            if pod.node == node:
                continue
            for address in filter(None, (pod.address, pod.address6)):
                ip = ip_address(address)
                if not any(ip in n for n in have if n.version == ip.version):
                    missing.append((node, address))
    return missing


def pod_routes_missing(lab: Lab) -> list[tuple[str, str]]:
    """``unrouted_pods`` read from every node's kernel (felix_lite's routes)."""
    families = (4, 6) if lab.plan.params.dual_stack else (4,)
    routes = {
        n.name: [
            r.dst
            for v in families
            for r in node_routes(lab.state.ns(n.ns), version=v)
            if r.kind != "blackhole"
        ]
        for n in lab.plan.nodes
    }
    return unrouted_pods(routes, lab.state.pods)


def tentative_addresses(lab: Lab) -> list[tuple[str, str]]:
    """(namespace, address) of every IPv6 address still in duplicate address
    detection in a node's or a pod's namespace: Debian's bridge plugin gives
    the L2-segment pods and the node's bridge addresses with DAD on, and a
    tentative address answers nothing for a second or two."""
    if not lab.plan.params.dual_stack:
        return []
    namespaces = [lab.state.ns(n.ns) for n in lab.plan.nodes] + [p.netns for p in lab.state.pods]
    found = []
    for ns in namespaces:
        out = run(["ip", "-n", ns, "-6", "-j", "addr", "show", "tentative"], check=False)
        for link in json.loads(out) if out.strip() else []:
            # ip -j lists a link's other addresses as empty objects
            found += [(ns, str(a["local"])) for a in link.get("addr_info", []) if "local" in a]
    return found


def format_routes(routes_by_node: Mapping[str, Iterable[NodeRoute]]) -> str:
    rows = []
    by_node = {node: sorted(routes, key=lambda r: r.dst) for node, routes in routes_by_node.items()}
    width = max([18] + [len(r.dst) for rs in by_node.values() for r in rs])  # IPv6 runs longer
    for node, rs in by_node.items():
        counts = Counter(r.kind for r in rs)
        rows.append(f"{node}: " + ", ".join(f"{counts[k]} {k}" for k in ROUTE_KINDS))
        for r in rs:
            where = f"via {r.via} " if r.via else ""
            rows.append(f"  {r.dst:<{width}} {r.kind:<9} {where}{'dev ' + r.dev if r.dev else ''}")
    return "\n".join(rows)


def frr_sessions(fp: FrrPlan) -> dict[str, str]:
    """Each neighbour of an FRR router and its BGP state (``-``: unknown)."""
    got = bgp_neighbors(Path(fp.dir))
    return {a: str(got.get(a, {}).get("bgpState", "-")) for a in fp.neighbors}


def format_sessions(lab: Lab) -> str:
    rows = [f"{'router':<8} {'peer':<14} {'state':<6} info"]
    bird = [(sp.ns, sp.socket_path) for sp in lab.plan.speakers]
    bird += [(r.ns, r.socket_path) for r in lab.plan.reflectors]
    for ns, sock in bird:
        try:
            protos = bird_protocols(sock)
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
            rows.append(f"{ns:<8} {'-':<14} {'-':<6} {e}")
            continue
        for pr in protos:
            if pr.proto == "BGP":
                rows.append(f"{ns:<8} {pr.name:<14} {pr.state:<6} {pr.info}")
    for fp in lab.plan.frr:
        for addr, state in frr_sessions(fp).items():
            rows.append(f"{fp.ns:<8} {addr:<14} {'-':<6} {state} (FRR)")
    return "\n".join(rows)


def node_get(lab: Lab, node: NodePlan, path: str, timeout: float = 1.0) -> tuple[int, bytes]:
    """GET ``path`` from the node's HTTP endpoint (at ``http.listen`` of the
    node.yaml the lab wrote; inside the node's namespace with netns
    placement): the status code and body, ``(0, b"")`` when it does not answer."""
    try:
        cfg = yaml.safe_load(Path(node.config_path).read_text())
        url = f"http://{cfg['http']['listen']}{path}"
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return 0, b""

    def get() -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r:
                return int(r.status), r.read()
        except urllib.error.HTTPError as e:
            return int(e.code), e.read()
        except (OSError, ValueError):
            return 0, b""

    if lab.plan.params.node_placement == "netns":
        return call_in_netns(lab.state.ns(node.ns), get)
    return get()


def node_ready(lab: Lab, node: NodePlan, timeout: float = 1.0) -> bool:
    """The node's ``/readiness`` answers 200."""
    return node_get(lab, node, "/readiness", timeout)[0] == 200


@dataclass(frozen=True)
class NodeSession:
    peer: str
    type: str  # node-to-node mesh, global, node specific
    state: str


def parse_node_status(body: bytes) -> list[NodeSession]:
    """The peer table of a node's ``/status`` JSON."""
    doc = json.loads(body)
    return [
        NodeSession(str(p.get("peer")), str(p.get("type")), str(p.get("state")))
        for p in doc.get("peers", [])
    ]


def node_sessions(lab: Lab, node: NodePlan) -> list[NodeSession] | str:
    """The node's own BGP sessions, or why they could not be read."""
    code, body = node_get(lab, node, "/status", timeout=2.0)
    if code != 200:
        return f"/status answered {code or 'nothing'}"
    try:
        return parse_node_status(body)
    except (ValueError, AttributeError) as e:
        return f"/status unreadable: {e}"


def format_node_sessions(by_node: Mapping[str, list[NodeSession] | str]) -> str:
    rows = [f"{'node':<14} {'peer':<16} {'type':<18} state"]
    for node, sessions in by_node.items():
        if isinstance(sessions, str):
            rows.append(f"{node:<14} {'-':<16} {'-':<18} {sessions}")
            continue
        if not sessions:
            rows.append(f"{node:<14} {'-':<16} {'-':<18} no peers")
        for s in sessions:
            rows.append(f"{node:<14} {s.peer:<16} {s.type:<18} {s.state}")
    return "\n".join(rows)


def ipam_use(lab: Lab) -> str:
    p = meshroute_cli(lab, "ipam", "show")
    return (p.stdout or p.stderr).rstrip()


def summary(
    lab: Lab,
    matrix: PingMatrix | None = None,
    *,
    with_ipam: bool = True,
    matrix6: PingMatrix | None = None,
) -> str:
    versions = (4, 6) if lab.plan.params.dual_stack else (4,)
    parts = [
        f"lab: {lab.plan.params.topology}, {len(lab.plan.nodes)} nodes, run dir "
        f"{lab.plan.run_dir}, etcd {lab.etcd_endpoint}",
        "BGP sessions of the fabric's routers:\n" + format_sessions(lab),
        "BGP sessions of the nodes:\n"
        + format_node_sessions({n.name: node_sessions(lab, n) for n in lab.plan.nodes}),
        "routes programmed on the nodes:\n"
        + format_routes(
            {
                n.name: [r for v in versions for r in node_routes(lab.state.ns(n.ns), version=v)]
                for n in lab.plan.nodes
            }
        ),
    ]
    if with_ipam:
        parts.append("IPAM:\n" + ipam_use(lab))
    if matrix is not None:
        parts.append("pod to pod (row pings column):\n" + format_matrix(matrix))
    if matrix6 is not None:
        parts.append("pod to pod over IPv6 (ping -6; row pings column):\n" + format_matrix(matrix6))
    return "\n\n".join(parts)
