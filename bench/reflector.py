"""Route reflection: ``meshroute reflector`` against a hand-written BIRD
reflector configuration, same BIRD, same clients, same run.

``.venv/bin/python -m bench.reflector --clients 200 --prefixes 4000 --json``
builds, in one run, three network namespaces on one bridge (removed in
``finally``) and etcd on the root loopback:

- ``clients``: ONE BIRD speaking for every client: per client its own
  address (strict bind), router id, table and ``prefixes / clients`` static
  /26s; iBGP (AS 64512) to the reflector's address, all protocols
  ``disabled`` until a measurement starts (``connect delay time 1``: BIRD
  never opens a connection sooner than 0.75-1 s after a protocol starts,
  ``MAX(1, connect delay)`` less a random quarter);
- ``rr``: the reflector at 10.10.0.1, first BIRD on a hand-written
  configuration (the anchor: ``rr client``, one cluster id, ``import all;
  export all``), then ``meshroute reflector`` (its clients come from the node
  registry and a ``to-reflectors`` BGPPeer in etcd).

Figures:

- ``convergence_s`` / ``anchor_s``: both clocked the same way, from the
  start of the reflector's BIRD process (its start time in /proc: the
  anchor's, and the one ``meshroute reflector`` starts after reading etcd)
  until every client protocol has imported every other client's prefixes,
  read from the clients' BIRD (``show protocols all``, polled); the clients
  are enabled, for both alike, once the reflector's BIRD has every client
  session past Idle (waiting for a connection or about to open one);
  ``ratio = convergence_s / anchor_s``; ``launch_to_bird_s``: from the
  launch of the ``meshroute reflector`` process to its BIRD's start (not in
  ``convergence_s``);
- ``reflector_rss_mb``: VmRSS of BIRD plus the ``meshroute reflector``
  process after convergence (``bird_rss_mb``, ``process_rss_mb`` apart;
  ``anchor_rss_mb`` the anchor BIRD's);
- ``sessions_up_s`` / ``anchor_sessions_up_s``: from the same start until
  every client session is Established (the part BGP's and TCP's timers
  decide; convergence includes it);
- ``config_change_s``: from writing one more node record to etcd (a passive
  client, already listening, with its own BGPPeer: the reflector connects)
  until its prefixes are in every other client's table (BIRD's connect
  delay, 0.75-1 s, is part of it in both);
  ``anchor_config_change_s``: the same by rewriting the hand-written file
  and ``birdc configure``, measured against the anchor;
- ``config_applied_s`` / ``anchor_config_applied_s``: from the same write
  until the reflector's BIRD has the new session past Idle (polled every
  5 ms): the part of ``config_change_s`` that is the reflector's, before
  BIRD's connect delay and BGP take over.

Each of the ``--repeat`` rounds runs both reflectors, alternating which one
goes first; medians are reported with their samples. The last line is one
JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.procstat import rss_mb, started_at
from bgpd.bird_ctl import parse_show_protocols_all
from datastore.etcd import EtcdStore
from lab.bird_clients import BirdClients, Client, clients_conf
from lab.etcd import start_etcd
from lab.netns import Netns, NetnsFactory
from lab.reflector_rig import Lan, Reflector
from meshroute.bgp_store import BgpStore
from meshroute.registry import NodeRecord, Registry
from meshroute.resources import BGPConfigurationSpec, BGPPeerSpec

AS = 64512
RR = "10.10.0.1"
CLUSTER = "244.0.0.1"
PREFIX = "/bench/reflector"
POLL_S = 0.05


def client_address(i: int) -> str:
    return f"10.10.{1 + i // 250}.{1 + i % 250}"


def prefixes(start: int, n: int) -> tuple[str, ...]:
    return tuple(
        f"10.{64 + (j >> 10)}.{(j >> 2) & 255}.{(j & 3) * 64}/26" for j in range(start, start + n)
    )


def make_clients(n: int, total: int) -> tuple[list[Client], Client]:
    per = max(1, total // n)
    clients = [
        Client(f"c{i}", client_address(i), prefixes(i * per, per), interface=f"mv{i}")
        for i in range(n)
    ]
    late = Client(
        "late", client_address(n), prefixes(n * per, per), passive=True, interface=f"mv{n}"
    )
    return clients, late


def add_macvlans(ns: Netns, clients: Sequence[Client]) -> None:
    """One macvlan per client on the namespace's eth0, its address the only
    (so primary) one there. Only the macvlan that owns an address answers ARP
    for it (arp_ignore=1): BIRD binds each session to its interface, and a
    reply arriving on another macvlan would be lost (a 1 s SYN retry)."""
    for key in ("all", "default"):
        ns.sh(f"sysctl -qw net.ipv4.conf.{key}.arp_ignore=1 net.ipv4.conf.{key}.arp_announce=2")
    cmds = []
    for c in clients:
        cmds += [
            f"link add {c.interface} link eth0 type macvlan mode bridge",
            f"addr add {c.address}/16 dev {c.interface}",
            f"link set {c.interface} up",
        ]
    subprocess.run(
        ["ip", "-n", ns.name, "-batch", "-"], input="\n".join(cmds) + "\n", text=True, check=True
    )


def anchor_conf(clients: Sequence[Client]) -> str:
    """What an operator would write by hand for a BIRD route reflector."""
    lines = [f"router id {RR};", "protocol device {}", 'protocol direct { ipv4; interface "*"; }']
    for c in clients:
        lines += [
            f"protocol bgp {c.name} {{",
            f"  local {RR} as {AS};",
            f"  neighbor {c.address} as {AS};",
            "  rr client;",
            f"  rr cluster id {CLUSTER};",
            # the timers meshroute's reflector.yaml sets in this run, so that
            # the difference is meshroute's and not BIRD's defaults
            "  hold time 90;",
            "  graceful restart on;",
            "  connect delay time 1;",
            "  connect retry time 1;",
            "  error wait time 1,3;",
            *(["  passive off;"] if c.passive else ["  passive on;"]),
            # connected routes resolve next hops; only BGP routes are reflected
            "  ipv4 { import all; export where source = RTS_BGP; };",
            "}",
        ]
    return "\n".join(lines) + "\n"


def imported(bird: BirdClients, up: set[str] | None = None) -> dict[str, int]:
    """Routes each client protocol imported; ``up`` collects the Established ones."""
    out = bird.birdc("show", "protocols", "all")
    sessions = parse_show_protocols_all(out)
    if up is not None:
        up.update(s.protocol for s in sessions if s.established)
    return {s.protocol: s.imported for s in sessions}


def sessions_waiting(birdc: Callable[..., str], n: int) -> Callable[[], bool]:
    """True once the reflector's BIRD has ``n`` BGP sessions past Idle:
    each takes a connection now (or is about to open one). The clients are
    enabled at that moment, the same one for both reflectors."""

    def check() -> bool:
        sessions = parse_show_protocols_all(birdc("show", "protocols", "all"))
        return sum(s.bgp_state not in ("", "Idle", "Down") for s in sessions) >= n

    return check


def wait(pred: Callable[[], bool], timeout: float, what: str, poll: float = POLL_S) -> float:
    deadline = time.monotonic() + timeout
    while True:
        if pred():
            return time.monotonic()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s")
        time.sleep(poll)


def session_configured(birdc: Callable[..., str], address: str) -> Callable[[], bool]:
    """True once the reflector's BIRD has a BGP session to ``address``
    past Idle: the configuration change is in, and BIRD is about to
    connect (its connect delay running)."""

    def check() -> bool:
        sessions = parse_show_protocols_all(birdc("show", "protocols", "all"))
        return any(
            s.neighbor == address and s.bgp_state not in ("", "Idle", "Down") for s in sessions
        )

    return check


def all_have(
    bird: BirdClients, names: Sequence[str], want: int, up_at: list[float] | None = None
) -> Callable[[], bool]:
    """True once every client imported ``want`` routes; appends to ``up_at``
    the first poll's time at which every session was Established."""
    up: set[str] = set()

    def check() -> bool:
        got = imported(bird, up)
        if up_at is not None and not up_at and all(f"{n}_rr1" in up for n in names):
            up_at.append(time.monotonic())
        return all(got.get(f"{n}_rr1", 0) >= want for n in names)

    return check


def etcd_do(endpoint: str, body: Callable[[Registry, BgpStore], Any]) -> None:
    async def main() -> None:
        store = EtcdStore([endpoint], timeout=10)
        try:
            await body(Registry(store, PREFIX), BgpStore(store, PREFIX))
        finally:
            await store.close()

    asyncio.run(main())


def register(endpoint: str, clients: Sequence[Client]) -> None:
    async def body(reg: Registry, bgp: BgpStore) -> None:
        await bgp.apply_config(
            BGPConfigurationSpec.model_validate({"asNumber": AS, "nodeToNodeMeshEnabled": False})
        )
        await bgp.apply_peer(
            "to-reflectors",
            BGPPeerSpec.model_validate(
                {
                    "nodeSelector": "!has(route-reflector) && !has(late)",
                    "peerSelector": "route-reflector == 'true'",
                }
            ),
        )
        # a client that waits: the reflector connects as soon as it is configured
        await bgp.apply_peer(
            "late-clients",
            BGPPeerSpec.model_validate(
                {
                    "nodeSelector": "has(late)",
                    "peerSelector": "route-reflector == 'true'",
                    "passive": True,
                }
            ),
        )
        for c in clients:
            await reg.upsert(NodeRecord(name=c.name, ipv4=f"{c.address}/16"))

    etcd_do(endpoint, body)


def sample(
    bird: BirdClients,
    clients: Sequence[Client],
    late: Client,
    add_late: Callable[[], None],
    reflector_birdc: Callable[..., str],
    t0: float,
) -> tuple[float, float, float, float]:
    """(sessions up, convergence, config change, config applied), in
    seconds; the first two from ``t0``, the moment the reflector's BIRD
    started."""
    names = [c.name for c in clients]
    per = len(clients[0].prefixes)
    want = per * (len(clients) - 1)
    # every client protocol is disabled here (enabled once the reflector
    # listens): no session has been tried and refused yet
    bird.birdc("enable", '"c*_rr1"')
    up_at: list[float] = []
    conv = wait(all_have(bird, names, want, up_at), 600, "every client has every route") - t0
    print(f"sessions up {up_at[0] - t0:.3f} s, every route {conv:.3f} s", file=sys.stderr)
    bird.birdc("enable", f"{late.name}_rr1")
    t1 = time.monotonic()
    add_late()
    applied = (
        wait(session_configured(reflector_birdc, late.address), 60, "the late session", 0.005) - t1
    )
    change = wait(all_have(bird, names, want + per), 120, "the late client's routes") - t1
    # down before the reflector goes, so a new one starts with no client knocking
    bird.birdc("disable", '"*_rr1"')
    wait(all_have(bird, [*names, late.name], 0), 60, "clients down")
    return up_at[0] - t0, conv, change, applied


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=200)
    ap.add_argument("--prefixes", type=int, default=4000, help="in all, split over the clients")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    clients, late = make_clients(args.clients, args.prefixes)
    factory = NetnsFactory(prefix="mrrefl")
    tmp = Path(tempfile.mkdtemp(prefix="bench-reflector-"))
    etcd = start_etcd(tmp / "etcd")
    rr: Reflector | None = None
    anchor: BirdClients | None = None
    bird: BirdClients | None = None
    result: dict[str, Any] = {"clients": args.clients, "prefixes": args.prefixes}
    try:
        lan = Lan(factory)
        rr_ns = lan.member("rr", f"{RR}/16")
        cl_ns = lan.member("clients")
        add_macvlans(cl_ns, [*clients, late])
        bird = BirdClients(
            cl_ns,
            tmp / "clients",
            clients_conf([*clients, late], [RR], AS, disabled=True, connect_delay=1),
        )

        register(etcd.endpoint, clients)
        anchor_s, anchor_change, anchor_up, anchor_applied = [], [], [], []
        conv_s, change_s, conv_up, launch_s, applied_s = [], [], [], [], []

        def run_anchor(i: int) -> None:
            nonlocal anchor
            anchor = BirdClients(rr_ns, tmp / f"anchor{i}", anchor_conf(clients))
            t0 = started_at(anchor.proc.pid)
            wait(sessions_waiting(anchor.birdc, len(clients)), 120, "the anchor's sessions")

            def add_late_by_hand(a: BirdClients = anchor) -> None:
                a.conf.write_text(anchor_conf([*clients, late]))
                a.birdc("configure")

            up, conv, change, applied = sample(
                bird, clients, late, add_late_by_hand, anchor.birdc, t0
            )
            anchor_up.append(up)
            anchor_s.append(conv)
            anchor_change.append(change)
            anchor_applied.append(applied)
            result["anchor_rss_mb"] = round(rss_mb(anchor.proc.pid), 1)
            anchor.stop()
            anchor = None

        def run_meshroute(i: int) -> None:
            nonlocal rr
            etcd_do(etcd.endpoint, lambda reg, bgp: reg.delete(late.name))
            rr = Reflector("rr1", RR, rr_ns, tmp / f"rr{i}", etcd.endpoint, PREFIX, CLUSTER)
            rr.extra = {
                "ipv4": f"{RR}/16",
                "bird": {
                    "workDir": str(tmp / f"rr{i}" / "bird"),
                    "connectDelaySeconds": 1,
                    "connectRetrySeconds": 1,
                    "errorWaitSeconds": [1, 3],
                },
            }
            launched = time.monotonic()
            rr.start()
            wait(
                lambda r=rr: r.answering() and len(r.status()["sessions"]) == len(clients),  # type: ignore[misc]
                120,
                "meshroute reflector configured",
            )
            bird_pid = rr.bird_pid()
            assert bird_pid is not None
            t0 = started_at(bird_pid)
            launch_s.append(t0 - launched)
            wait(sessions_waiting(rr.birdc, len(clients)), 120, "the reflector's sessions")

            def add_late_in_etcd() -> None:
                etcd_do(
                    etcd.endpoint,
                    lambda reg, bgp: reg.upsert(
                        NodeRecord(name=late.name, ipv4=f"{late.address}/16", labels={"late": "1"})
                    ),
                )

            up, conv, change, applied = sample(bird, clients, late, add_late_in_etcd, rr.birdc, t0)
            conv_up.append(up)
            conv_s.append(conv)
            change_s.append(change)
            applied_s.append(applied)
            assert rr.proc is not None
            result["bird_rss_mb"] = round(rss_mb(bird_pid), 1)
            result["process_rss_mb"] = round(rss_mb(rr.proc.pid), 1)
            rr.stop()
            rr = None

        for i in range(args.repeat):
            # alternate which reflector runs first
            order = (run_anchor, run_meshroute) if i % 2 == 0 else (run_meshroute, run_anchor)
            for run in order:
                run(i)

        conv_m, anchor_m = statistics.median(conv_s), statistics.median(anchor_s)
        result.update(
            convergence_s=round(conv_m, 3),
            anchor_s=round(anchor_m, 3),
            ratio=round(conv_m / anchor_m, 3),
            reflector_rss_mb=round(result["bird_rss_mb"] + result["process_rss_mb"], 1),
            config_change_s=round(statistics.median(change_s), 3),
            anchor_config_change_s=round(statistics.median(anchor_change), 3),
            config_applied_s=round(statistics.median(applied_s), 3),
            anchor_config_applied_s=round(statistics.median(anchor_applied), 3),
            sessions_up_s=round(statistics.median(conv_up), 3),
            anchor_sessions_up_s=round(statistics.median(anchor_up), 3),
            launch_to_bird_s=round(statistics.median(launch_s), 3),
            samples={
                "convergence_s": [round(x, 3) for x in conv_s],
                "anchor_s": [round(x, 3) for x in anchor_s],
                "config_change_s": [round(x, 3) for x in change_s],
                "anchor_config_change_s": [round(x, 3) for x in anchor_change],
                "config_applied_s": [round(x, 3) for x in applied_s],
                "anchor_config_applied_s": [round(x, 3) for x in anchor_applied],
                "sessions_up_s": [round(x, 3) for x in conv_up],
                "anchor_sessions_up_s": [round(x, 3) for x in anchor_up],
                "launch_to_bird_s": [round(x, 3) for x in launch_s],
            },
            repeat=args.repeat,
        )
    finally:
        for b in (rr, anchor, bird):
            if b is not None:
                b.stop()
        factory.cleanup()
        etcd.stop()
        subprocess.run(["rm", "-rf", str(tmp)], check=False)
    if not args.json:
        for k, v in result.items():
            print(f"{k}: {v}", file=sys.stderr)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
