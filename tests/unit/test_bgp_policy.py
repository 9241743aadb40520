"""Import policy: each refusal reason, their order, max-prefix, counts."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from netaddr import IPAddress, IPNetwork

from bgpd.model import Path, PathAttrs
from bgpd.policy import (
    IMPORT_RULES,
    ImportContext,
    MaxPrefixAction,
    MaxPrefixDecision,
    PoolRule,
    RejectCounts,
    RejectReason,
    decide_import,
    decide_max_prefix,
)

SELF = IPAddress("192.0.2.1")
PEER = IPAddress("192.0.2.2")
OWN_BLOCK = IPNetwork("10.244.7.0/26")

CTX = ImportContext(
    pools=(
        PoolRule(IPNetwork("10.244.0.0/16"), 26),
        PoolRule(IPNetwork("fd00:10::/48"), 122),
    ),
    allow=(IPNetwork("198.51.100.0/24"),),
    own_blocks=frozenset({OWN_BLOCK}),
    own_addresses=frozenset({SELF, IPAddress("2001:db8::1")}),
)


def path(prefix: str, next_hop: str = "192.0.2.2") -> Path:
    return Path(
        prefix=IPNetwork(prefix),
        peer=PEER,
        peer_as=64512,
        peer_router_id=PEER,
        ebgp=False,
        attrs=PathAttrs(next_hop=IPAddress(next_hop)),
    )


@pytest.mark.parametrize(
    ("prefix", "next_hop"),
    [
        ("10.244.1.0/26", "192.0.2.2"),  # a peer's block
        ("10.244.1.5/32", "192.0.2.2"),  # a borrowed address
        ("10.244.7.9/32", "192.0.2.2"),  # borrowed from one of our own blocks: goes there
        ("10.244.0.0/16", "192.0.2.2"),  # the pool as an aggregate (shorter is fine)
        ("10.244.4.0/24", "192.0.2.2"),
        ("198.51.100.128/29", "192.0.2.2"),  # allow-list: no length limit
        ("fd00:10::40/122", "2001:db8::2"),
        ("fd00:10::7/128", "2001:db8::2"),
        ("10.244.2.0/26", "fe80::1"),  # v6 next hop for v4 (RFC 8950) is not refused
    ],
)
def test_accepted(prefix: str, next_hop: str) -> None:
    assert decide_import(CTX, path(prefix, next_hop)) is None


@pytest.mark.parametrize(
    ("prefix", "next_hop", "reason"),
    [
        ("10.244.1.0/26", "0.0.0.0", RejectReason.BAD_NEXT_HOP),
        ("10.244.1.0/26", "127.0.0.1", RejectReason.BAD_NEXT_HOP),
        ("10.244.1.0/26", "224.0.0.5", RejectReason.BAD_NEXT_HOP),
        ("10.244.1.0/26", "255.255.255.255", RejectReason.BAD_NEXT_HOP),
        ("10.244.1.0/26", "169.254.1.1", RejectReason.BAD_NEXT_HOP),
        ("fd00:10::40/122", "::", RejectReason.BAD_NEXT_HOP),
        ("fd00:10::40/122", "::1", RejectReason.BAD_NEXT_HOP),
        ("fd00:10::40/122", "ff02::5", RejectReason.BAD_NEXT_HOP),
        ("10.244.1.0/26", "192.0.2.1", RejectReason.NEXT_HOP_IS_SELF),
        ("fd00:10::40/122", "2001:db8::1", RejectReason.NEXT_HOP_IS_SELF),
        ("0.0.0.0/0", "192.0.2.2", RejectReason.DEFAULT_ROUTE),
        ("::/0", "2001:db8::2", RejectReason.DEFAULT_ROUTE),
        ("10.244.7.0/26", "192.0.2.2", RejectReason.OWN_BLOCK),
        ("10.245.0.0/26", "192.0.2.2", RejectReason.NOT_IN_POOL),
        ("10.0.0.0/8", "192.0.2.2", RejectReason.NOT_IN_POOL),  # covers the pool, not inside
        ("203.0.113.0/24", "192.0.2.2", RejectReason.NOT_IN_POOL),
        ("fd00:11::/122", "2001:db8::2", RejectReason.NOT_IN_POOL),
        ("10.244.1.0/27", "192.0.2.2", RejectReason.TOO_SPECIFIC),
        ("10.244.1.0/31", "192.0.2.2", RejectReason.TOO_SPECIFIC),
        ("fd00:10::40/124", "2001:db8::2", RejectReason.TOO_SPECIFIC),
    ],
)
def test_refused_with_reason(prefix: str, next_hop: str, reason: RejectReason) -> None:
    assert decide_import(CTX, path(prefix, next_hop)) is reason


def test_first_failing_rule_wins() -> None:
    # out of pool, too specific and next hop is self at once: the next-hop rule comes first
    assert decide_import(CTX, path("203.0.113.0/30", "192.0.2.1")) is RejectReason.NEXT_HOP_IS_SELF
    # own block with a loopback next hop: bad next hop comes first
    assert decide_import(CTX, path(str(OWN_BLOCK), "127.0.0.1")) is RejectReason.BAD_NEXT_HOP
    assert [r.__name__ for r in IMPORT_RULES] == [
        "as_path_loop",
        "bad_next_hop",
        "next_hop_is_self",
        "default_route",
        "own_block",
        "not_in_pool",
        "too_specific",
    ]


def looped(as_path: tuple[int, ...], prefix: str = "10.244.1.0/26") -> Path:
    return Path(
        IPNetwork(prefix), PEER, 65001, PEER, True, PathAttrs(IPAddress("192.0.2.2"), as_path)
    )


def test_as_path_holding_our_own_as_is_a_loop() -> None:
    ctx = ImportContext(pools=CTX.pools, local_as=64600)
    assert decide_import(ctx, looped((65001, 64600))) is RejectReason.AS_PATH_LOOP
    assert decide_import(ctx, looped((64600,))) is RejectReason.AS_PATH_LOOP
    assert decide_import(ctx, looped((65001, 64601, 64600, 64600))) is RejectReason.AS_PATH_LOOP
    # checked first: a looped path is refused whatever else is wrong with it
    assert decide_import(ctx, looped((64600,), "0.0.0.0/0")) is RejectReason.AS_PATH_LOOP
    assert decide_import(ctx, looped((65001, 64601))) is None
    assert decide_import(ctx, looped(())) is None  # iBGP from our own AS: empty path
    # no AS known: no loop check
    assert decide_import(ImportContext(pools=CTX.pools), looped((64600,))) is None


def test_allowed_default_route_needs_no_pool() -> None:
    ctx = ImportContext(pools=CTX.pools, allow_default=True)
    assert decide_import(ctx, path("0.0.0.0/0")) is None
    assert decide_import(ctx, path("10.245.0.0/16")) is RejectReason.NOT_IN_POOL


def test_host_bits_in_a_prefix_do_not_escape_the_pool_check() -> None:
    # 10.244.255.255/15 is the network 10.244.0.0/15, which is larger than the pool
    assert decide_import(CTX, path("10.244.255.255/15")) is RejectReason.NOT_IN_POOL
    assert decide_import(CTX, path("10.244.7.5/26")) is RejectReason.OWN_BLOCK


def test_no_pools_refuses_everything_but_allowed_defaults() -> None:
    assert decide_import(ImportContext(), path("10.244.1.0/26")) is RejectReason.NOT_IN_POOL


def test_block_size_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError, match="block size"):
        ImportContext(pools=(PoolRule(IPNetwork("10.244.0.0/16"), 33),))


@pytest.mark.parametrize(
    ("count", "limit", "action", "expected"),
    [
        (5, None, MaxPrefixAction.DROP, MaxPrefixDecision.ACCEPT),
        (10, 10, MaxPrefixAction.DROP, MaxPrefixDecision.ACCEPT),
        (11, 10, MaxPrefixAction.DROP, MaxPrefixDecision.DROP),
        (10, 10, MaxPrefixAction.CLOSE, MaxPrefixDecision.ACCEPT),
        (11, 10, MaxPrefixAction.CLOSE, MaxPrefixDecision.CLOSE),
        (1, 0, MaxPrefixAction.DROP, MaxPrefixDecision.DROP),
    ],
)
def test_decide_max_prefix(
    count: int, limit: int | None, action: MaxPrefixAction, expected: MaxPrefixDecision
) -> None:
    assert decide_max_prefix(count, limit, action) is expected


def test_reject_counts_per_peer_and_reason() -> None:
    counts = RejectCounts()
    other = IPAddress("2001:db8::2")
    counts.add(PEER, RejectReason.NOT_IN_POOL)
    counts.add(PEER, RejectReason.NOT_IN_POOL, 2)
    counts.add(PEER, RejectReason.OWN_BLOCK)
    counts.add(other, RejectReason.MAX_PREFIX, 4)
    assert counts.get(PEER, RejectReason.NOT_IN_POOL) == 3
    assert counts.get(PEER, RejectReason.MAX_PREFIX) == 0
    assert counts.for_peer(PEER) == {"not-in-pool": 3, "own-block": 1}
    assert counts.total() == 8
    assert counts.total(other) == 4
    assert list(counts.items()) == [
        (PEER, RejectReason.NOT_IN_POOL, 3),
        (PEER, RejectReason.OWN_BLOCK, 1),
        (other, RejectReason.MAX_PREFIX, 4),
    ]
    with pytest.raises(ValueError):
        counts.add(PEER, RejectReason.OWN_BLOCK, -1)


# ---- Hypothesis: the integer rules agree with a netaddr reference ------------


def reference(ctx: ImportContext, p: Path) -> RejectReason | None:
    """The same policy written the slow, obvious way with netaddr."""
    nh, prefix = p.attrs.next_hop, p.prefix.cidr
    if ctx.local_as is not None and ctx.local_as in p.attrs.as_path:
        return RejectReason.AS_PATH_LOOP
    if (
        nh.is_loopback()
        or nh.is_multicast()
        or int(nh) == 0
        or (nh.version == 4 and (nh in IPNetwork("0.0.0.0/8") or nh in IPNetwork("240.0.0.0/4")))
        or (nh.version == 4 and nh in IPNetwork("169.254.0.0/16"))
    ):
        return RejectReason.BAD_NEXT_HOP
    if nh in ctx.own_addresses:
        return RejectReason.NEXT_HOP_IS_SELF
    if prefix.prefixlen == 0:
        return None if ctx.allow_default else RejectReason.DEFAULT_ROUTE
    if prefix in ctx.own_blocks:
        return RejectReason.OWN_BLOCK
    pools = [r for r in ctx.pools if r.cidr.version == prefix.version and prefix in r.cidr]
    allowed = [a for a in ctx.allow if a.version == prefix.version and prefix in a]
    if not pools and not allowed:
        return RejectReason.NOT_IN_POOL
    host = 32 if prefix.version == 4 else 128
    if prefix.prefixlen == host or allowed:
        return None
    if any(prefix.prefixlen <= r.block_size for r in pools):
        return None
    return RejectReason.TOO_SPECIFIC


v4_prefixes = st.builds(
    lambda value, length: IPNetwork((value, length)),
    st.one_of(
        st.integers(0, 2**32 - 1),
        st.integers(0x0AF40000, 0x0AF4FFFF),  # inside the pool, mostly
        st.integers(0xC6336400, 0xC63364FF),  # the allow-list
    ),
    st.integers(0, 32),
)
v6_prefixes = st.builds(
    lambda value, length: IPNetwork((value, length), version=6),
    st.integers(0xFD000010 << 96, (0xFD000010 << 96) + 2**80),
    st.integers(40, 128),
)
next_hops = st.one_of(
    st.sampled_from(["192.0.2.1", "192.0.2.2", "127.0.0.1", "0.0.0.0", "224.0.0.1"]).map(IPAddress),
    st.integers(0, 2**32 - 1).map(lambda v: IPAddress(v, 4)),
    st.sampled_from(["2001:db8::1", "2001:db8::2", "::", "::1", "ff02::1"]).map(IPAddress),
)


as_paths = st.lists(st.sampled_from([64512, 64600, 65001, 4200000000]), max_size=4).map(tuple)


@given(st.one_of(v4_prefixes, v6_prefixes), next_hops, st.booleans(), as_paths)
def test_rules_agree_with_a_netaddr_reference(prefix, next_hop, allow_default, as_path) -> None:
    ctx = ImportContext(
        local_as=64600,
        pools=CTX.pools,
        allow=CTX.allow,
        own_blocks=CTX.own_blocks | {IPNetwork("fd00:10::80/122")},
        own_addresses=CTX.own_addresses,
        allow_default=allow_default,
    )
    p = Path(prefix, PEER, 64512, PEER, False, PathAttrs(next_hop=next_hop, as_path=as_path))
    assert decide_import(ctx, p) is reference(ctx, p)
