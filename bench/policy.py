"""Policy dataplane: meshroute's nftables ruleset against the same rules
loaded with ``iptables-restore``, one chain per endpoint (the anchor).

``python -m bench.policy --pods 5000 --policies 500 --json`` builds, in
this process, N WorkloadEndpoint records (all on this node, in 50
namespaces, 10 ``app`` labels, a named port each) and P Kubernetes
NetworkPolicies (each selects one app of one namespace; ingress from the
namespace's clients and an ipBlock with an except, TCP 80 and the named
port; every fifth also egress to the next namespace on UDP 53), parsed and
validated as ``meshroute apply`` does. Network namespaces (removed in
``finally``):

- ``full_apply_s``: from the records and policies to the kernel enforcing
  them: lowering, compiling, planning and one transaction into an empty
  table through libnftables, as the node does (``felix_lite.nft_lib``);
  ``nft_apply_s`` is the transaction alone, ``compile_s`` the rest.
- ``*_cpu_s``, ``*_cpu_ms_*``: the CPU time of the same (this process's,
  every thread, which includes libnftables' and the kernel's work for it;
  iptables-restore's for the anchor), which a loaded machine inflates far
  less than wall time; ``iptables_over_nft_cpu`` compares those.
- ``iptables_full_apply_s`` (anchor, same run, alternating which goes
  first): the same policies as ``iptables-restore`` input the way
  iptables pod networks write it: FORWARD jumps to one chain per endpoint
  and direction, those to one chain per policy, selector members and named
  ports expanded to one rule per address (no ipset; IPv4 only, where
  meshroute also loads IPv6). Timed: ``iptables-restore`` alone.
- ``pod_add_ms_p50/p99``: one more endpoint record, to its rules in the
  kernel: parse, lower, compile (the incremental path), plan, one
  transaction.
- ``policy_change_ms_p50/p99``: one policy's port changed, to the kernel:
  lowering with the agent's memory (``PolicyLowering``), the compiler's
  policy delta, plan, one transaction.
- ``pps_5000_over_pps_10``: new flows forwarded per second from a sender
  pod through the node to a receiver pod that a policy admits, with all N
  endpoints' rules loaded against 10's, alternating which goes first: UDP
  datagrams, each to a new destination port, so every packet is a flow's
  first and walks the per-endpoint chains and sets (an established flow
  would skip them on the first rule).

Medians of ``--repeat`` runs; the machine's load shows in the samples.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

from felix_lite.nft_lib import NftLib
from felix_lite.nft_reconciler import PolicyReconciler
from felix_lite.policy_compiler import PolicyCompiler
from felix_lite.policy_inputs import Direction, Endpoint, EntityMatch, PolicyInput, Rule
from lab.netns import Netns, NetnsFactory
from meshroute.policy_lowering import (
    PolicyLowering,
    endpoint_from_record,
    plan_policy_input,
)
from meshroute.policy_resources import NetworkPolicyResource
from meshroute.policy_store import PolicyState

NAMESPACES = 50
APPS = 10


def record(i: int, node: str = "n1") -> bytes:
    return json.dumps(
        {
            "node": node,
            "namespace": f"ns{i % NAMESPACES}",
            "pod": f"p{i}",
            "containerId": f"c{i}",
            "ifname": "eth0",
            "hostIface": f"bp{i}",
            "ips": [f"10.{64 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}/32", f"fd00:64::{i:x}/128"],
            "labels": {
                "app": f"app{(i // NAMESPACES) % APPS}",
                "role": "client" if i % 3 == 0 else "server",
            },
            "ports": [{"name": "http", "protocol": "TCP", "port": 8080}],
        }
    ).encode()


def policy(k: int, port: int = 80) -> NetworkPolicyResource:
    spec: dict[str, Any] = {
        "podSelector": {"matchLabels": {"app": f"app{(k // NAMESPACES) % APPS}"}},
        "ingress": [
            {
                "from": [
                    {"podSelector": {"matchLabels": {"role": "client"}}},
                    {"ipBlock": {"cidr": "192.168.0.0/16", "except": [f"192.168.{k % 256}.0/24"]}},
                ],
                "ports": [{"port": port}, {"port": "http"}],
            }
        ],
    }
    if k % 5 == 0:
        target = {"kubernetes.io/metadata.name": f"ns{(k + 1) % NAMESPACES}"}
        spec["egress"] = [
            {
                "to": [{"namespaceSelector": {"matchLabels": target}}],
                "ports": [{"protocol": "UDP", "port": 53}],
            }
        ]
    return NetworkPolicyResource.model_validate(
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": f"pol{k}", "namespace": f"ns{k % NAMESPACES}"},
            "spec": spec,
        }
    )


# The two real pods of the forwarding measurement: a sender and a receiver
# that one more policy admits.
SENDER, RECEIVER = "10.63.0.1", "10.63.0.2"


def real_pods() -> tuple[list[bytes], NetworkPolicyResource]:
    recs = [
        json.dumps(
            {
                "node": "n1",
                "namespace": "bench",
                "pod": name,
                "containerId": name,
                "ifname": "eth0",
                "hostIface": f"mr{name}",
                "ips": [f"{ip}/32"],
                "labels": {"app": name},
            }
        ).encode()
        for name, ip in (("snd", SENDER), ("rcv", RECEIVER))
    ]
    pol = NetworkPolicyResource.model_validate(
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": "rcv", "namespace": "bench"},
            "spec": {
                "podSelector": {"matchLabels": {"app": "rcv"}},
                "policyTypes": ["Ingress", "Egress"],
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "snd"}}}]}],
                "egress": [{}],
            },
        }
    )
    return recs, pol


# The sender pod's program: COUNT datagrams to RECEIVER, destination ports
# 1024 upwards, from source port SPORT; prints the seconds it took.
_SENDER = (
    "import socket, sys, time; dst, n, sport = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]);"
    ' s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("", sport));'
    " t = time.perf_counter();"
    ' [s.sendto(b"x" * 18, (dst, 1024 + j % 64000)) for j in range(n)];'
    " print(time.perf_counter() - t)"
)


# ------------------------------------------------------------ the anchor


def _members(
    m: EntityMatch, endpoints: Sequence[Endpoint], ns_labels: dict[str, dict[str, str]]
) -> list[Endpoint]:
    return [
        e
        for e in endpoints
        if (m.namespace is None or e.namespace == m.namespace)
        and (
            m.namespace_selector is None
            or m.namespace_selector.match(ns_labels.get(e.namespace, {}))
        )
        and (m.selector is None or m.selector.match(e.label_map))
    ]


def _rule_lines(
    chain: str,
    r: Rule,
    d: Direction,
    endpoints: Sequence[Endpoint],
    selected: Sequence[Endpoint],
    ns: dict[str, dict[str, str]],
) -> list[str]:
    peer = r.source if d is Direction.INGRESS else r.destination
    side, addr = ("-s", "-d") if d is Direction.INGRESS else ("-d", "-d")
    proto = f" -p {r.protocol}" if r.protocol else ""
    allow = " -j MARK --set-xmark 0x10000/0x10000"
    ports = r.destination.ports if d is Direction.INGRESS else peer.ports
    numbered = [
        f"{p.first}" if p.first == p.last else f"{p.first}:{p.last}"
        for p in ports
        if p.name is None
    ]
    named = {p.name for p in ports if p.name}
    port_match = [f" -m multiport --dports {','.join(numbered)}"] if numbered else []
    # a named port resolves on the destination: the policy's own pods for ingress
    named_eps = (
        (selected if d is Direction.INGRESS else _members(peer, endpoints, ns)) if named else []
    )
    named_match = [
        f" {addr} {ip}/32 --dport {np.port}"
        for e in named_eps
        for np in e.ports
        if np.name in named
        for ip in e.addresses[4]
    ]
    port_variants = (port_match + named_match) if ports else [""]
    lines: list[str] = []
    if peer.selects_endpoints:
        sources = [
            f" {side} {ip}/32" for e in _members(peer, endpoints, ns) for ip in e.addresses[4]
        ]
    elif peer.nets:
        sources = [f" {side} {n}" for n in peer.nets if n.version == 4]
        # an except leaves the policy's chain (near enough for the anchor's size)
        lines += [f"-A {chain} {side} {n} -j RETURN" for n in peer.not_nets if n.version == 4]
    else:
        sources = [""]
    for s in sources:
        for pv in port_variants:
            lines.append(f"-A {chain}{proto}{s}{pv}{allow}")
    return lines


def iptables_rules(inp: PolicyInput) -> str:
    ns = {n.name: dict(n.labels) for n in inp.namespaces}
    lines = ["*filter", ":FORWARD ACCEPT [0:0]"]
    body: list[str] = ["-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"]
    chains: list[str] = []
    for pi, p in enumerate(inp.policies):
        for d in p.types:
            c = f"pol-{pi}-{d.value[0]}"
            chains.append(c)
            selected = [
                e
                for e in inp.endpoints
                if e.namespace == p.namespace and p.selector.match(e.label_map)
            ]
            for r in p.ingress if d is Direction.INGRESS else p.egress:
                body += _rule_lines(c, r, d, inp.endpoints, selected, ns)
    for ei, e in enumerate(inp.endpoints):
        for d in Direction:
            applies = [
                (pi, p)
                for pi, p in enumerate(inp.policies)
                if d in p.types and p.namespace == e.namespace and p.selector.match(e.label_map)
            ]
            if not applies:
                continue
            c = f"ep-{ei}-{d.value[0]}"
            chains.append(c)
            flag = "-o" if d is Direction.INGRESS else "-i"
            body.append(f"-A FORWARD {flag} {e.iface} -j {c}")
            body.append(f"-A {c} -j MARK --set-xmark 0x0/0x10000")
            for pi, _ in applies:
                body.append(f"-A {c} -j pol-{pi}-{d.value[0]}")
                verdict = "ACCEPT" if d is Direction.INGRESS else "RETURN"
                body.append(f"-A {c} -m mark --mark 0x10000/0x10000 -j {verdict}")
            body.append(f"-A {c} -j DROP")
    lines += [f":{c} - [0:0]" for c in chains] + body + ["COMMIT", ""]
    return "\n".join(lines)


# ------------------------------------------------------------ measuring


def _time_cmd(args: Sequence[str], stdin: str) -> float:
    t0 = time.perf_counter()
    p = subprocess.run(list(args), input=stdin, capture_output=True, text=True, timeout=900)
    took = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:5])}: {p.stderr.strip()[:500]}")
    return took


def _children_cpu() -> float:
    """CPU seconds of the finished child processes (nft, iptables-restore):
    what a loaded machine inflates far less than their wall time."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


class Bench:
    def __init__(self, pods: int, policies: int) -> None:
        self.n_pods = pods
        self.records = [record(i) for i in range(pods)]
        self.policies = [policy(k) for k in range(policies)]
        self.real_records, self.real_policy = real_pods()

    def state(self, policies: Sequence[NetworkPolicyResource]) -> PolicyState:
        return PolicyState((*tuple(policies), self.real_policy), (), ())

    async def full_apply(self, ns: Netns) -> dict[str, float]:
        nft = NftLib(ns.name)
        try:
            t0, c0 = time.perf_counter(), time.process_time()
            endpoints = tuple(endpoint_from_record(r) for r in self.records + self.real_records)
            inp = plan_policy_input("n1", self.state(self.policies), endpoints, [])
            rec = PolicyReconciler(nft)
            rec.set_desired(PolicyCompiler().compile(inp))
            t1, c1 = time.perf_counter(), time.process_time()
            res = await rec.pass_once(full=True)
            t2, c2 = time.perf_counter(), time.process_time()
        finally:
            nft.close()
        assert res.error is None, res.error
        return {
            "full_apply_s": t2 - t0,
            "full_apply_cpu_s": c2 - c0,
            "compile_s": t1 - t0,
            "compile_cpu_s": c1 - c0,
            "nft_apply_s": t2 - t1,
            "nft_apply_cpu_s": c2 - c1,
        }

    def iptables_apply(self, ns: Netns) -> tuple[float, float]:
        """Wall and CPU seconds of ``iptables-restore``."""
        endpoints = tuple(endpoint_from_record(r) for r in self.records + self.real_records)
        inp = plan_policy_input("n1", self.state(self.policies), endpoints, [])
        text = iptables_rules(inp)
        k0 = _children_cpu()
        took = _time_cmd(["ip", "netns", "exec", ns.name, "iptables-restore"], text)
        return took, _children_cpu() - k0

    async def changes(self, ns: Netns, adds: int, changes: int) -> dict[str, Any]:
        """Pod adds, then policy changes, on a loaded table."""
        compiler = PolicyCompiler()
        nft = NftLib(ns.name)
        rec = PolicyReconciler(nft)
        records = list(self.records + self.real_records)
        endpoints = [endpoint_from_record(r) for r in records]
        state = self.state(self.policies)
        lower = PolicyLowering()  # as the node's policy agent keeps it
        lowered = lower(state)
        rec.set_desired(
            compiler.compile(plan_policy_input("n1", state, tuple(endpoints), [], lowered))
        )
        await rec.pass_once(full=True)
        add_ms, add_cpu_ms = [], []
        for j in range(adds):
            raw = record(self.n_pods + 1000 + j)
            t0, c0 = time.perf_counter(), time.process_time()
            endpoints.append(endpoint_from_record(raw))
            inp = plan_policy_input("n1", state, tuple(endpoints), [], lowered)
            rec.set_desired(compiler.compile(inp))
            res = await rec.pass_once(full=False)
            add_ms.append((time.perf_counter() - t0) * 1000)
            add_cpu_ms.append((time.process_time() - c0) * 1000)
            assert res.error is None and res.statements > 0, res
        change_ms, change_cpu_ms = [], []
        pols = list(self.policies)
        for j in range(changes):
            k = (j * 7) % len(pols)
            pols[k] = policy(k, port=81 + j)
            t0, c0 = time.perf_counter(), time.process_time()
            state = self.state(pols)
            lowered = lower(state)
            inp = plan_policy_input("n1", state, tuple(endpoints), [], lowered)
            rec.set_desired(compiler.compile(inp))
            res = await rec.pass_once(full=False)
            change_ms.append((time.perf_counter() - t0) * 1000)
            change_cpu_ms.append((time.process_time() - c0) * 1000)
            assert res.error is None and res.statements > 0, res
        nft.close()
        return {
            "add_ms": add_ms,
            "add_cpu_ms": add_cpu_ms,
            "change_ms": change_ms,
            "change_cpu_ms": change_cpu_ms,
        }

    async def pps(self, ns: Netns, synthetic: int, count: int, run: int) -> float:
        """New flows forwarded per second through the node with ``synthetic``
        endpoints' rules plus the two real pods': UDP datagrams from the
        sender pod, each to another destination port of the receiver pod, so
        every one is a new conntrack flow that walks the dispatch maps, the
        receiver's endpoint and policy chains and their sets (none rides the
        established rule)."""
        endpoints = tuple(
            endpoint_from_record(r) for r in self.records[:synthetic] + self.real_records
        )
        pols = [
            p
            for p in self.policies
            if synthetic >= self.n_pods or p.metadata.name in {f"pol{k}" for k in range(10)}
        ]
        inp = plan_policy_input("n1", self.state(pols), endpoints, [])
        nft = NftLib(ns.name)
        rec = PolicyReconciler(nft)
        rec.set_desired(PolicyCompiler().compile(inp))
        res = await rec.pass_once(full=True)
        nft.close()
        assert res.error is None, res.error
        before = self._received()
        # a source port of its own per run: no tuple of an earlier run is
        # still in conntrack (the node's UDP timeout is 1 s anyway)
        out = self.sender.sh(
            f"{sys.executable} -c '{_SENDER}' {RECEIVER} {count} {20000 + run}", timeout=300
        )
        took = float(out.strip())
        got = self._received() - before
        assert got >= count * 0.5, f"{got} of {count} datagrams arrived"
        return got / took

    def _received(self) -> int:
        stats = json.loads(self.receiver.ip("-s", "-j", "link", "show", "eth0"))
        return int(stats[0]["stats64"]["rx"]["packets"])

    def wire_real_pods(self, node: Netns, factory: NetnsFactory) -> None:
        # a new flow per datagram: let their conntrack entries expire at once,
        # so the measurement does not fill the (machine-wide) table
        node.sh(
            "sysctl -qw net.ipv4.ip_forward=1 net.netfilter.nf_conntrack_udp_timeout=1"
            " && ip addr add 169.254.1.1/32 dev lo"
        )
        pods = {}
        for name, ip in (("snd", SENDER), ("rcv", RECEIVER)):
            pod = factory.new(name)
            node.ip(
                "link",
                "add",
                f"mr{name}",
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                pod.name,
            )
            node.sh(f"ip link set mr{name} up && ip route add {ip}/32 dev mr{name}")
            pod.sh(
                f"ip link set eth0 up && ip addr add {ip}/32 dev eth0"
                " && ip route add 169.254.1.1 dev eth0 && ip route add default via 169.254.1.1"
            )
            pods[name] = pod
        self.sender = pods["snd"]
        self.receiver = pods["rcv"]
        # the receiver drops the datagrams before its stack answers each with
        # an ICMP error, which would be forwarded back as related traffic
        self.receiver.sh(
            "nft 'add table inet sink; add chain inet sink in { type filter hook input"
            " priority 0; }; add rule inet sink in udp dport 1024-65535 drop'"
        )


async def bench(
    pods: int, policies: int, repeat: int, adds: int, changes: int, flows: int
) -> dict[str, Any]:
    b = Bench(pods, policies)
    factory = NetnsFactory(prefix="mrbench")
    samples: dict[str, list[float]] = {
        k: []
        for k in (
            "full_apply_s",
            "full_apply_cpu_s",
            "compile_s",
            "compile_cpu_s",
            "nft_apply_s",
            "nft_apply_cpu_s",
            "iptables_full_apply_s",
            "iptables_full_apply_cpu_s",
            "pps_n",
            "pps_10",
        )
    }
    try:
        for i in range(repeat):
            order = ("nft", "ipt") if i % 2 == 0 else ("ipt", "nft")
            for side in order:
                ns = factory.new(f"{side}{i}")
                if side == "nft":
                    for k, v in (await b.full_apply(ns)).items():
                        samples[k].append(v)
                else:
                    took, cpu = b.iptables_apply(ns)
                    samples["iptables_full_apply_s"].append(took)
                    samples["iptables_full_apply_cpu_s"].append(cpu)
        node = factory.new("fwd")
        b.wire_real_pods(node, factory)
        for i in range(repeat):
            for n in (pods, 10) if i % 2 == 0 else (10, pods):
                pps = await b.pps(node, n, flows, run=2 * i + (n == pods))
                samples["pps_n" if n == pods else "pps_10"].append(pps)
        moves = await b.changes(factory.new("changes"), adds, changes)
    finally:
        factory.cleanup()
    med = {k: statistics.median(v) for k, v in samples.items()}
    return {
        "pods": pods,
        "policies": policies,
        **{k: round(v, 3) for k, v in med.items() if not k.startswith("pps")},
        "iptables_over_nft": round(med["iptables_full_apply_s"] / med["full_apply_s"], 2),
        "iptables_over_nft_cpu": round(
            med["iptables_full_apply_cpu_s"] / med["full_apply_cpu_s"], 2
        ),
        "pod_add_ms_p50": round(_pct(moves["add_ms"], 0.5), 1),
        "pod_add_ms_p99": round(_pct(moves["add_ms"], 0.99), 1),
        "pod_add_cpu_ms_p50": round(_pct(moves["add_cpu_ms"], 0.5), 1),
        "pod_add_cpu_ms_p99": round(_pct(moves["add_cpu_ms"], 0.99), 1),
        "policy_change_ms_p50": round(_pct(moves["change_ms"], 0.5), 1),
        "policy_change_ms_p99": round(_pct(moves["change_ms"], 0.99), 1),
        "policy_change_cpu_ms_p50": round(_pct(moves["change_cpu_ms"], 0.5), 1),
        "policy_change_cpu_ms_p99": round(_pct(moves["change_cpu_ms"], 0.99), 1),
        "pps_5000_over_pps_10": round(med["pps_n"] / med["pps_10"], 3),
        "pps_n": round(med["pps_n"]),
        "pps_10": round(med["pps_10"]),
        "load_average": os.getloadavg()[0],
        "samples": {k: [round(x, 4) for x in v] for k, v in samples.items()},
    }


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--pods", type=int, default=5000)
    ap.add_argument("--policies", type=int, default=500)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--adds", type=int, default=100, help="pod adds timed")
    ap.add_argument("--changes", type=int, default=20, help="policy changes timed")
    ap.add_argument("--flows", type=int, default=20000, help="new UDP flows per forwarding run")
    ap.add_argument("--json", action="store_true", help="print only the JSON result")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("bench.policy needs root (network namespaces)")
    # SIGTERM unwinds like ^C, so the namespaces are removed in ``finally``
    signal.signal(signal.SIGTERM, _interrupt)
    result = asyncio.run(
        bench(args.pods, args.policies, args.repeat, args.adds, args.changes, args.flows)
    )
    if not args.json:
        for k, v in result.items():
            if k != "samples":
                print(f"{k}: {v}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
