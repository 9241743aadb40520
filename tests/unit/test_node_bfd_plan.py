"""The node's BFD decisions: sessions from profiles (mesh and BGPPeers,
single-hop on the node's subnet, multihop beyond), what a BFD change does
to a BGP session, and the node <-> daemon wire format."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from netaddr import IPAddress

from bgpd.bfd.packet import Diag, State
from bgpd.bfd.session import Timers
from bgpd.bfd.speaker import BfdChange, PeerSpec, SessionStatus
from bgpd.bfd.wire import (
    change_from_json,
    change_to_json,
    decode_sessions,
    encode_sessions,
    status_from_json,
    status_to_json,
)
from meshroute.node.bfd_plan import BfdVerdict, decide_bfd_change, plan_bfd_sessions
from meshroute.node.config import NodeConfig
from meshroute.peering import plan_peers
from meshroute.registry import NodeRecord
from meshroute.resources import BFDProfileSpec, BGPConfigurationSpec, BGPPeerSpec

NODES = {
    "a": NodeRecord("a", {}, ipv4="192.0.2.11/24"),
    "b": NodeRecord("b", {}, ipv4="192.0.2.12/24"),
    "c": NodeRecord("c", {}, ipv4="198.51.100.13/24"),
}
CONFIG = NodeConfig.model_validate({"nodeName": "a", "ipv4": "192.0.2.11/24"})
FAST = BFDProfileSpec.model_validate({"receiveInterval": 50, "transmitInterval": 100})


def test_mesh_profile_gives_every_mesh_peer_a_session_hop_by_subnet() -> None:
    conf = BGPConfigurationSpec.model_validate({"nodeToNodeMeshBFDProfile": "fast"})
    peers = plan_peers(NODES["a"], NODES, conf, {})
    got = plan_bfd_sessions(CONFIG, peers, {"fast": FAST})
    timers = Timers(100_000, 50_000, 3, passive=False, cpi=True)
    local = IPAddress("192.0.2.11")
    assert got == [
        PeerSpec(IPAddress("192.0.2.12"), timers, local, multihop=False),
        PeerSpec(IPAddress("198.51.100.13"), timers, local, multihop=True),
    ]


def test_peer_profile_missing_profile_and_no_profile() -> None:
    peers = {
        "tor": BGPPeerSpec.model_validate(
            {"peerIP": "192.0.2.1", "asNumber": 65001, "bfdProfile": "slow"}
        ),
        "gone": BGPPeerSpec.model_validate(
            {"peerIP": "192.0.2.2", "asNumber": 65001, "bfdProfile": "nowhere"}
        ),
        "plain": BGPPeerSpec.model_validate({"peerIP": "192.0.2.3", "asNumber": 65001}),
    }
    conf = BGPConfigurationSpec.model_validate({"nodeToNodeMeshEnabled": False})
    plans = plan_peers(NODES["a"], NODES, conf, peers)
    slow = BFDProfileSpec.model_validate({"passiveMode": True, "minimumTtl": 200})
    (only,) = plan_bfd_sessions(CONFIG, plans, {"slow": slow})
    assert only.peer == IPAddress("192.0.2.1") and only.timers.passive
    assert only.minimum_ttl == 200 and not only.multihop


def change(old: State, new: State, diag: int = 0, remote: int = 0) -> BfdChange:
    return BfdChange(IPAddress("192.0.2.1"), False, old, new, diag, remote)


@pytest.mark.parametrize(
    ("c", "verdict"),
    [
        (change(State.DOWN, State.INIT), None),
        (change(State.INIT, State.UP), None),
        (change(State.INIT, State.DOWN, 1), None),  # never was Up: not a failure of a session
        (change(State.UP, State.ADMIN_DOWN, 7), None),
        (
            change(State.UP, State.DOWN, Diag.CONTROL_DETECTION_TIME_EXPIRED),
            BfdVerdict(True, "BFD down: control detection time expired"),
        ),
        (
            change(State.UP, State.DOWN, Diag.NEIGHBOR_SIGNALED_DOWN, 1),
            BfdVerdict(True, "BFD down: peer signaled down (control detection time expired)"),
        ),
        (
            change(State.UP, State.DOWN, Diag.NEIGHBOR_SIGNALED_DOWN, Diag.ADMINISTRATIVELY_DOWN),
            BfdVerdict(False, "BFD: peer set administratively down"),
        ),
    ],
)
def test_what_a_bfd_change_does_to_bgp(c: BfdChange, verdict: BfdVerdict | None) -> None:
    assert decide_bfd_change(c) == verdict


ips = st.builds(lambda a: IPAddress(a, 4), st.integers(1, 2**32 - 1)) | st.builds(
    lambda a: IPAddress(a, 6), st.integers(1, 2**128 - 1)
)
specs = st.builds(
    PeerSpec,
    ips,
    st.builds(
        Timers,
        st.integers(1, 2**32 - 1),
        st.integers(1, 2**32 - 1),
        st.integers(1, 255),
        st.booleans(),
        st.booleans(),
    ),
    st.none() | ips,
    st.booleans(),
    st.integers(1, 255),
)


@given(st.lists(specs, max_size=5))
def test_sessions_round_trip(got: list[PeerSpec]) -> None:
    line = encode_sessions(got)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert decode_sessions(line) == got


@given(st.sampled_from(State), st.sampled_from(State), st.integers(0, 31), st.integers(0, 31))
def test_changes_and_status_round_trip(old: State, new: State, d: int, rd: int) -> None:
    c = BfdChange(IPAddress("2001:db8::1"), True, old, new, d, rd)
    assert change_from_json(json.loads(json.dumps(change_to_json(c)))) == c
    s = SessionStatus(c.peer, True, new, d, rd, 1.5, 300.0, 900.0, True, 3, 4, d, 2.5)
    assert status_from_json(json.loads(json.dumps(status_to_json(s)))) == s


@pytest.mark.parametrize(
    "line",
    [
        b"[]",
        b'{"sessions": 1}',
        b'{"sessions": [1]}',
        b'{"sessions": [{"peer": "300.1.1.1", "txUs": 1, "rxUs": 1, "mult": 3}]}',
        b'{"sessions": [{"peer": "192.0.2.1", "txUs": 0, "rxUs": 1, "mult": 3}]}',
        b'{"sessions": [{"peer": "192.0.2.1", "txUs": 1, "rxUs": 1, "mult": true}]}',
        b'{"sessions": [{"peer": 7, "txUs": 1, "rxUs": 1, "mult": 3}]}',
        b"\xff\xfe",
    ],
)
def test_bad_session_lines_raise_value_error(line: bytes) -> None:
    with pytest.raises(ValueError):
        decode_sessions(line)
