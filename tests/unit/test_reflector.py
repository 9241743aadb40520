"""The reflector's pure parts: which sessions it has (clients by inverting
the nodes' BGPPeer selection, same-cluster reflectors as non-clients), the
BIRD configuration rendered from them (golden file, accepted by ``bird -p``),
BIRD's session table parsed from ``show protocols all`` (captured from BIRD
2.0.12), refusals naming resource and field, and reflector.yaml loading."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from netaddr import IPAddress

from bgpd.bird_config import BirdConfigError, render_bird
from bgpd.bird_ctl import parse_reply, parse_show_protocols_all
from bgpd.bird_supervisor import BirdConfigRejected, validate_config
from meshroute.peering import plan_peers
from meshroute.reflector.config import parse_reflector_config
from meshroute.reflector.plan import (
    CLIENT,
    CLUSTER_ID_LABEL,
    PEER,
    REFLECTOR,
    REFLECTOR_LABEL,
    ReflectorSession,
    Tuning,
    plan_bird_config,
    plan_sessions,
    session_problems,
)
from meshroute.registry import NodeRecord
from meshroute.resources import BFDProfileSpec, BGPConfigurationSpec, BGPPeerSpec
from meshroute.runtime.config import ConfigError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "bird"
NO_MESH = BGPConfigurationSpec.model_validate({"asNumber": 64512, "nodeToNodeMeshEnabled": False})


def rr(name: str, addr: str, cluster: str = "244.0.0.1") -> NodeRecord:
    labels = {REFLECTOR_LABEL: "true", CLUSTER_ID_LABEL: cluster}
    return NodeRecord(name=name, ipv4=f"{addr}/24", labels=labels)


def node(name: str, addr: str, rack: str = "r1") -> NodeRecord:
    return NodeRecord(name=name, ipv4=f"{addr}/24", labels={"rack": rack})


ME = rr("rr1", "192.0.2.1")
NODES = {
    n.name: n
    for n in (
        ME,
        rr("rr2", "192.0.2.2"),
        rr("rr9", "192.0.2.9", cluster="244.0.0.9"),
        node("a", "192.0.2.11"),
        node("b", "192.0.2.12", rack="r2"),
        node("c", "192.0.2.13", rack="r3"),
    )
}
TO_RR = BGPPeerSpec.model_validate(
    {
        "nodeSelector": "!has(route-reflector) && rack in {'r1', 'r2'}",
        "peerSelector": "route-reflector == 'true'",
        "password": "s3cret",
        "maxPrefix": 500,
        "maxPrefixAction": "close",
    }
)


def test_clients_are_the_nodes_whose_peering_selects_this_reflector() -> None:
    sessions = plan_sessions(ME, NODES, NO_MESH, {"to-rr": TO_RR})
    by = {s.node: s for s in sessions}
    assert set(by) == {"a", "b", "rr2"}  # c's rack has no peering; rr9 is another cluster
    assert by["a"].role == by["b"].role == CLIENT
    assert by["a"].password == "s3cret" and by["a"].max_prefix == 500
    assert by["a"].max_prefix_action == "close" and by["a"].source == "to-rr"
    assert by["a"].passive  # the client connects (its session is not passive)
    assert by["rr2"].role == REFLECTOR and by["rr2"].password is None
    assert not by["rr2"].passive  # the smaller address connects
    assert [s.address for s in sessions] == sorted(s.address for s in sessions)


def test_a_peer_the_reflector_itself_is_selected_for_is_a_plain_peer() -> None:
    tor = BGPPeerSpec.model_validate(
        {"nodeSelector": "has(route-reflector)", "peerIP": "198.51.100.1", "asNumber": 65001}
    )
    sessions = plan_sessions(ME, NODES, NO_MESH, {"to-rr": TO_RR, "tor": tor})
    (t,) = [s for s in sessions if s.address == IPAddress("198.51.100.1")]
    assert t.role == PEER and t.peer_as == 65001 and t.protocol == "p_198_51_100_1"


def test_an_ebgp_node_selecting_the_reflector_is_not_an_rr_client() -> None:
    cfg = NO_MESH.model_copy(update={"node_as_numbers": {"a": 65010}})
    (a,) = [s for s in plan_sessions(ME, NODES, cfg, {"to-rr": TO_RR}) if s.node == "a"]
    assert a.role == PEER and a.peer_as == 65010


def golden(name: str, text: str) -> None:
    path = FIXTURES / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text()


SESSIONS = [
    ReflectorSession(
        IPAddress("192.0.2.2"), 64512, REFLECTOR, node="rr2", source="cluster", passive=True
    ),
    ReflectorSession(
        IPAddress("192.0.2.11"),
        64512,
        CLIENT,
        node="a",
        source="to-rr",
        passive=True,
        password="s3cret pass",
        ttl_security=2,
        hold_time=9,
        graceful_restart_time=30,
        max_prefix=500,
        max_prefix_action="close",
        bfd_profile="fast",
    ),
    ReflectorSession(
        IPAddress("192.0.2.12"),
        64512,
        CLIENT,
        node="b",
        max_prefix=10,
        graceful_restart_time=0,
        bfd_profile="not-there",  # a profile deleted under it: no BFD
    ),
]
FAST = BFDProfileSpec.model_validate(
    {"receiveInterval": 50, "transmitInterval": 100, "detectMultiplier": 4, "passiveMode": True}
)


def render() -> str:
    return render_bird(
        plan_bird_config(
            router_id=IPAddress("192.0.2.1"),
            local_address=IPAddress("192.0.2.1"),
            local_as=64512,
            cluster_id="244.0.0.1",
            sessions=SESSIONS,
            port=1179,
            tuning=Tuning(1, 5, (2, 30)),
            bfd_profiles={"fast": FAST},
        )
    )


def test_bfd_profile_of_the_clients_peering_reaches_the_reflector() -> None:
    to_rr = TO_RR.model_copy(update={"bfd_profile": "fast"})
    by = {s.node: s for s in plan_sessions(ME, NODES, NO_MESH, {"to-rr": to_rr})}
    assert by["a"].bfd_profile == by["b"].bfd_profile == "fast"
    assert by["rr2"].bfd_profile is None
    text = render()
    assert text.count("protocol bfd {") == 1
    assert text.count("bfd { min rx interval 50 ms; min tx interval 100 ms;") == 1


def test_bird_config_golden_and_accepted_by_bird(tmp_path: Path) -> None:
    text = render()
    golden("reflector.conf", text)
    validate_config(text, tmp_path / "c.conf")


def test_a_change_to_one_session_leaves_every_other_protocol_text_alone() -> None:
    def blocks(text: str) -> dict[str, str]:
        parts = text.split("\nprotocol bgp ")[1:]
        return {p.split()[0]: p for p in parts}

    before = blocks(render())
    extra = ReflectorSession(IPAddress("192.0.2.14"), 64512, CLIENT, node="d")
    after = blocks(
        render_bird(
            plan_bird_config(
                router_id=IPAddress("192.0.2.1"),
                local_address=IPAddress("192.0.2.1"),
                local_as=64512,
                cluster_id="244.0.0.1",
                sessions=[*SESSIONS, extra],
                port=1179,
                tuning=Tuning(1, 5, (2, 30)),
                bfd_profiles={"fast": FAST},
            )
        )
    )
    assert set(after) - set(before) == {"c_192_0_2_14"}
    assert all(after[k] == v for k, v in before.items())


def test_bird_refuses_what_our_checks_let_through(tmp_path: Path) -> None:
    with pytest.raises(BirdConfigRejected, match=r"BIRD refuses the configuration: .*config"):
        validate_config("router id 192.0.2.1;\nprotocol bgp x { nonsense; }\n", tmp_path / "c")


def test_passwords_bird_cannot_take_are_named_by_their_bgppeer() -> None:
    bad = ReflectorSession(IPAddress("192.0.2.11"), 64512, CLIENT, source="to-rr", password='a"b')
    (msg,) = session_problems([bad, *SESSIONS])
    assert msg.startswith("BGPPeer to-rr: spec.password: BIRD takes passwords printable")
    with pytest.raises(BirdConfigError, match="password"):
        render_bird(
            plan_bird_config(
                router_id=IPAddress("192.0.2.1"),
                local_address=IPAddress("192.0.2.1"),
                local_as=64512,
                cluster_id=None,
                sessions=[bad],
            )
        )


def test_show_protocols_all_parsed_from_bird_2_0_12() -> None:
    text = (FIXTURES / "show-protocols-all-reflector.txt").read_text()
    sessions = parse_show_protocols_all(text)
    assert [s.protocol for s in sessions] == ["c_192_0_2_11", "c_192_0_2_12"]
    s = sessions[0]
    assert s.established and s.state == "up" and s.neighbor == "192.0.2.11"
    assert s.neighbor_as == 64512 and s.imported == 1 and s.exported == 1 and s.received == 1
    assert s.since == datetime(2026, 11, 26, 5, 22, 42)


def test_show_protocols_all_of_a_session_not_up() -> None:
    text = (
        "Name       Proto      Table      State  Since         Info\n"
        "c_1 BGP   ---   start  2026-11-26 05:19:52  Active   Socket: Connection refused\n"
        "  BGP state:          Active\n"
        "    Neighbor address: 192.0.2.11\n"
        "    Last error:       Socket: Connection refused\n"
    )
    (s,) = parse_show_protocols_all(text)
    assert not s.established and s.bgp_state == "Active"
    assert s.last_error == "Socket: Connection refused" and s.exported == 0


def test_control_socket_reply_codes_and_continuations() -> None:
    r = parse_reply(["1002-a", " b", "1006-c", "0000 "])
    assert r.code == "0000" and r.lines == ("a", "b", "c", "")
    assert parse_reply(["9001 syntax error, unexpected END"]).code == "9001"


def test_reflector_yaml_errors_name_file_and_field() -> None:
    ok = "name: rr1\nipv4: 192.0.2.1/24\nclusterId: 244.0.0.1\n"
    cfg = parse_reflector_config(ok, "r.yaml")
    assert cfg.http.listen == "127.0.0.1:9098" and cfg.bird.work_dir == "/run/meshroute/reflector"
    with pytest.raises(ConfigError, match=r"r.yaml: asNumber: .*less than or equal to 4294967295"):
        parse_reflector_config(ok + "asNumber: 4294967296\n", "r.yaml")
    with pytest.raises(ConfigError, match=r"r.yaml: clusterId: .*not an IP address"):
        parse_reflector_config(ok.replace("244.0.0.1", "cluster-a"), "r.yaml")
    with pytest.raises(ConfigError, match=r"r.yaml: ipv4: .*prefix length"):
        parse_reflector_config(ok.replace("192.0.2.1/24", "192.0.2.1"), "r.yaml")
    with pytest.raises(ConfigError, match=r"r.yaml: bird.*errorWaitSeconds"):
        parse_reflector_config(ok + "bird: {errorWaitSeconds: [5, 1]}\n", "r.yaml")


def test_cli_refuses_a_bad_reflector_yaml(tmp_path: Path) -> None:
    p = tmp_path / "reflector.yaml"
    p.write_text("name: rr1\nipv4: 192.0.2.1/24\nclusterId: 244.0.0.1\nasNumber: 0\n")
    r = subprocess.run(
        [sys.executable, "-m", "meshroute", "reflector", "--config", str(p)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1
    assert f"{p}: asNumber: Input should be greater than or equal to 1" in r.stderr


@settings(max_examples=60, deadline=None)
@given(
    racks=st.lists(st.sampled_from(["r1", "r2", "r3"]), min_size=1, max_size=8),
    mesh=st.booleans(),
    peer_specs=st.lists(
        st.tuples(
            st.sampled_from([None, "rack == 'r1'", "rack != 'r2'", "!has(route-reflector)"]),
            st.sampled_from(["route-reflector == 'true'", "rack == 'r3'", "ip"]),
            st.booleans(),
        ),
        max_size=3,
    ),
)
def test_clients_equal_the_inversion_of_every_nodes_full_plan(
    racks: list[str], mesh: bool, peer_specs: list[tuple[str | None, str, bool]]
) -> None:
    """Planning each node with just the two records finds exactly the
    sessions the node's own full plan has towards this reflector."""
    nodes = {n.name: n for n in (ME, rr("rr2", "192.0.2.2"))}
    for i, rack in enumerate(racks):
        nodes[f"n{i}"] = node(f"n{i}", f"192.0.2.{20 + i}", rack)
    peers = {}
    for i, (sel, target, passive) in enumerate(peer_specs):
        body: dict[str, object] = {"passive": passive}
        if sel is not None:
            body["nodeSelector"] = sel
        if target == "ip":
            body.update(peerIP="192.0.2.1", asNumber=64512)
        else:
            body["peerSelector"] = target
        peers[f"p{i}"] = BGPPeerSpec.model_validate(body)
    cfg = BGPConfigurationSpec.model_validate({"nodeToNodeMeshEnabled": mesh})
    got = {
        s.node: (s.source, s.passive)
        for s in plan_sessions(ME, nodes, cfg, peers)
        # (a global BGPPeer may also select nodes as the reflector's own
        # peers: one-sided, as in Calico; not clients)
        if s.role == CLIENT
    }
    want = {}
    for n in nodes.values():
        if not n.name.startswith("n"):
            continue
        for p in plan_peers(n, nodes, cfg, peers):
            if p.address == IPAddress("192.0.2.1"):
                want[n.name] = (p.source, not p.passive)
    assert got == want


def dual(rec: NodeRecord, v6: str) -> NodeRecord:
    return replace(rec, ipv6=f"{v6}/64")


ME6 = dual(ME, "2001:db8::1")
NODES6 = {
    **NODES,
    "rr1": ME6,
    "rr2": dual(NODES["rr2"], "2001:db8::2"),
    "a": dual(NODES["a"], "2001:db8::11"),
}


def test_reflects_both_families_on_each_address_or_over_mp_bgp(tmp_path: Path) -> None:
    sessions = plan_sessions(ME6, NODES6, NO_MESH, {"to-rr": TO_RR})
    got = {(s.node, str(s.address), s.families, s.role) for s in sessions}
    assert got == {
        ("a", "192.0.2.11", (4,), CLIENT),
        ("a", "2001:db8::11", (6,), CLIENT),
        ("b", "192.0.2.12", (4,), CLIENT),  # no IPv6 address: IPv4 only
        ("rr2", "192.0.2.2", (4,), REFLECTOR),
        ("rr2", "2001:db8::2", (6,), REFLECTOR),
    }
    (a6,) = [s for s in sessions if s.address == IPAddress("2001:db8::11")]
    assert a6.protocol == "c_2001_db8__11" and a6.password == "s3cret"
    bird = plan_bird_config(
        router_id=IPAddress("192.0.2.1"),
        local_address=IPAddress("192.0.2.1"),
        local_address6=IPAddress("2001:db8::1"),
        local_as=64512,
        cluster_id="244.0.0.1",
        sessions=sessions,
    )
    text = render_bird(bird)
    assert "local 2001:db8::1 as 64512;" in text and "  ipv6 {" in text
    validate_config(text, tmp_path / "dual.conf")
    # without an IPv6 address of its own the reflector has no IPv6 session
    v4only = plan_bird_config(
        router_id=IPAddress("192.0.2.1"),
        local_address=IPAddress("192.0.2.1"),
        local_as=64512,
        cluster_id="244.0.0.1",
        sessions=sessions,
    )
    assert {n.address for n in v4only.neighbors} == {"192.0.2.11", "192.0.2.12", "192.0.2.2"}

    mp = NO_MESH.model_copy(update={"ipv6_transport": "MultiProtocol"})
    sessions = plan_sessions(ME6, NODES6, mp, {"to-rr": TO_RR})
    got = {(s.node, str(s.address), s.families) for s in sessions}
    assert got == {
        ("a", "192.0.2.11", (4, 6)),
        ("b", "192.0.2.12", (4,)),  # b has no IPv6 address: no IPv6 channel
        ("rr2", "192.0.2.2", (4, 6)),
    }
    text = render_bird(
        plan_bird_config(
            router_id=IPAddress("192.0.2.1"),
            local_address=IPAddress("192.0.2.1"),
            local_address6=IPAddress("2001:db8::1"),
            local_as=64512,
            cluster_id="244.0.0.1",
            sessions=sessions,
        )
    )
    validate_config(text, tmp_path / "mp.conf")
