"""The ExaBGP codec against lines captured from a real ExaBGP 5 talking to
BIRD 2 and GoBGP (tests/fixtures/exabgp/, re-captured with
``python -m tests.interop.capture_exabgp``), plus Hypothesis on bad input."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from netaddr import IPAddress, IPNetwork

from bgpd.codec import (
    decode_line,
    decode_lines,
    encode_batches,
    encode_bulk,
    encode_command,
    parse_command,
)
from bgpd.model import (
    AckEvent,
    Announce,
    EorEvent,
    ExabgpNotice,
    MalformedLine,
    NotificationEvent,
    OpenEvent,
    Origin,
    RouteRefresh,
    SendEor,
    SessionState,
    StateEvent,
    Teardown,
    UpdateEvent,
    Withdraw,
)

FIX = Path(__file__).parent.parent / "fixtures" / "exabgp"
BIRD4, BIRD6, GOBGP = IPAddress("192.0.2.2"), IPAddress("2001:db8:12::2"), IPAddress("192.0.2.6")


def captured() -> list[str]:
    return [ln for ln in (FIX / "session.jsonl").read_text().splitlines() if ln.strip()]


def test_every_captured_line_decodes_to_a_real_event() -> None:
    events = decode_lines(captured())
    assert events, "fixture is empty"
    bad = [e for e in events if isinstance(e, MalformedLine)]
    assert bad == []


def test_states_opens_and_eors_from_bird_and_gobgp() -> None:
    events = decode_lines(captured())
    ups = {
        e.peer for e in events if isinstance(e, StateEvent) and e.state is SessionState.ESTABLISHED
    }
    assert ups == {BIRD4, BIRD6, GOBGP}
    opens = {e.peer: e for e in events if isinstance(e, OpenEvent)}
    assert opens[BIRD4].router_id == IPAddress("192.0.2.2")
    assert opens[BIRD4].peer_as == 64513 and opens[GOBGP].peer_as == 64514
    eors = {(e.peer, e.family) for e in events if isinstance(e, EorEvent)}
    assert {(BIRD4, "ipv4 unicast"), (BIRD6, "ipv6 unicast"), (GOBGP, "ipv4 unicast")} <= eors


def test_updates_carry_prefixes_next_hops_and_attributes() -> None:
    events = decode_lines(captured())
    ann = {(e.peer, p): a for e in events if isinstance(e, UpdateEvent) for p, a in e.announced}
    bird = ann[(BIRD4, IPNetwork("203.0.113.0/26"))]
    assert bird.next_hop == BIRD4 and bird.as_path == (64513,) and bird.origin is Origin.IGP
    v6 = ann[(BIRD6, IPNetwork("2001:db8:100::/48"))]
    assert v6.next_hop == BIRD6
    gob = ann[(GOBGP, IPNetwork("198.51.100.0/24"))]
    assert gob.med == 10 and gob.communities == ((64514, 7),) and gob.origin is Origin.INCOMPLETE
    withdrawn = {(e.peer, p) for e in events if isinstance(e, UpdateEvent) for p in e.withdrawn}
    assert withdrawn == {
        (GOBGP, IPNetwork("198.51.100.0/24")),
        (BIRD4, IPNetwork("203.0.113.64/26")),
    }


def test_notification_then_down_with_reason() -> None:
    events = decode_lines(captured())
    n = [e for e in events if isinstance(e, NotificationEvent)]
    assert n == [NotificationEvent(BIRD4, 6, 2, "0x")]
    downs = [e for e in events if isinstance(e, StateEvent) and e.state is SessionState.DOWN]
    assert downs and downs[0].peer == BIRD4 and "(6,2)" in downs[0].reason


def test_acks_one_per_command_and_the_bad_command_is_an_error() -> None:
    commands = (FIX / "commands.txt").read_text().splitlines()
    acks = [e for e in decode_lines(captured()) if isinstance(e, AckEvent)]
    assert len(acks) == len(commands)
    assert [a.ok for a in acks] == [c != "this is not a command" for c in commands]


def test_captured_commands_are_what_the_encoder_writes() -> None:
    commands = (FIX / "commands.txt").read_text().splitlines()
    for text in commands:
        cmd = parse_command(text)
        if cmd is not None:
            assert encode_command(cmd) == text
    assert (
        commands[2]
        == encode_bulk(
            [
                Announce(IPNetwork(p), IPAddress("192.0.2.1"), ((64512, 100), (64512, 200)))
                for p in ("10.244.2.0/26", "10.244.2.64/26", "10.244.2.128/26")
            ]
        )[0]
    )


def test_teardown_is_a_bfd_down_cease_by_default() -> None:
    assert encode_command(Teardown(IPAddress("192.0.2.2"))) == "neighbor 192.0.2.2 teardown 10"


def received_update(peer_as: int, update: dict[str, object]) -> str:
    """One ExaBGP ``update`` line from 192.0.2.9 carrying ``update``."""
    return json.dumps(
        {
            "type": "update",
            "neighbor": {
                "address": {"local": "192.0.2.1", "peer": "192.0.2.9"},
                "asn": {"local": 64512, "peer": peer_as},
                "direction": "receive",
                "message": {"update": update},
            },
        }
    )


def test_ipv4_update_with_reflector_attributes() -> None:
    attribute = {
        "origin": "igp",
        "local-preference": 200,
        "originator-id": "192.0.2.33",
        "cluster-list": ["192.0.2.9"],
    }
    announce = {"ipv4 unicast": {"192.0.2.33": [{"nlri": "10.244.7.0/26"}]}}
    e = decode_line(received_update(64512, {"attribute": attribute, "announce": announce}))
    assert isinstance(e, UpdateEvent)
    ((_p, a),) = e.announced
    assert a.local_pref == 200 and a.originator_id == IPAddress("192.0.2.33")
    assert a.cluster_list == (IPAddress("192.0.2.9"),) and a.as_path == ()


def test_compact_nlri_decode_as_the_object_form_does() -> None:
    """``exabgp_api_compact`` (the speaker's setting) writes each prefix as a
    string; the object form stays understood (add-path keeps it)."""

    def update(item: Callable[[str], object]) -> str:
        return received_update(
            64513,
            {
                "attribute": {"origin": "igp"},
                "announce": {"ipv4 unicast": {"192.0.2.9": [item("10.244.7.0/26")]}},
                "withdraw": {"ipv4 unicast": [item("10.244.8.64/26")]},
            },
        )

    compact = decode_line(update(lambda p: p))
    assert compact == decode_line(update(lambda p: {"nlri": p}))
    assert isinstance(compact, UpdateEvent)
    assert [p for p, _ in compact.announced] == [IPNetwork("10.244.7.0/26")]
    assert compact.withdrawn == (IPNetwork("10.244.8.64/26"),)
    assert isinstance(decode_line(update(lambda p: 7)), MalformedLine)


def test_ipv6_update_with_a_link_local_next_hop_keeps_the_global_one() -> None:
    """BIRD on a shared link sends global + link-local next hops; ExaBGP
    lists the prefix under each. Alone, a link-local next hop is kept."""

    def update(*hops: str) -> str:
        nlri = [{"nlri": "fd00:10::ffc0/122"}]
        body = {
            "attribute": {"origin": "igp"},
            "announce": {"ipv6 unicast": {h: nlri for h in hops}},
        }
        neighbor = {
            "address": {"local": "2001:db8::11", "peer": "2001:db8::21"},
            "asn": {"local": 64512, "peer": 65020},
            "direction": "receive",
            "message": {"update": body},
        }
        return json.dumps({"type": "update", "neighbor": neighbor})

    e = decode_line(update("2001:db8::21", "fe80::1"))
    assert isinstance(e, UpdateEvent)
    assert [(str(p), str(a.next_hop)) for p, a in e.announced] == [
        ("fd00:10::ffc0/122", "2001:db8::21")
    ]
    e = decode_line(update("fe80::1"))
    assert isinstance(e, UpdateEvent)
    assert [str(a.next_hop) for _p, a in e.announced] == ["fe80::1"]


def test_some_bad_lines() -> None:
    for line in (
        "",
        "{",
        "[]",
        '{"type": "update"}',
        '{"type": "state", "neighbor": {"address": {"peer": "x"}, "state": "up"}}',
        '{"type": "notification", "notification": 7}',
        b"\xff\xfe",
        '{"type": "update", "neighbor": {"address": {"peer": "192.0.2.2"}, "asn": {"peer": 1},'
        ' "message": {"update": {"announce": {"ipv4 unicast": {"192.0.2.2": [{"nlri": "1"}]}}}}}}',
    ):
        assert isinstance(decode_line(line), MalformedLine), line


def test_exabgp_shutdown_is_a_notice_not_a_malformed_line() -> None:
    line = '{"exabgp": "5.0.0", "type": "notification", "notification": "shutdown"}'
    assert decode_line(line) == ExabgpNotice("shutdown")
    # the text ExaBGP writes before acking a reload command through the API
    assert decode_line("reload in progress\n") == ExabgpNotice("reload in progress")


# ---- Hypothesis --------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "type",
                    "neighbor",
                    "address",
                    "peer",
                    "asn",
                    "state",
                    "message",
                    "update",
                    "announce",
                    "withdraw",
                    "nlri",
                    "attribute",
                    "eor",
                    "afi",
                    "safi",
                    "open",
                    "router_id",
                    "direction",
                    "notification",
                    "code",
                    "subcode",
                    "ipv4 unicast",
                ]
            )
            | st.text(max_size=8),
            children,
            max_size=5,
        )
    ),
    max_leaves=25,
)


@settings(max_examples=300)
@given(st.text(max_size=200) | st.binary(max_size=200))
def test_arbitrary_text_never_raises(line: str | bytes) -> None:
    e = decode_line(line)
    stripped = line.strip()
    if stripped in ("done", b"done"):
        assert e == AckEvent(True)
    elif isinstance(e, AckEvent):
        assert stripped.startswith("error" if isinstance(stripped, str) else b"error")
    elif isinstance(e, ExabgpNotice):  # ExaBGP's own words, e.g. "shutdown in progress"
        assert e.text in ("reload in progress", "restart in progress", "shutdown in progress")
    else:
        # random text is at best a JSON scalar, never a neighbour message
        assert isinstance(e, MalformedLine)


@settings(max_examples=300)
@given(json_values)
def test_arbitrary_json_never_raises(v: object) -> None:
    e = decode_line(json.dumps(v))
    if not (isinstance(v, dict) and isinstance(v.get("neighbor"), dict)):
        assert isinstance(e, MalformedLine)
    else:
        kinds = (MalformedLine, StateEvent, OpenEvent, UpdateEvent, EorEvent, NotificationEvent)
        assert isinstance(e, kinds)


@settings(max_examples=200)
@given(st.integers(min_value=0, max_value=len(captured()) - 1), st.data())
def test_mutilated_captured_lines_never_raise(i: int, data: st.DataObject) -> None:
    line = captured()[i]
    cut = data.draw(st.integers(min_value=0, max_value=len(line) - 1))
    e = decode_line(line[:cut])
    # a truncated JSON object is never valid JSON (the closing brace is gone)
    assert isinstance(e, MalformedLine) or line[:cut].strip() in ("done", "")


v4nets = st.builds(
    lambda a, n: IPNetwork(f"{IPAddress(a, 4)}/{n}").cidr,
    st.integers(0, 2**32 - 1),
    st.integers(0, 32),
)
v6nets = st.builds(
    lambda a, n: IPNetwork(f"{IPAddress(a, 6)}/{n}").cidr,
    st.integers(0, 2**128 - 1),
    st.integers(0, 128),
)
addrs = st.builds(lambda a: IPAddress(a, 4), st.integers(0, 2**32 - 1))
communities = st.lists(st.tuples(st.integers(0, 65535), st.integers(0, 65535)), max_size=3).map(
    tuple
)
commands = st.one_of(
    st.builds(
        Announce,
        v4nets | v6nets,
        st.none() | addrs,
        communities,
        st.none() | st.integers(0, 2**32 - 1),
        st.none() | addrs,
    ),
    st.builds(Withdraw, v4nets | v6nets, st.none() | addrs),
    st.builds(SendEor, st.sampled_from(["ipv4 unicast", "ipv6 unicast"]), st.none() | addrs),
    st.builds(RouteRefresh, st.sampled_from(["ipv4 unicast", "ipv6 unicast"]), st.none() | addrs),
    st.builds(Teardown, addrs, st.integers(1, 255)),
)


@given(commands)
def test_command_text_round_trips(cmd: object) -> None:
    text = encode_command(cmd)  # type: ignore[arg-type]
    assert "\n" not in text
    assert parse_command(text) == cmd


def _carried(lines: list[str], verb: str) -> list[str]:
    """The prefixes the lines tell ExaBGP to announce, or to withdraw."""
    out = []
    for ln in lines:
        body = ln.split(" ", 2)[2] if ln.startswith("neighbor ") else ln
        if body.startswith(f"{verb} attributes "):
            out += body.split(" nlri ")[1].split()
        elif body.startswith(f"{verb} route "):
            out.append(str(parse_command(ln).prefix))  # type: ignore[union-attr]
    return out


@given(st.lists(commands, max_size=40), st.integers(1, 7))
def test_bulk_carries_every_prefix_exactly_once(cmds: list[object], chunk: int) -> None:
    lines = encode_bulk(cmds, chunk=chunk)  # type: ignore[arg-type]
    for verb, kind in (("announce", Announce), ("withdraw", Withdraw)):
        want = [str(c.prefix) for c in cmds if isinstance(c, kind)]  # type: ignore[attr-defined]
        assert sorted(_carried(lines, verb)) == sorted(want)
    routes = re.compile(r"(announce|withdraw) (attributes|route) ")
    others = [ln for ln in lines if not routes.search(ln)]
    assert others == [encode_command(c) for c in cmds if not isinstance(c, Announce | Withdraw)]  # type: ignore[arg-type]
    for ln in lines:
        if "nlri" in ln:
            assert len(ln.split(" nlri ")[1].split()) <= chunk


@given(st.lists(commands, max_size=40), st.integers(1, 7))
def test_batches_keep_every_command_once_and_in_its_segment(cmds: list, chunk: int) -> None:
    """Announcements, and withdrawals, are only regrouped within a run of
    their own kind, so a withdrawal planned before an announcement is still
    sent before it; a line carries one neighbour's, one family's."""
    segment: dict[int, int] = {}
    seg = 0
    last: type | None = None
    for c in cmds:
        if not isinstance(c, Announce | Withdraw) or type(c) is not last:
            seg += 1
        segment[id(c)] = seg
        last = type(c) if isinstance(c, Announce | Withdraw) else None
    batches = encode_batches(cmds, chunk)
    flat = [c for _line, cs in batches for c in cs]
    assert sorted(map(id, flat)) == sorted(map(id, cmds))
    segs = [segment[id(c)] for c in flat]
    assert segs == sorted(segs)
    for line, cs in batches:
        if len(cs) == 1:
            assert line == encode_command(cs[0])
        else:
            assert len({(type(c), c.neighbor, c.prefix.version) for c in cs}) == 1


@given(st.integers(0, 2**32 - 1), st.integers(0, 32))
def test_ipv4_prefix_fast_path_agrees_with_netaddr(addr: int, plen: int) -> None:
    text = f"{IPAddress(addr, 4)}/{plen}"
    line = json.dumps(
        {
            "type": "update",
            "neighbor": {
                "address": {"peer": "192.0.2.2"},
                "asn": {"peer": 64513},
                "message": {"update": {"withdraw": {"ipv4 unicast": [{"nlri": text}]}}},
            },
        }
    )
    e = decode_line(line)
    assert isinstance(e, UpdateEvent)
    assert e.withdrawn == (IPNetwork(text).cidr,)
    assert e.withdrawn[0].version == 4
