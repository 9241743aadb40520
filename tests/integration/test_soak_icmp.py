"""The soak's in-process ping matrix (tests/soak/icmp.py) against real
namespaces: pairs that can answer do, pairs that cannot (no neighbour, no
route, a namespace gone) do not, and a source pings itself."""

from __future__ import annotations

import time

import pytest

from lab.netns import Netns, NetnsFactory
from tests.soak.icmp import Target, probe_matrix

pytestmark = pytest.mark.netns


def _pair(netns: NetnsFactory) -> tuple[Netns, Netns]:
    a, b = netns.new("icmpa"), netns.new("icmpb")
    a.ip("link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", b.name)
    for ns, addr in ((a, "192.0.2.1/24"), (b, "192.0.2.2/24")):
        ns.ip("addr", "add", addr, "dev", "eth0")
        ns.ip("link", "set", "eth0", "up")
    return a, b


def test_the_matrix_answers_exactly_the_pairs_that_can(netns):
    a, b = _pair(netns)
    alone = netns.new("icmpc")  # its address on lo, no link: nobody reaches it, it reaches nobody
    alone.ip("addr", "add", "192.0.2.3/32", "dev", "lo")
    targets = [
        Target("a", a.name, "192.0.2.1"),
        Target("b", b.name, "192.0.2.2"),
        Target("c", alone.name, "192.0.2.3"),
    ]
    t0 = time.monotonic()
    ok = probe_matrix(targets, timeout_s=1.0, resend_s=0.3)
    assert ok == {("a", "a"), ("a", "b"), ("b", "a"), ("b", "b"), ("c", "c")}
    assert time.monotonic() - t0 < 5.0  # the waiting is bounded by the timeout


def test_a_source_whose_namespace_is_gone_answers_nothing(netns):
    a, b = _pair(netns)
    targets = [
        Target("a", a.name, "192.0.2.1"),
        Target("b", b.name, "192.0.2.2"),
        Target("gone", "mrt-no-such-namespace", "192.0.2.1"),
    ]
    ok = probe_matrix(targets, timeout_s=1.0)
    assert {p for p in ok if p[0] == "gone"} == set()
    assert {("a", "b"), ("b", "a")} <= ok


def test_every_pair_of_a_larger_matrix_answers_in_one_round(netns):
    a, b = _pair(netns)
    extra = [f"192.0.2.{i}" for i in range(10, 20)]
    for addr in extra:
        b.ip("addr", "add", f"{addr}/32", "dev", "lo")
    targets = [Target("a", a.name, "192.0.2.1")]
    targets += [Target(addr, b.name, addr) for addr in extra]
    ok = probe_matrix(targets, timeout_s=2.0)
    assert len(ok) == len(targets) ** 2
