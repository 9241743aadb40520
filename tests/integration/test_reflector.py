"""``meshroute reflector`` with real BIRD clients in network namespaces and
real etcd: reflection (ORIGINATOR_ID, CLUSTER_LIST, next hop unchanged,
pings across reflected routes), a change that does not concern a session
leaves it up, a refused configuration leaves the running one, and a pair
of reflectors with one cluster id survives kill -9 of either part."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from datastore.etcd import EtcdStore
from datastore.port import Put
from lab.bird_clients import BirdClients, Client, clients_conf
from lab.etcd import EtcdCluster
from lab.netns import Netns, NetnsFactory
from lab.poll import wait_for
from lab.reflector_rig import Lan, Reflector
from meshroute.bgp_secrets import SecretStore
from meshroute.bgp_store import BgpStore
from meshroute.registry import NodeRecord, Registry
from meshroute.resources import BGPConfigurationSpec, BGPPeerSpec

pytestmark = [pytest.mark.netns, pytest.mark.etcd, pytest.mark.timeout(180)]

AS = 64512
CLUSTER = "244.0.0.1"
RR_ADDR = ["192.0.2.1", "192.0.2.2"]
TO_REFLECTORS = BGPPeerSpec.model_validate(
    {"nodeSelector": "!has(route-reflector)", "peerSelector": "route-reflector == 'true'"}
)


def run_etcd(etcd: EtcdCluster, prefix: str, body: Any) -> Any:
    async def main() -> Any:
        store = EtcdStore([etcd.endpoint], timeout=5)
        try:
            return await body(store, Registry(store, prefix), BgpStore(store, prefix))
        finally:
            await store.close()

    return asyncio.run(main())


@dataclass
class Rig:
    etcd: EtcdCluster
    prefix: str
    lan: Lan
    tmp: Path
    reflectors: list[Reflector]
    clients: dict[str, tuple[Netns, BirdClients, Client]]

    def add_node(self, name: str, address: str, labels: dict[str, str] | None = None) -> None:
        rec = NodeRecord(name=name, ipv4=f"{address}/24", labels=labels or {"rack": "r1"})
        run_etcd(self.etcd, self.prefix, lambda s, reg, bgp: reg.upsert(rec))

    def put_peer(self, name: str, spec: BGPPeerSpec) -> None:
        run_etcd(self.etcd, self.prefix, lambda s, reg, bgp: bgp.apply_peer(name, spec))

    def put_raw_peer(self, name: str, body: dict[str, Any]) -> None:
        """Around ``meshroute apply``'s validation, as a buggy tool might."""
        key = f"{self.prefix}/bgp/v1/peers/{name}".encode()
        run_etcd(
            self.etcd,
            self.prefix,
            lambda s, reg, bgp: s.txn([], [Put(key, json.dumps(body).encode())]),
        )

    def delete_peer(self, name: str) -> None:
        run_etcd(self.etcd, self.prefix, lambda s, reg, bgp: bgp.delete_peer(name))

    def client(self, i: int) -> BirdClients:
        return self.clients[f"c{i}"][1]

    def all_routes_everywhere(self) -> bool:
        n = len(self.clients)
        return all(b.route_count(c.name) >= n - 1 for _, b, c in self.clients.values())

    def kernel_routes_everywhere(self) -> bool:
        """Every client's kernel holds every other client's block: BIRD's
        kernel protocol writes a route a moment after its table has it, and
        a ping needs the kernel's."""
        for name, (ns, _, _) in self.clients.items():
            kernel = ns.ip("route", "show")
            others = (p for n, (_, _, c) in self.clients.items() if n != name for p in c.prefixes)
            if not all(p in kernel for p in others):
                return False
        return True


def start_rig(
    etcd: EtcdCluster,
    prefix: str,
    netns: NetnsFactory,
    tmp: Path,
    *,
    reflectors: int,
    clients: int,
    client_overrides: dict[str, dict[str, Any]] | None = None,
    peers: dict[str, BGPPeerSpec] | None = None,
) -> Rig:
    def setup(s: EtcdStore, reg: Registry, bgp: BgpStore) -> Any:
        async def go() -> None:
            await bgp.apply_config(
                BGPConfigurationSpec.model_validate(
                    {"asNumber": AS, "nodeToNodeMeshEnabled": False}
                )
            )
            await bgp.apply_peer("to-reflectors", TO_REFLECTORS)
            for name, spec in (peers or {}).items():
                await bgp.apply_peer(name, spec)

        return go()

    run_etcd(etcd, prefix, setup)
    lan = Lan(netns)
    rig = Rig(etcd, prefix, lan, tmp, [], {})
    for i in range(1, clients + 1):
        addr = f"192.0.2.{10 + i}"
        rig.add_node(f"c{i}", addr)
        ns = lan.member(f"c{i}", addr)
        ns.ip("addr", "add", f"10.244.{i}.1/32", "dev", "lo")
        c = Client(f"c{i}", addr, (f"10.244.{i}.0/26",))
        c = replace(c, **(client_overrides or {}).get(c.name, {}))
        conf = clients_conf([c], RR_ADDR[:reflectors], AS, kernel=True)
        rig.clients[c.name] = (ns, BirdClients(ns, tmp / c.name, conf), c)
    for k in range(reflectors):
        ns = lan.member(f"rr{k + 1}", RR_ADDR[k])
        rr = Reflector(f"rr{k + 1}", RR_ADDR[k], ns, tmp / f"rr{k + 1}", etcd.endpoint, prefix)
        rig.reflectors.append(rr.start())
    return rig


@pytest.fixture
def rig_factory(
    etcd_server: EtcdCluster, etcd_prefix: str, netns: NetnsFactory, tmp_path: Path
) -> Iterator[Any]:
    made: list[Rig] = []

    def make(reflectors: int, clients: int, **kw: Any) -> Rig:
        r = start_rig(
            etcd_server, etcd_prefix, netns, tmp_path, reflectors=reflectors, clients=clients, **kw
        )
        made.append(r)
        return r

    yield make
    for r in made:
        for rr in r.reflectors:
            rr.stop()
        for _, b, _ in r.clients.values():
            b.stop()


def sessions_by_peer(rr: Reflector) -> dict[str, dict[str, Any]]:
    return {s["peer"]: s for s in rr.status()["sessions"]}


def all_established(rr: Reflector, n: int) -> bool:
    if not rr.answering():
        return False
    ss = sessions_by_peer(rr)
    return len(ss) == n and all(s["state"] == "Established" for s in ss.values())


def ping_loss(ns: Netns, src: str, dst: str, count: int, interval: float = 0.05) -> Any:
    return ns.popen(
        ["ping", "-n", "-q", "-I", src, "-i", str(interval), "-c", str(count), "-W", "1", dst],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def received_all(p: Any) -> tuple[int, int, str]:
    out = p.communicate(timeout=120)[0].decode()
    m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    assert m, out
    return int(m.group(1)), int(m.group(2)), out


def test_reflects_with_originator_and_cluster_list_and_leaves_unrelated_sessions_alone(
    rig_factory: Any,
) -> None:
    rig = rig_factory(reflectors=1, clients=3)
    rr = rig.reflectors[0]
    try:
        wait_for("3 client sessions", lambda: all_established(rr, 3), 30)
        wait_for("every client has every other's route", rig.all_routes_everywhere, 30)
        wait_for("in every client's kernel", rig.kernel_routes_everywhere, 10)
    except TimeoutError:
        raise AssertionError(rr.log()) from None

    # c1 holds c2's route as c2 announced it: reflected, next hop untouched
    out = rig.client(1).routes_all("c1")
    block = out[out.index("10.244.2.0/26") :].split("\n10.")[0]
    assert "BGP.next_hop: 192.0.2.12" in block, out
    assert "BGP.originator_id: 192.0.2.12" in block, out
    assert f"BGP.cluster_list: {CLUSTER}" in block, out
    # its own route is not reflected back to it
    assert "10.244.1.0/26" not in rig.client(1).birdc("show", "route", "protocol", "c1_rr1")

    ns1 = rig.clients["c1"][0]
    _, got, out = received_all(ping_loss(ns1, "10.244.1.1", "10.244.3.1", 5, 0.1))
    assert got == 5, out

    # the reflector's own view and the CLI
    status = rr.status()
    assert {s["role"] for s in status["sessions"]} == {"client"}
    assert all(s["received"] == 1 and s["exported"] == 2 for s in status["sessions"]), status
    cli = subprocess.run(
        [sys.executable, "-m", "meshroute", "status", "--endpoint", f"127.0.0.1:{rr.http_port}"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert cli.returncode == 0, cli.stderr
    assert "cluster id 244.0.0.1" in cli.stdout and "192.0.2.13" in cli.stdout, cli.stdout
    metrics = rr.get("/metrics")[1].decode()
    assert (
        'meshroute_reflector_session_established{node="c2",peer="192.0.2.12",role="client"} 1.0'
        in metrics
    ), metrics
    assert rr.get("/readiness")[0] == 200

    # unrelated changes: a new node (a new client session) and a BGPPeer to
    # an address nobody selects. The existing sessions do not reset.
    before = {p: s["since"] for p, s in sessions_by_peer(rr).items()}
    rig.add_node("c9", "192.0.2.19")
    rig.put_peer(
        "elsewhere",
        BGPPeerSpec.model_validate(
            {"nodeSelector": "rack == 'r7'", "peerIP": "198.51.100.1", "asNumber": 65001}
        ),
    )
    wait_for("the new client's session", lambda: "192.0.2.19" in sessions_by_peer(rr), 10)
    wait_for("BIRD polled", lambda: rr.status()["sessions"][-1]["state"] != "unknown", 10)
    after = sessions_by_peer(rr)
    for peer, since in before.items():
        assert after[peer]["state"] == "Established", after
        assert after[peer]["since"] == since, (peer, before, after)
    # BIRD runs the new configuration a moment before the reflector logs it
    wait_for("the reconfiguration logged", lambda: "reconfigured" in rr.log().lower(), 10)


def test_bad_configuration_is_refused_and_bird_keeps_the_last_good_one(
    rig_factory: Any,
) -> None:
    rig = rig_factory(reflectors=1, clients=2)
    rr = rig.reflectors[0]
    try:
        wait_for("2 client sessions", lambda: all_established(rr, 2), 30)
    except TimeoutError:
        raise AssertionError(rr.log()) from None
    good = (rr.bird_dir / "bird.conf").read_text()
    since = {p: s["since"] for p, s in sessions_by_peer(rr).items()}

    bad: list[tuple[str, dict[str, Any], str]] = [
        (
            "bad-selector",
            {"nodeSelector": "rack === 'r1'", "peerSelector": "route-reflector == 'true'"},
            "BGPPeer bad-selector: spec.nodeSelector",
        ),
        (
            "bad-as",
            {"peerIP": "198.51.100.1", "asNumber": 4294967296},
            "BGPPeer bad-as: spec.asNumber",
        ),
        (
            "zz-bad-password",
            {
                "nodeSelector": "rack == 'r1'",
                "peerSelector": "route-reflector == 'true'",
                "password": 'a"b',
            },
            "BGPPeer zz-bad-password: spec.password",
        ),
    ]
    for name, body, message in bad:
        rig.put_raw_peer(name, body)
        wait_for(
            f"refusal naming {message}",
            lambda m=message: m in (rr.status()["configError"] or ""),
            10,
        )
        assert (rr.bird_dir / "bird.conf").read_text() == good
        assert rr.get("/readiness")[0] == 200  # still serving the last good config
        rig.delete_peer(name)
        wait_for("accepted again", lambda: rr.status()["configError"] is None, 10)
    assert "refusing the new configuration" in rr.log()
    metrics = rr.get("/metrics")[1].decode()
    assert "meshroute_reflector_config_refused_total 3.0" in metrics, metrics
    after = sessions_by_peer(rr)
    assert {p: s["since"] for p, s in after.items()} == since
    assert all(s["state"] == "Established" for s in after.values())


def test_pair_keeps_every_route_when_bird_or_the_reflector_is_killed(
    rig_factory: Any,
) -> None:
    rig = rig_factory(reflectors=2, clients=3)
    rr1, rr2 = rig.reflectors
    try:
        # 3 clients + the other reflector each
        wait_for("sessions", lambda: all_established(rr1, 4) and all_established(rr2, 4), 40)
        wait_for("every client has every other's route", rig.all_routes_everywhere, 30)
        wait_for("in every client's kernel", rig.kernel_routes_everywhere, 10)
    except TimeoutError:
        raise AssertionError(rr1.log() + rr2.log()) from None
    roles = {s["role"] for s in rr1.status()["sessions"]}
    assert roles == {"client", "reflector"}
    ns1 = rig.clients["c1"][0]

    # kill -9 of rr1's BIRD, a ping running across it
    ping = ping_loss(ns1, "10.244.1.1", "10.244.2.1", 120)
    old_bird = rr1.bird_pid()
    assert old_bird is not None
    os.kill(old_bird, signal.SIGKILL)
    wait_for(
        "rr1's BIRD restarted and its sessions back",
        lambda: rr1.bird_pid() not in (None, old_bird) and all_established(rr1, 4),
        30,
    )
    assert rig.all_routes_everywhere()
    sent, got, out = received_all(ping)
    assert sent == got == 120, out
    assert rr1.status()["birdRestarts"] == 1

    # kill -9 of rr1's meshroute reflector: BIRD keeps reflecting
    ping = ping_loss(ns1, "10.244.1.1", "10.244.3.1", 60)
    bird = rr1.bird_pid()
    rr1.kill9()
    assert rig.all_routes_everywhere()
    sent, got, out = received_all(ping)
    assert sent == got == 60, out
    # back: it adopts the running BIRD, every session stays as it was
    since = {p: s["since"] for p, s in sessions_by_peer(rr2).items()}
    rr1.start()
    wait_for("rr1 back with its sessions", lambda: all_established(rr1, 4), 30)
    assert rr1.bird_pid() == bird
    assert "adopting BIRD" in rr1.log()
    assert {p: s["since"] for p, s in sessions_by_peer(rr2).items()} == since
    assert rig.all_routes_everywhere()


def test_password_ttl_security_and_max_prefix_come_from_the_bgppeer(rig_factory: Any) -> None:
    """c1's own BGPPeer (named after to-reflectors, so it wins for c1) asks
    for TCP-MD5, GTSM and at most 2 prefixes, excess dropped: c1 (speaking
    MD5 and GTSM itself) comes up, and only 2 of its 3 prefixes reach c2.
    The password is an etcd secret that appears only after the reflector
    started: until then the configuration is refused, naming the secret."""
    c1_peer = BGPPeerSpec.model_validate(
        {
            "node": "c1",
            "peerSelector": "route-reflector == 'true'",
            "passwordSecret": "c1-md5",
            "ttlSecurity": 1,
            "maxPrefix": 2,
            "maxPrefixAction": "drop",
        }
    )
    three = ("10.244.1.0/26", "10.244.1.64/26", "10.244.1.128/26")
    rig = rig_factory(
        reflectors=1,
        clients=2,
        client_overrides={
            "c1": {"prefixes": three, "password": "s3cret md5", "ttl_security": True}
        },
        peers={"zz-c1": c1_peer},
    )
    rr = rig.reflectors[0]
    wait_for("refused for the secret", lambda: rr.answering() and rr.status()["configError"], 20)
    assert "passwordSecret c1-md5: no such secret" in rr.status()["configError"]
    run_etcd(
        rig.etcd,
        rig.prefix,
        lambda s, reg, bgp: SecretStore(s, rig.prefix).put("c1-md5", "s3cret md5"),
    )
    try:
        wait_for("both sessions", lambda: all_established(rr, 2), 30)
        wait_for("c2 has c1's routes", lambda: rig.client(2).route_count("c2") >= 3, 15)
    except TimeoutError:
        raise AssertionError(rr.log() + rr.birdc("show", "protocols", "all")) from None
    st = (rr.bird_dir / "bird.conf").stat()
    assert (st.st_mode & 0o777, st.st_uid) == (0o600, os.getuid())
    assert "s3cret md5" not in rr.log()
    assert rr.status()["sessions"][0]["password"] == "<redacted>"
    conf = (rr.bird_dir / "bird.conf").read_text()
    block = conf[conf.index("protocol bgp c_192_0_2_11") :].split("\n}\n")[0]
    for line in ('password "s3cret md5";', "ttl security on;", "import limit 2 action block;"):
        assert line in block, block
    time.sleep(1)  # would a third route still arrive?
    learned = rig.client(2).birdc("show", "route", "protocol", "c2_rr1")
    assert sum(p in learned for p in three) == 2, learned
    (c1,) = [s for s in rr.status()["sessions"] if s["node"] == "c1"]
    assert c1["received"] == 2 and c1["state"] == "Established"
