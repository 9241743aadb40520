"""The policy compiler, rule by rule: what each policy rule becomes in
nftables, which sets it fills, and how endpoints reach their chains."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from netaddr import IPNetwork

from felix_lite.nft_model import NftChain, Ruleset
from felix_lite.policy_compiler import (
    EGRESS_MAP,
    FORWARD,
    INGRESS_MAP,
    POSTROUTING,
    PolicyCompiler,
    endpoint_chain,
    plan_policy_ruleset,
    policy_chain,
)
from felix_lite.policy_inputs import (
    GLOBAL_TIER,
    NAMESPACED_TIER,
    Action,
    Direction,
    Endpoint,
    EntityMatch,
    NamedPort,
    NamespaceInfo,
    NatPool,
    Policy,
    PolicyInput,
    PortRange,
    Rule,
    Selector,
)
from ipam.selector import parse_selector

IN, OUT = Direction.INGRESS, Direction.EGRESS


def sel(text: str) -> Selector:
    return Selector(text, parse_selector(text))


def ep(pod: str, ns: str, ip: str, node: str = "n1", **labels: str) -> Endpoint:
    return Endpoint(node, ns, pod, f"mr{pod}", (IPNetwork(ip),), tuple(sorted(labels.items())), ())


A = ep("a", "x", "10.0.0.1/32", app="a")
B = ep("b", "x", "10.0.0.2/32", app="b")
C = ep("c", "y", "10.0.1.3/32", node="n2", app="b")
NAMESPACES = (NamespaceInfo("x", (("team", "x"),)), NamespaceInfo("y", (("team", "y"),)))


def np_(name: str, ns: str, selector: str, *ingress: Rule, egress: tuple[Rule, ...] = ()) -> Policy:
    types = {IN} | ({OUT} if egress else set())
    return Policy(
        f"np/{ns}/{name}",
        NAMESPACED_TIER,
        sel(selector),
        frozenset(types),
        namespace=ns,
        ingress=ingress,
        egress=egress,
    )


def compile_(*policies: Policy, endpoints: tuple[Endpoint, ...] = (A, B, C)) -> Ruleset:
    return plan_policy_ruleset(PolicyInput("n1", endpoints, NAMESPACES, policies))


def chain(rs: Ruleset, name: str) -> NftChain:
    return rs.chains[name]


def texts(rs: Ruleset, name: str) -> list[str]:
    return [r.text for r in chain(rs, name).rules]


def set_of(rs: Ruleset, text: str) -> set[str]:
    name = text.split("@", 1)[1].split()[0]
    return set(rs.sets[name].elements)


def test_no_policy_no_dispatch_only_base_chains() -> None:
    rs = compile_()
    assert set(rs.chains) == {FORWARD, POSTROUTING}
    assert texts(rs, FORWARD)[:2] == [
        "ct state established,related accept",
        "ct state invalid counter drop",
    ]
    assert rs.sets[INGRESS_MAP].elements == frozenset()
    assert rs.sets[EGRESS_MAP].elements == frozenset()


def test_selected_endpoint_dispatched_and_default_denied() -> None:
    rs = compile_(np_("deny", "x", "app == 'a'"))
    ing = endpoint_chain((("np/x/deny",),), IN, 0)
    assert rs.sets[INGRESS_MAP].elements == {f'"mra" : jump {ing}'}
    assert rs.sets[EGRESS_MAP].elements == frozenset()  # not selected for egress
    assert texts(rs, ing) == [
        f"jump {policy_chain('np/x/deny', IN)}",
        "meta mark & 0x10000 != 0 accept",
        "counter drop",
    ]
    assert texts(rs, policy_chain("np/x/deny", IN)) == []


def test_pod_selector_peer_is_a_set_of_same_namespace_members() -> None:
    rule = Rule(Action.ALLOW, source=EntityMatch(selector=sel("app == 'b'"), namespace="x"))
    rs = compile_(np_("p", "x", "app == 'a'", rule))
    (text,) = texts(rs, policy_chain("np/x/p", IN))[:1]
    assert text.startswith("ip saddr @")
    assert set_of(rs, text) == {"10.0.0.2"}  # C has app=b but lives in y
    assert text.endswith("return")


def test_namespace_selector_peer_takes_other_nodes_endpoints() -> None:
    rule = Rule(
        Action.ALLOW,
        source=EntityMatch(selector=sel("all()"), namespace_selector=sel("team == 'y'")),
    )
    rs = compile_(np_("p", "x", "app == 'a'", rule))
    assert set_of(rs, texts(rs, policy_chain("np/x/p", IN))[0]) == {"10.0.1.3"}


def test_a_new_pod_changes_set_elements_only() -> None:
    rule = Rule(Action.ALLOW, source=EntityMatch(selector=sel("app == 'b'"), namespace="x"))
    pol = np_("p", "x", "app == 'a'", rule)
    before = compile_(pol)
    extra = ep("d", "x", "10.0.0.9/32", node="n2", app="b")
    after = compile_(pol, endpoints=(A, B, C, extra))
    assert after.chains == before.chains
    changed = {n for n in after.sets if after.sets[n] != before.sets[n]}
    assert len(changed) == 1
    assert "10.0.0.9" in after.sets[changed.pop()].elements


def test_ipblock_with_except_prefixes_inline_or_interval_sets() -> None:
    one = Rule(
        Action.ALLOW,
        source=EntityMatch(nets=(IPNetwork("10.1.0.0/16"),), not_nets=(IPNetwork("10.1.2.0/24"),)),
    )
    rs = compile_(np_("p", "x", "app == 'a'", one))
    (text,) = texts(rs, policy_chain("np/x/p", IN))
    # one prefix each: compared inline, no set
    assert text.startswith("ip saddr 10.1.0.0/16 ip saddr != 10.1.2.0/24 ")
    assert not any(s.interval for n, s in rs.sets.items() if n.startswith("mrn_"))
    assert "ip6" not in text  # a v4 block makes no v6 rule
    several = Rule(
        Action.ALLOW,
        source=EntityMatch(
            nets=(IPNetwork("10.1.0.0/16"), IPNetwork("10.3.0.0/16")),
            not_nets=(IPNetwork("10.1.2.0/24"), IPNetwork("10.1.4.0/24")),
        ),
    )
    rs = compile_(np_("p", "x", "app == 'a'", several))
    (text,) = texts(rs, policy_chain("np/x/p", IN))
    assert "ip saddr @" in text and "ip saddr != @" in text
    nets, excepted = (rs.sets[w.split()[0]] for w in text.split("@")[1:3])
    assert nets.interval and nets.elements == {"10.1.0.0/16", "10.3.0.0/16"}
    assert excepted.elements == {"10.1.2.0/24", "10.1.4.0/24"}


def test_ports_ranges_and_protocol() -> None:
    rule = Rule(
        Action.ALLOW,
        "tcp",
        destination=EntityMatch(ports=(PortRange(80, 80), PortRange(8000, 8080))),
    )
    rs = compile_(np_("p", "x", "app == 'a'", rule))
    assert texts(rs, policy_chain("np/x/p", IN)) == [
        "meta l4proto tcp th dport { 80, 8000-8080 } counter meta mark set meta mark"
        " | 0x10000 return"
    ]


def test_named_port_is_an_address_protocol_port_set() -> None:
    web = Endpoint(
        "n1",
        "x",
        "w",
        "mrw",
        (IPNetwork("10.0.0.7/32"),),
        (("app", "a"),),
        (NamedPort("http", "tcp", 8080), NamedPort("dns", "udp", 53)),
    )
    rule = Rule(Action.ALLOW, "tcp", destination=EntityMatch(ports=(PortRange(name="http"),)))
    rs = compile_(np_("p", "x", "app == 'a'", rule), endpoints=(A, web))
    v4 = [t for t in texts(rs, policy_chain("np/x/p", IN)) if "ip daddr" in t]
    assert len(v4) == 1 and "ip daddr . meta l4proto . th dport @" in v4[0]
    assert set_of(rs, v4[0]) == {"10.0.0.7 . tcp . 8080"}


def test_named_port_no_pod_has_matches_nothing() -> None:
    rule = Rule(Action.ALLOW, "tcp", destination=EntityMatch(ports=(PortRange(name="nope"),)))
    rs = compile_(np_("p", "x", "app == 'a'", rule))
    for t in texts(rs, policy_chain("np/x/p", IN)):
        assert set_of(rs, t) == set()


def test_gnp_actions_order_and_pass_to_the_namespaced_tier() -> None:
    deny = Policy(
        "gnp/deny",
        GLOBAL_TIER,
        sel("all()"),
        frozenset({IN}),
        order=20,
        ingress=(Rule(Action.DENY, "udp"),),
    )
    pass_ = Policy(
        "gnp/pass",
        GLOBAL_TIER,
        sel("all()"),
        frozenset({IN}),
        order=10,
        ingress=(Rule(Action.PASS, "tcp"), Rule(Action.LOG, "icmp", 8, 0)),
    )
    k8s = np_("p", "x", "app == 'a'", Rule(Action.ALLOW))
    rs = compile_(deny, pass_, k8s)
    a_sig = (("gnp/pass", "gnp/deny"), ("np/x/p",))
    t0 = texts(rs, endpoint_chain(a_sig, IN, 0))
    jumps = [t for t in t0 if t.startswith("jump")]
    assert jumps == [f"jump {policy_chain('gnp/pass', IN)}", f"jump {policy_chain('gnp/deny', IN)}"]
    assert f"meta mark & 0x20000 != 0 goto {endpoint_chain(a_sig, IN, 1)}" in t0
    assert t0.count("meta mark & 0x20000 != 0 goto " + endpoint_chain(a_sig, IN, 1)) == 1
    t1 = texts(rs, endpoint_chain(a_sig, IN, 1))
    assert t1[0] == "meta mark set meta mark & 0xfffcffff"  # the pass bit it came with
    assert "meta mark & 0x20000 != 0" not in " ".join(t1)  # NetworkPolicies never pass
    p = texts(rs, policy_chain("gnp/pass", IN))
    assert p[0] == "meta l4proto tcp counter meta mark set meta mark | 0x20000 return"
    assert p[1].startswith("meta l4proto icmp icmp type 8 icmp code 0 counter log")
    assert texts(rs, policy_chain("gnp/deny", IN)) == ["meta l4proto udp counter drop"]
    # B is only selected by the global policies: one stage, and a pass allows
    b_sig = (("gnp/pass", "gnp/deny"),)
    assert endpoint_chain(b_sig, IN, 1) not in rs.chains
    assert "meta mark & 0x20000 != 0 accept" in texts(rs, endpoint_chain(b_sig, IN, 0))
    assert rs.sets[INGRESS_MAP].elements == {
        f'"mra" : jump {endpoint_chain(a_sig, IN, 0)}',
        f'"mrb" : jump {endpoint_chain(b_sig, IN, 0)}',
    }


def test_egress_allow_returns_so_ingress_is_checked_too() -> None:
    pol = np_("p", "x", "app == 'a'", egress=(Rule(Action.ALLOW),))
    rs = compile_(pol)
    t = texts(rs, endpoint_chain((("np/x/p",),), OUT, 0))
    assert "meta mark & 0x10000 != 0 return" in t
    clear = "meta mark set meta mark & 0xfffcffff"
    assert texts(rs, FORWARD)[2:] == [
        clear,
        f"iifname vmap @{EGRESS_MAP}",
        clear,
        f"oifname vmap @{INGRESS_MAP}",
    ]


def test_endpoints_selected_by_the_same_policies_share_chains() -> None:
    twin = ep("a2", "x", "10.0.0.5/32", app="a")
    rs = compile_(np_("p", "x", "app == 'a'"), endpoints=(A, B, twin))
    chain_ = endpoint_chain((("np/x/p",),), IN, 0)
    assert rs.sets[INGRESS_MAP].elements == {f'"mra" : jump {chain_}', f'"mra2" : jump {chain_}'}
    assert [n for n in rs.chains if n.startswith("mre_")] == [chain_]


def test_gnp_namespace_selector_limits_the_endpoints() -> None:
    g = Policy(
        "gnp/g", GLOBAL_TIER, sel("all()"), frozenset({IN}), namespace_selector=sel("team == 'y'")
    )
    rs = compile_(g)
    assert rs.sets[INGRESS_MAP].elements == frozenset()  # A and B are in x
    rs = compile_(g, endpoints=(A, B, ep("c", "y", "10.0.1.3/32", app="b")))
    chain_ = endpoint_chain((("gnp/g",),), IN, 0)
    assert rs.sets[INGRESS_MAP].elements == {f'"mrc" : jump {chain_}'}


def test_a_bridged_pod_fills_sets_but_gets_no_dispatch() -> None:
    bridged = Endpoint("n1", "x", "br", "", (IPNetwork("10.0.0.8/32"),), (("app", "a"),))
    rule = Rule(Action.ALLOW, source=EntityMatch(selector=sel("app == 'a'"), namespace="x"))
    rs = compile_(np_("p", "x", "app == 'b'", rule), endpoints=(B, bridged))
    assert {e.split(" : ")[0] for e in rs.sets[INGRESS_MAP].elements} == {'"mrb"'}
    assert set_of(rs, texts(rs, policy_chain("np/x/p", IN))[0]) == {"10.0.0.8"}


def test_other_nodes_endpoints_get_no_chains() -> None:
    rs = compile_(np_("p", "y", "all()"))
    assert rs.sets[INGRESS_MAP].elements == frozenset()


def test_nat_outgoing_per_pool_and_family() -> None:
    pools = (
        NatPool(IPNetwork("10.244.0.0/16"), True),
        NatPool(IPNetwork("10.245.0.0/16"), False),
        NatPool(IPNetwork("fd00:244::/64"), True),
    )
    rs = plan_policy_ruleset(PolicyInput("n1", pools=pools))
    assert texts(rs, POSTROUTING) == [
        "ip saddr @mr_nat_sources_4 ip daddr != @mr_all_pools_4 counter masquerade",
        "ip6 saddr @mr_nat_sources_6 ip6 daddr != @mr_all_pools_6 counter masquerade",
    ]
    assert rs.sets["mr_nat_sources_4"].elements == {"10.244.0.0/16"}
    assert rs.sets["mr_all_pools_4"].elements == {"10.244.0.0/15"}
    assert rs.sets["mr_nat_sources_6"].elements == {"fd00:244::/64"}


pods = st.builds(
    lambda i, node, ns, app, port: Endpoint(
        node,
        ns,
        f"p{i}",
        f"mr{i}",
        (IPNetwork(f"10.0.0.{i}/32"), IPNetwork(f"fd00::{i:x}/128")),
        (("app", app),),
        (NamedPort("http", "tcp", port),) if port else (),
    ),
    st.integers(1, 12),
    st.sampled_from(["n1", "n2"]),
    st.sampled_from(["x", "y"]),
    st.sampled_from(["a", "b"]),
    st.sampled_from([0, 80, 8080]),
)
# Versions of each policy (one key, other contents): rules only (its own
# chain changes), its selector (which endpoints jump to it), Pass or not
# (what the chains shared by its endpoints say).
P_RULES = (
    Rule(Action.ALLOW, source=EntityMatch(selector=sel("app == 'b'"), namespace="x")),
    Rule(Action.ALLOW, "tcp", destination=EntityMatch(ports=(PortRange(name="http"),))),
)
P_EGRESS = (Rule(Action.ALLOW, destination=EntityMatch(namespace_selector=sel("all()"))),)
VERSIONS: tuple[tuple[Policy, ...], ...] = (
    (
        np_("p", "x", "app == 'a'", *P_RULES, egress=P_EGRESS),
        np_("p", "x", "app == 'a'", P_RULES[1], egress=P_EGRESS),
        np_("p", "x", "app == 'b'", *P_RULES),
    ),
    (
        Policy(
            "gnp/g",
            GLOBAL_TIER,
            sel("app == 'b'"),
            frozenset({IN}),
            order=1,
            ingress=(Rule(Action.PASS, source=EntityMatch(selector=sel("all()"))),),
        ),
        Policy(
            "gnp/g",
            GLOBAL_TIER,
            sel("app == 'b'"),
            frozenset({IN, OUT}),
            order=1,
            ingress=(
                Rule(Action.DENY, "udp", source=EntityMatch(nets=(IPNetwork("10.0.0.0/30"),))),
            ),
        ),
    ),
    (
        np_(
            "q",
            "y",
            "all()",
            Rule(Action.ALLOW, source=EntityMatch(selector=sel("app == 'a'"), namespace="y")),
        ),
    ),
)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.one_of(st.none(), st.lists(pods, max_size=8)),  # None: the same endpoints
            st.tuples(*(st.sampled_from([None, *range(len(v))]) for v in VERSIONS)),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_incremental_compile_equals_a_full_one(
    steps: list[tuple[list[Endpoint] | None, tuple[int | None, ...]]],
) -> None:
    """Pods come and go, policies come, go and change, alone or at once:
    the compiler's ruleset is always the one a full compile makes."""
    compiler = PolicyCompiler()
    eps: tuple[Endpoint, ...] = ()
    for new_eps, chosen in steps:
        eps = eps if new_eps is None else tuple(new_eps)
        policies = tuple(v[i] for v, i in zip(VERSIONS, chosen, strict=True) if i is not None)
        inp = PolicyInput("n1", eps, NAMESPACES, policies)
        assert compiler.compile(inp) == plan_policy_ruleset(inp)


def test_a_policy_change_touches_only_what_it_concerns() -> None:
    """Its rules changed: its own chain is new, every other chain and every
    set (the dispatch maps included) is the very value of the last compile,
    which the reconciler's diff skips without looking at elements."""
    p1, p2 = VERSIONS[0][0], VERSIONS[0][1]
    g = VERSIONS[1][0]
    eps = (A, B, C)
    compiler = PolicyCompiler()
    before = compiler.compile(PolicyInput("n1", eps, NAMESPACES, (p1, g)))
    after = compiler.compile(PolicyInput("n1", eps, NAMESPACES, (p2, g)))
    assert after == plan_policy_ruleset(PolicyInput("n1", eps, NAMESPACES, (p2, g)))
    own = {policy_chain("np/x/p", d) for d in (IN, OUT)}
    assert all(c is before.chains[n] for n, c in after.chains.items() if n not in own)
    assert {n for n in own if after.chains[n] != before.chains[n]} == {policy_chain("np/x/p", IN)}
    assert all(s is before.sets[n] for n, s in after.sets.items())
    # its selector changed: the dispatch of the endpoints it selects changes too
    p3 = VERSIONS[0][2]
    moved = compiler.compile(PolicyInput("n1", eps, NAMESPACES, (p3, g)))
    assert moved == plan_policy_ruleset(PolicyInput("n1", eps, NAMESPACES, (p3, g)))
    assert moved.sets[INGRESS_MAP] != after.sets[INGRESS_MAP]
