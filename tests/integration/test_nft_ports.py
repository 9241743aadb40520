"""The policy reconciler's two ports to nftables, held to one contract in a
real network namespace: ``NftLib`` (libnftables in this process, the one
the node uses) and ``NftCli`` (an ``nft`` process per call)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from felix_lite.nft_lib import NftLib
from felix_lite.nft_model import NftChain, NftRule, NftSet, Ruleset, TableState
from felix_lite.nft_reconciler import NftCli, NftError, NftPort, PolicyReconciler
from felix_lite.nft_script import parse_table_json, plan_nft_script
from lab.netns import Netns, NetnsFactory, run

pytestmark = [pytest.mark.netns]

RULESET = Ruleset(
    sets={
        "mrs_a_4": NftSet("mrs_a_4", "ipv4_addr", False, frozenset({"10.0.0.1", "10.0.0.2"})),
        "mr_ingress": NftSet("mr_ingress", "ifname : verdict", False, frozenset()),
    },
    chains={
        "mrp_a_i": NftChain(
            "mrp_a_i", (NftRule("ip saddr @mrs_a_4 counter accept", "np/x/a ingress r0 allow"),)
        ),
    },
)


@pytest.fixture(params=["lib", "cli"])
def port(request: pytest.FixtureRequest, netns: NetnsFactory) -> Iterator[tuple[NftPort, Netns]]:
    ns = netns.new("nftport")
    if request.param == "lib":
        lib = NftLib(ns.name)
        yield lib, ns
        lib.close()
    else:
        yield NftCli(ns.name), ns


async def test_read_apply_refuse(port: tuple[NftPort, Netns]) -> None:
    nft, ns = port
    assert await nft.read() is None  # no table yet
    await nft.apply("\n".join(plan_nft_script(RULESET, None)) + "\n")
    text = await nft.read()
    assert text is not None
    want = TableState.of(RULESET)
    for got in (
        parse_table_json(text),
        parse_table_json(ns.sh("nft -j list table inet meshroute")),
    ):
        assert got is not None and (got.sets, got.chains) == (want.sets, want.chains)
    terse = await nft.read(terse=True)
    assert terse is not None and "10.0.0.1" not in terse and "mrp_a_i" in terse

    before = ns.sh("nft list table inet meshroute")
    with pytest.raises(NftError, match="No such file or directory"):
        await nft.apply(
            "add element inet meshroute mrs_a_4 { 10.0.0.3 }\n"
            "add rule inet meshroute mrp_a_i jump mr_no_such\n"
        )
    assert ns.sh("nft list table inet meshroute") == before  # all or nothing

    await nft.apply("add element inet meshroute mrs_a_4 { 10.0.0.3 }\n")
    got = parse_table_json(await nft.read() or "")
    assert got is not None and "10.0.0.3" in got.sets["mrs_a_4"].elements


async def test_the_table_lands_in_the_namespace_only(port: tuple[NftPort, Netns]) -> None:
    nft, ns = port
    mine = os.readlink("/proc/self/ns/net")
    rec = PolicyReconciler(nft)
    rec.set_desired(RULESET)
    assert (await rec.pass_once()).error is None
    assert "mrp_a_i" in ns.sh("nft list table inet meshroute")
    assert os.readlink("/proc/self/ns/net") == mine  # this thread never moved
    assert "table inet meshroute" not in run(["nft", "list", "tables"])  # not in the root one


async def test_a_removed_namespace_is_an_error_not_a_crash(netns: NetnsFactory) -> None:
    lib = NftLib("/var/run/netns/mrt-no-such-namespace")
    try:
        with pytest.raises(NftError):
            await lib.read()
    finally:
        lib.close()
