"""An interval set of ``inet meshroute`` whose element is replaced by an
overlapping one (a pool narrowed from /16 to /18, as the soak does at its
start) changes in one ``nft -f`` transaction: nft refuses an added interval
that overlaps one the same script deletes only later, and the node then kept
its old ruleset for good."""

from __future__ import annotations

import subprocess

import pytest

from felix_lite.nft_model import BaseHook, NftChain, NftRule, NftSet, Ruleset, TableState
from felix_lite.nft_script import parse_table_json, plan_full_script, plan_nft_script
from lab.netns import Netns

pytestmark = pytest.mark.netns

CHAIN = NftChain(
    "mr_forward", (NftRule("ip saddr @pools accept", "pods"),), BaseHook("filter", "forward", 0)
)


def ruleset(*cidrs: str) -> Ruleset:
    pools = NftSet("pools", "ipv4_addr", interval=True, elements=frozenset(cidrs))
    return Ruleset({"pools": pools}, {"mr_forward": CHAIN})


def nft(ns: Netns, lines: list[str]) -> None:
    p = subprocess.run(
        ["ip", "netns", "exec", ns.name, "nft", "-f", "-"],
        input="\n".join(lines) + "\n",
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert p.returncode == 0, p.stderr


def table(ns: Netns) -> TableState:
    out = ns.sh("nft -j list table inet meshroute")
    state = parse_table_json(out)
    assert state is not None
    return state


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (("10.244.0.0/16",), ("10.244.0.0/18",)),  # narrowed
        (("10.244.0.0/18",), ("10.244.0.0/16",)),  # widened
        (("10.244.0.0/18", "10.245.0.0/16"), ("10.244.0.0/17", "10.245.0.0/16")),
    ],
)
def test_an_overlapping_interval_replaces_the_old_one_in_one_script(netns, before, after):
    ns = netns.new("nftiv")
    nft(ns, plan_full_script(ruleset(*before)))
    nft(ns, plan_nft_script(ruleset(*after), table(ns)))
    assert table(ns).sets["pools"].elements == frozenset(after)
