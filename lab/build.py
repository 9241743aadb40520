"""Applying a ``LabPlan`` to the machine, and taking it away again.

``build_underlay`` makes the namespaces (prefix ``mrlab``), bridges, veths,
addresses, default routes and forwarding sysctls (only inside the lab's
namespaces), starts etcd in the management namespace and BIRD in every
router namespace (FRR's daemons in the dual-homed topology's second ToRs),
each by PID and recorded in the state file as soon as it exists.
``start_nodes`` starts every node through a callable the caller passes
(``start_meshroute_node`` runs ``meshroute node --config``).
In the ``rr`` topology ``build_underlay`` also starts the pair of
``meshroute reflector`` processes (BIRD in their namespaces; the processes
where etcd is reachable), which register themselves and peer with each other
before any node exists.
``teardown`` ends what the state file names; ``down_after_crash`` also
removes every namespace with the lab prefix, whoever made it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from bgpd.bird_config import render_bird
from lab.dual_homed import plan_topology
from lab.etcd import lab_member
from lab.frr import DAEMONS, FRR_USER, daemon_argv, unreachable_parent, vty_ready
from lab.netns import Netns, NetnsFactory, kill_pids_in, run, sweep_stale
from lab.ports import free_ports
from lab.state import (
    LabState,
    ProcessRecord,
    alive,
    end_processes,
    load_state,
    processes_under,
    record_process,
)
from lab.topology import (
    FrrPlan,
    LabParams,
    LabPlan,
    NodePlan,
    ReflectorPlan,
    SpeakerPlan,
    finish_node_config,
)

LAB_PREFIX = "mrlab"
Say = Callable[[str], None]


def _quiet(_msg: str) -> None:
    pass


@dataclass
class Lab:
    """A built lab: its plan and its (saved) state."""

    plan: LabPlan
    state: LabState

    def netns(self, label: str) -> Netns:
        return Netns(self.state.ns(label))

    @property
    def etcd_endpoint(self) -> str:
        return self.state.etcd_endpoint

    def record(self, rec: ProcessRecord) -> None:
        self.state.processes.append(rec)
        self.state.save()


@dataclass(frozen=True)
class NodeLaunch:
    """What a node starter needs: the node's plan, the real name of its
    namespace and its config file (already written)."""

    node: NodePlan
    netns: str
    config_path: Path
    log_path: Path
    # True: run the process in the root namespace (node.yaml names the
    # namespace it drives); False: run it inside ``netns``
    in_root: bool


@dataclass(frozen=True)
class Spawned:
    pid: int
    argv: tuple[str, ...]  # as started, ``ip netns exec NS ...`` included


StartNode = Callable[[NodeLaunch], Spawned]


def spawn_in_netns(ns: str | None, argv: Sequence[str], log_path: str | Path) -> Spawned:
    """A daemon in namespace ``ns`` (``ip netns exec`` execs it, so the PID
    is the daemon's; None: where we run), in its own session, stdout and
    stderr to ``log_path``.
    No ``Popen`` object: the daemon outlives the process that builds the lab
    (``lab up`` returns, the lab stays) and ``teardown`` ends it by PID."""
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    full = ("ip", "netns", "exec", ns, *argv) if ns else tuple(argv)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        pid = os.posix_spawnp(
            full[0],
            full,
            dict(os.environ),
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
                (os.POSIX_SPAWN_DUP2, fd, 1),
                (os.POSIX_SPAWN_DUP2, fd, 2),
            ],
            setsid=True,
        )
    finally:
        os.close(fd)
    return Spawned(pid, full)


def start_meshroute_node(launch: NodeLaunch) -> Spawned:
    """The node starter ``meshroute lab up`` uses: ``meshroute node``, in
    the root namespace or inside the node's, as the lab was planned."""
    argv = [sys.executable, "-m", "meshroute.cli", "node", "--config", str(launch.config_path)]
    return spawn_in_netns(None if launch.in_root else launch.netns, argv, launch.log_path)


# ---- underlay ----------------------------------------------------------------


def _add_addresses(netns: str, ifname: str, *addresses: str | None) -> None:
    for addr in addresses:
        if addr:
            # no duplicate address detection: the plan's addresses are unique,
            # and a tentative address would not answer for a second or two
            nodad = ["nodad"] if ":" in addr else []
            run(["ip", "-n", netns, "addr", "add", addr, "dev", ifname, *nodad])


def _apply_links(lab: Lab) -> None:
    plan, ns = lab.plan, lab.state.ns
    for br in plan.bridges:
        # no multicast snooping: a snooping bridge sends a solicited-node
        # group (IPv6 neighbour discovery) only to ports it heard an MLD report
        # from, and a report sent before the port joined it is never heard
        kind = ["type", "bridge", "mcast_snooping", "0"]
        run(["ip", "-n", ns(br.ns), "link", "add", br.name, *kind])
        _add_addresses(ns(br.ns), br.name, br.address, br.address6)
        run(["ip", "-n", ns(br.ns), "link", "set", br.name, "up"])
    for v in plan.veths:
        a, b = ns(v.a_ns), ns(v.b_ns)
        veth = ["link", "add", v.a_if, "type", "veth", "peer", "name", v.b_if, "netns", b]
        run(["ip", "-n", a, *veth])
        for n, ifname, addr, peer, addr6, bridge in (
            (a, v.a_if, v.a_address, v.a_peer, v.a_address6, v.a_bridge),
            (b, v.b_if, v.b_address, v.b_peer, v.b_address6, v.b_bridge),
        ):
            if bridge:
                run(["ip", "-n", n, "link", "set", ifname, "master", bridge])
            if addr:
                ptp = ["peer", peer] if peer else []
                run(["ip", "-n", n, "addr", "add", addr, *ptp, "dev", ifname])
            _add_addresses(n, ifname, addr6)
            run(["ip", "-n", n, "link", "set", ifname, "up"])
    for p in plan.namespaces:
        if p.forwarding:
            # only inside our own namespace: each has its own sysctl copy
            sysctls = ["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"]
            run(["ip", "netns", "exec", ns(p.label), "sysctl", "-qw", *sysctls])
        for via in (p.default_via, p.default_via6):
            if via:
                run(["ip", "-n", ns(p.label), "route", "add", "default", "via", via])


def _start_bird(lab: Lab, sp: SpeakerPlan) -> None:
    conf = Path(sp.config_path)
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(render_bird(sp.bird))
    check = subprocess.run(["bird", "-p", "-c", str(conf)], capture_output=True, text=True)
    if check.returncode != 0:
        raise RuntimeError(f"{conf}: BIRD rejects it: {check.stderr.strip()}")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(sp.socket_path)
    argv = ["bird", "-f", "-c", str(conf), "-s", sp.socket_path, "-P", f"{conf.parent}/bird.pid"]
    p = spawn_in_netns(lab.state.ns(sp.ns), argv, f"{conf.parent}/bird.out")
    lab.record(record_process("bird", sp.ns, p.pid, p.argv))


def _wait_sockets(lab: Lab, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for sp in lab.plan.speakers:
        while not os.path.exists(sp.socket_path):
            rec = next(r for r in lab.state.processes if r.label == sp.ns and r.role == "bird")
            if not alive(rec):
                log = Path(sp.config_path).parent / "bird.out"
                raise RuntimeError(f"BIRD in {sp.ns} exited: {log.read_text()[-1000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"BIRD in {sp.ns}: no control socket {sp.socket_path}")
            time.sleep(0.05)


def _start_frr(lab: Lab, fp: FrrPlan, timeout: float = 15.0) -> None:
    """FRR's daemons in order, each once the one before answers on its vty
    socket (bgpd and bfdd connect to zebra)."""
    workdir = Path(fp.dir)
    workdir.mkdir(parents=True, exist_ok=True)
    closed = unreachable_parent(workdir)
    if closed is not None:
        raise RuntimeError(
            f"FRR runs as user {FRR_USER}, which cannot enter {closed}: "
            "use a run dir whose parents every user may enter"
        )
    shutil.chown(workdir, FRR_USER, FRR_USER)
    (workdir / "frr.conf").write_text(fp.config)
    for d in DAEMONS:
        argv = daemon_argv(d, workdir)
        p = spawn_in_netns(lab.state.ns(fp.ns), argv, workdir / f"{d}.out")
        rec = record_process("frr", fp.ns, p.pid, p.argv)
        lab.record(rec)
        deadline = time.monotonic() + timeout
        while not vty_ready(workdir, d):
            if not alive(rec):
                out = (workdir / f"{d}.out").read_text()[-1000:]
                raise RuntimeError(f"FRR {d} in {fp.ns} exited: {out}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"FRR {d} in {fp.ns}: no vty socket in {workdir}")
            time.sleep(0.05)


def write_reflector_config(lab: Lab, rp: ReflectorPlan, http_port: int) -> Path:
    cfg = {
        "name": rp.name,
        "ipv4": rp.address,
        **({"ipv6": rp.address6} if rp.address6 else {}),
        "clusterId": rp.cluster_id,
        "etcd": {"endpoints": [lab.etcd_endpoint], "prefix": lab.plan.params.etcd_prefix},
        # the lab restarts peers on purpose: reconnect within seconds
        "bird": {"workDir": rp.bird_dir, "connectRetrySeconds": 3, "errorWaitSeconds": [1, 5]},
        "http": {"listen": f"127.0.0.1:{http_port}"},
        "netns": lab.state.ns(rp.ns),
    }
    path = Path(rp.config_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _start_reflectors(lab: Lab, timeout: float = 20.0) -> None:
    """``meshroute reflector`` per reflector plan, where etcd is reachable
    (the management namespace with netns placement); until each one's BIRD
    answers on its control socket."""
    mgmt = lab.state.namespaces.get("mgmt")
    ports = free_ports(len(lab.plan.reflectors))
    for rp, port in zip(lab.plan.reflectors, ports, strict=True):
        config = write_reflector_config(lab, rp, port)
        argv = [sys.executable, "-m", "meshroute.cli", "reflector", "--config", str(config)]
        p = spawn_in_netns(mgmt, argv, rp.log_path)
        lab.record(record_process("reflector", rp.ns, p.pid, p.argv))
    deadline = time.monotonic() + timeout
    for rp in lab.plan.reflectors:
        rec = next(r for r in lab.state.processes if r.label == rp.ns and r.role == "reflector")
        while not os.path.exists(rp.socket_path):
            if not alive(rec):
                raise RuntimeError(
                    f"meshroute reflector {rp.name} exited: {Path(rp.log_path).read_text()[-2000:]}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"meshroute reflector {rp.name}: no BIRD socket {rp.socket_path}"
                )
            time.sleep(0.05)


def _start_etcd(lab: Lab, timeout: float = 20.0) -> None:
    workdir = Path(lab.plan.run_dir) / "etcd"
    if lab.plan.etcd_endpoint is not None:  # in the management namespace
        host, port = lab.plan.etcd_endpoint.split(":")
        member = lab_member(workdir, lab.state.ns("mgmt"), host, int(port))
        argv = member.argv()[4:]
    else:
        member = lab_member(workdir, None, "127.0.0.1", free_ports(1, span=2)[0])
        argv = member.argv()
    p = spawn_in_netns(member.netns, argv, member.log_path)
    rec = record_process("etcd", "mgmt" if member.netns else "", p.pid, p.argv)
    lab.state.etcd_endpoint = member.endpoint
    lab.record(rec)
    deadline = time.monotonic() + timeout
    while not member.healthy():
        if not alive(rec):
            raise RuntimeError(f"etcd exited: {member.log_path.read_text()[-2000:]}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"etcd in the management namespace: not healthy in {timeout} s")
        time.sleep(0.05)


def _clear_previous_run(plan: LabPlan) -> None:
    """A previous lab's files in the run dir go (its etcd data would bring
    back its pools and blocks); only the paths the lab itself writes."""
    run_dir = Path(plan.run_dir)
    labels = [p.label for p in plan.namespaces] + [n.ns for n in plan.nodes]
    for name in ["etcd", "cni-bin", *labels]:
        shutil.rmtree(run_dir / name, ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        (run_dir / "resources.yaml").unlink()


def build_underlay(
    plan: LabPlan, *, prefix: str = LAB_PREFIX, say: Say = _quiet, slowness: float = 1.0
) -> Lab:
    """Namespaces, links, etcd and BIRD; on failure everything made so far
    is removed again and the error raised. Every wait for a daemon to come
    up is ``slowness`` times its usual timeout (e.g. under CPU emulation)."""
    run_dir = Path(plan.run_dir)
    if (run_dir / "state.json").exists():
        raise RuntimeError(f"{run_dir}: a lab is already up here (run lab down first)")
    run_dir.mkdir(parents=True, exist_ok=True)
    _clear_previous_run(plan)
    state = LabState(str(run_dir), prefix, plan.params.topology, params=asdict(plan.params))
    lab = Lab(plan, state)
    state.save()
    try:
        say(f"creating {len(plan.namespaces)} namespaces ({prefix}*)")
        factory = NetnsFactory(prefix=prefix)
        for p in plan.namespaces:
            state.namespaces[p.label] = factory.new(p.label).name
            state.save()
        say(f"{len(plan.bridges)} bridges, {len(plan.veths)} veth pairs, addresses, routes")
        _apply_links(lab)
        _start_etcd(lab, timeout=20.0 * slowness)
        say(f"etcd on {lab.etcd_endpoint}")
        say(f"BIRD in {', '.join(sp.ns for sp in plan.speakers)}")
        for sp in plan.speakers:
            _start_bird(lab, sp)
        _wait_sockets(lab, timeout=10.0 * slowness)
        if plan.frr:
            say(f"FRR in {', '.join(f.ns for f in plan.frr)}")
            for fp in plan.frr:
                _start_frr(lab, fp, timeout=15.0 * slowness)
        if plan.reflectors:
            say(f"meshroute reflector in {', '.join(r.ns for r in plan.reflectors)}")
            _start_reflectors(lab, timeout=20.0 * slowness)
    except BaseException:
        teardown(state)
        raise
    return lab


# ---- resources and nodes -------------------------------------------------------


def meshroute_cli(lab: Lab, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """The ``meshroute`` CLI pointed at the lab's etcd, run where etcd is
    reachable (the management namespace with netns placement)."""
    env = {
        **os.environ,
        "MESHROUTE_ETCD": lab.etcd_endpoint,
        "MESHROUTE_PREFIX": lab.plan.params.etcd_prefix,
    }
    mgmt = lab.state.namespaces.get("mgmt")
    where = ["ip", "netns", "exec", mgmt] if mgmt else []
    return subprocess.run(
        [*where, sys.executable, "-m", "meshroute.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def apply_resources(lab: Lab) -> None:
    """Apply the plan's IPPool and BGP resources (``meshroute apply -f``)."""
    path = Path(lab.plan.run_dir) / "resources.yaml"
    path.write_text(lab.plan.resources_yaml)
    p = meshroute_cli(lab, "apply", "-f", str(path))
    if p.returncode != 0:
        raise RuntimeError(f"meshroute apply -f {path} failed: {p.stdout}{p.stderr}")


def write_node_config(lab: Lab, node: NodePlan, http_port: int | None = None) -> Path:
    cfg = finish_node_config(
        node,
        lab.plan.params.node_placement,
        etcd_endpoint=lab.etcd_endpoint,
        netns=lab.state.ns(node.ns),
        http_port=http_port,
    )
    path = Path(node.config_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Path(cfg["bgp"]["workDir"]).mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def start_nodes(lab: Lab, start_node: StartNode, *, say: Say = _quiet) -> None:
    """Write each node's ``node.yaml`` and start it with ``start_node``;
    the process it returns is recorded (and ended by ``teardown``)."""
    root = lab.plan.params.node_placement == "root"
    ports = free_ports(len(lab.plan.nodes)) if root else [None] * len(lab.plan.nodes)
    for node, port in zip(lab.plan.nodes, ports, strict=True):
        config = write_node_config(lab, node, port)
        launch = NodeLaunch(node, lab.state.ns(node.ns), config, Path(node.log_path), root)
        say(f"starting {node.name} in {launch.netns}")
        p = start_node(launch)
        lab.record(record_process("node", node.ns, p.pid, p.argv))


def wait_nodes_ready(lab: Lab, timeout: float = 30.0) -> None:
    """Until every node's IPAM socket exists (what the CNI plugin needs);
    a node that exits meanwhile fails at once, with its log's tail."""
    deadline = time.monotonic() + timeout
    for node in lab.plan.nodes:
        rec = next(r for r in lab.state.processes if r.role == "node" and r.label == node.ns)
        while not os.path.exists(node.ipam_socket):
            if not alive(rec):
                tail = (
                    Path(node.log_path).read_text()[-2000:] if Path(node.log_path).exists() else ""
                )
                raise RuntimeError(f"{node.name} exited before it was ready:\n{tail}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{node.name}: no IPAM socket {node.ipam_socket}")
            time.sleep(0.1)


# ---- down ----------------------------------------------------------------------


def load_lab(run_dir: str | os.PathLike[str]) -> Lab | None:
    """The lab running in ``run_dir`` (None when there is none), with its
    plan rebuilt from the parameters it was built with."""
    state = load_state(run_dir)
    if state is None:
        return None
    return Lab(plan_topology(LabParams(**state.params)), state)


def teardown(state: LabState, *, remove_run_dir: bool = False) -> None:
    """End the processes the lab recorded (nodes first, etcd last), then
    whatever still runs inside its namespaces, then the namespaces."""
    # a reflector ends its own BIRD; nodes and reflectors before etcd
    order = {"node": 0, "reflector": 0, "bird": 1, "frr": 1, "etcd": 2}
    for role in sorted({r.role for r in state.processes}, key=lambda r: order.get(r, 0)):
        end_processes([r for r in state.processes if r.role == role])
    names = [p.netns for p in state.pods] + list(reversed(state.namespaces.values()))
    for name in names:
        kill_pids_in(name)
        run(["ip", "netns", "del", name], check=False)
    with contextlib.suppress(FileNotFoundError):
        state.path.unlink()
    if remove_run_dir:
        shutil.rmtree(state.run_dir, ignore_errors=True)


def down_after_crash(run_dir: str | os.PathLike[str], prefix: str = LAB_PREFIX) -> list[str]:
    """``lab down`` that trusts nothing: tear down what the state file
    names (if there is one); end the processes whose command line names a
    path under the lab's run dir (etcd's data dir, a node's config: ours
    even when the state file is lost); then remove every namespace with
    the lab's prefix and end what runs inside. Returns the namespaces swept."""
    state = load_state(run_dir)
    if state is not None:
        teardown(state)
    end_processes(processes_under(run_dir))
    return sweep_stale(prefix, all_of_them=True)
