"""A real ``meshroute reflector`` with an IPv6 address reflects IPv6 blocks
between two dual-stack BIRD clients over IPv6 sessions, next hop unchanged,
and IPv4 blocks over the IPv4 sessions beside them.

Layout (one bridge)::

    c1  192.0.2.11  2001:db8::11  ---+
    c2  192.0.2.12  2001:db8::12  ---+--- br0
    rr1 192.0.2.1   2001:db8::1   ---+    meshroute reflector (BIRD)
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from datastore.etcd import EtcdStore
from lab.etcd import EtcdCluster
from lab.netns import NetnsFactory
from lab.poll import wait_for
from lab.reflector_rig import Lan, Reflector
from meshroute.bgp_store import BgpStore
from meshroute.registry import NodeRecord, Registry
from meshroute.resources import BGPConfigurationSpec, BGPPeerSpec
from tests.harness.bgp_peers import Bird, BirdNeighbor, BirdSpec, start_bird

pytestmark = [pytest.mark.etcd, pytest.mark.netns, pytest.mark.slow]
AS = 64512
RR4, RR6 = "192.0.2.1", "2001:db8::1"
CLIENTS = {
    "c1": ("192.0.2.11", "2001:db8::11", "10.244.1.0/26", "fd00:10::1:0/122"),
    "c2": ("192.0.2.12", "2001:db8::12", "10.244.2.0/26", "fd00:10::2:0/122"),
}


def run_etcd(etcd: EtcdCluster, prefix: str, body: Any) -> None:
    async def main() -> None:
        store = EtcdStore([etcd.endpoint], timeout=5)
        try:
            await body(Registry(store, prefix), BgpStore(store, prefix))
        finally:
            await store.close()

    asyncio.run(main())


@pytest.fixture
def rig(
    etcd_server: EtcdCluster, etcd_prefix: str, netns: NetnsFactory, tmp_path: Path
) -> Iterator[dict[str, Bird]]:
    async def setup(reg: Registry, bgp: BgpStore) -> None:
        await bgp.apply_config(
            BGPConfigurationSpec.model_validate({"asNumber": AS, "nodeToNodeMeshEnabled": False})
        )
        await bgp.apply_peer(
            "to-reflectors",
            BGPPeerSpec.model_validate(
                {"nodeSelector": "!has(route-reflector)", "peerSelector": "has(route-reflector)"}
            ),
        )
        for name, (v4, v6, _, _) in CLIENTS.items():
            await reg.upsert(NodeRecord(name, ipv4=f"{v4}/24", ipv6=f"{v6}/64"))

    run_etcd(etcd_server, etcd_prefix, setup)
    lan = Lan(netns)
    birds: dict[str, Bird] = {}
    rr_ns = lan.member("rr1", RR4, f"{RR6}/64")
    rr = Reflector(
        "rr1", RR4, rr_ns, tmp_path / "rr1", etcd_server.endpoint, etcd_prefix,
        extra={"ipv6": f"{RR6}/64"},
    )  # fmt: skip
    try:
        for name, (v4, v6, block4, block6) in CLIENTS.items():
            ns = lan.member(name, v4, f"{v6}/64")
            spec = BirdSpec(
                router_id=v4,
                local_as=AS,
                neighbors=(
                    BirdNeighbor("rr4", RR4, AS, v4),
                    BirdNeighbor("rr6", RR6, AS, v6, ipv6=True),
                ),
                static4=(block4,),
                static6=(block6,),
            )
            birds[name] = start_bird(ns, tmp_path / name, spec)
        rr.start()
        yield birds
    finally:
        rr.stop()
        for b in birds.values():
            b.stop()


def test_reflects_ipv6_blocks_over_ipv6_sessions_next_hop_unchanged(
    rig: dict[str, Bird],
) -> None:
    c1, c2 = rig["c1"], rig["c2"]
    for b in (c1, c2):
        b.wait_established("rr4", 30)
        b.wait_established("rr6", 30)
    wait_for("c2 learns c1's IPv6 block", lambda: CLIENTS["c1"][3] in c2.routes_from("rr6"), 20)
    wait_for("c1 learns c2's IPv4 block", lambda: CLIENTS["c2"][2] in c1.routes_from("rr4"), 20)
    shown = c2.birdc(f"show route {CLIENTS['c1'][3]} all")
    assert f"BGP.next_hop: {CLIENTS['c1'][1]}" in shown, shown
    assert f"BGP.originator_id: {CLIENTS['c1'][0]}" in shown, shown
    assert CLIENTS["c2"][3] in c1.routes_from("rr6")
