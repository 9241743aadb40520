"""The etcd gateway's JSON both ways: requests in the shape etcd 3.4 reads,
answers decoded with etcd's habits (int64 strings, zero values left out),
errors sorted into what the store does next, and anything else refused as a
``StoreError`` naming the problem, never another exception."""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from datastore.etcd_codec import (
    Refused,
    Verdict,
    answer,
    kvs,
    lease_granted,
    lease_ttl,
    prefix_end,
    range_request,
    revision,
    stream_message,
    token,
    txn_request,
    txn_revision,
    watch_message,
    watch_request,
)
from datastore.port import Compare, Delete, KeyChange, Put, StoreError, UnchangedSince, Versioned


def b(s: bytes) -> str:
    return base64.b64encode(s).decode()


def test_prefix_end_covers_every_key_under_the_prefix() -> None:
    assert prefix_end(b"/a/") == b"/a0"
    assert prefix_end(b"a\xff") == b"b"
    assert prefix_end(b"a\xff\xff") == b"b"
    assert prefix_end(b"\xff") == b"\0"  # every key
    assert prefix_end(b"") == b"\0"
    assert range_request(b"/k") == {"key": b(b"/k")}
    assert range_request(b"/p/", prefix=True) == {"key": b(b"/p/"), "range_end": b(b"/p0")}


def test_txn_request_in_etcds_shape() -> None:
    req = txn_request(
        [Compare(b"/a", 0), UnchangedSince(b"/p/", 41)],
        [Put(b"/a", b"v"), Put(b"/l", b"", lease=7), Delete(b"/d")],
    )
    assert req == {
        "compare": [
            {"target": "MOD", "key": b(b"/a"), "mod_revision": "0"},
            {
                "target": "MOD",
                "key": b(b"/p/"),
                "range_end": b(b"/p0"),
                "mod_revision": "42",
                "result": "LESS",
            },
        ],
        "success": [
            {"request_put": {"key": b(b"/a"), "value": b(b"v")}},
            {"request_put": {"key": b(b"/l"), "value": "", "lease": "7"}},
            {"request_delete_range": {"key": b(b"/d")}},
        ],
    }
    watch = watch_request(b"/w/", 5)["create_request"]
    assert watch["start_revision"] == "5" and watch["fragment"] is True
    assert watch["range_end"] == b(b"/w0")


def test_answers_decoded_with_etcds_zero_values_left_out() -> None:
    body = json.dumps(
        {
            "header": {"revision": "12"},
            "kvs": [
                {"key": b(b"/a"), "mod_revision": "3", "value": b(b"1")},
                {"key": b(b"/b"), "mod_revision": "12"},  # empty value: left out
            ],
            "count": "2",
        }
    ).encode()
    resp = answer(200, body)
    assert revision(resp) == 12
    assert kvs(resp) == {b"/a": Versioned(b"1", 3), b"/b": Versioned(b"", 12)}
    assert kvs(answer(200, b'{"header":{"revision":"1"}}')) == {}  # no kvs: none
    assert txn_revision({"header": {"revision": "9"}, "succeeded": True}) == 9
    assert txn_revision({"header": {"revision": "9"}}) == 0  # a compare failed
    assert lease_granted({"ID": "7587862072383475734", "TTL": "30"}) == 7587862072383475734
    assert lease_ttl({"result": {"ID": "5", "TTL": "20"}}) == 20
    assert lease_ttl({"result": {"ID": "5"}}) == 0  # gone
    assert token({"token": "abc.12"}) == "abc.12"


@pytest.mark.parametrize(
    ("status", "body", "verdict", "words"),
    [
        (
            400,
            {"error": "x", "message": "etcdserver: request is too large", "code": 3},
            "TOO_LARGE",
            "too large",
        ),
        (
            429,
            {"message": "grpc: received message larger than max (3000018 vs. 2097152)", "code": 8},
            "TOO_LARGE",
            "larger than max",
        ),
        (
            400,
            {"message": "etcdserver: too many operations in txn request", "code": 3},
            "TOO_LARGE",
            "too many",
        ),
        (
            401,
            {"message": "etcdserver: invalid auth token", "code": 16},
            "LOG_IN",
            "invalid auth token",
        ),
        (503, {"message": "etcdserver: no leader", "code": 14}, "ELSEWHERE", "no leader"),
        (504, {"message": "etcdserver: request timed out", "code": 4}, "ELSEWHERE", "timed out"),
        (
            404,
            {"message": "etcdserver: requested lease not found", "code": 5},
            "FAIL",
            "lease not found",
        ),
        (
            400,
            {
                "message": "etcdserver: authentication failed, invalid user ID or password",
                "code": 3,
            },
            "FAIL",
            "authentication failed",
        ),
    ],
)
def test_errors_sorted_by_what_the_store_does_next(
    status: int, body: dict[str, object], verdict: str, words: str
) -> None:
    with pytest.raises(Refused) as e:
        answer(status, json.dumps(body).encode())
    assert e.value.verdict is Verdict[verdict]
    assert words in str(e.value)


def test_an_answer_that_is_not_the_gateways() -> None:
    with pytest.raises(Refused) as e:
        answer(502, b"<html>bad gateway</html>")
    assert e.value.verdict is Verdict.ELSEWHERE and e.value.code is None
    with pytest.raises(Refused) as e:
        answer(404, b"404 page not found\n")
    assert e.value.verdict is Verdict.FAIL and str(e.value) == "HTTP 404: 404 page not found"
    # a hostile message stays one bounded line in ours
    with pytest.raises(Refused) as e:
        answer(400, json.dumps({"message": "a\nb\r\x1b[31m" + "z" * 10_000, "code": 3}).encode())
    assert "\n" not in str(e.value) and "\x1b" not in str(e.value) and len(str(e.value)) <= 300


def test_watch_messages() -> None:
    created = watch_message(
        stream_message(b'{"result":{"header":{"revision":"3"},"created":true}}')
    )
    assert created.created and not created.canceled and created.last_revision == 0
    events = stream_message(
        json.dumps(
            {
                "result": {
                    "header": {"revision": "9"},
                    "events": [
                        {"kv": {"key": b(b"/a"), "value": b(b"1"), "mod_revision": "8"}},
                        {"type": "DELETE", "kv": {"key": b(b"/b"), "mod_revision": "9"}},
                        {"kv": {"key": b(b"/c"), "mod_revision": "9"}},  # put of b""
                    ],
                    "fragment": True,
                }
            }
        ).encode()
    )
    got = watch_message(events)
    assert got.last_revision == 9 and got.fragment
    assert got.changes == (
        KeyChange(b"/a", b"1", 8),
        KeyChange(b"/b", None, 9),
        KeyChange(b"/c", b"", 9),
    )
    with pytest.raises(StoreError, match="of type WEIRD"):
        watch_message({"events": [{"type": "WEIRD", "kv": {"key": b(b"/a")}}]})
    compacted = watch_message(
        stream_message(b'{"result":{"header":{},"canceled":true,"compact_revision":"3"}}')
    )
    assert compacted.canceled and compacted.compact_revision == 3
    with pytest.raises(Refused, match="invalid auth token") as e:
        stream_message(
            b'{"error":{"grpc_code":16,"http_code":401,"message":"etcdserver: invalid auth token"}}'
        )
    assert e.value.verdict is Verdict.LOG_IN


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"not json", "not JSON"),
        (b"[1, 2]", "not an object"),
        (b"\xff\xfe", "not JSON"),
        (b"[" * 100_000, "not JSON"),  # nesting deeper than the parser's recursion
        (b'{"header":{"revision":"twelve"}}', "revision"),
        (b'{"header":{"revision":true}}', "revision as bool"),
        (b'{"header":{"revision":1.5}}', "revision as float"),
        (b'{"kvs":[{"key":"!!!","mod_revision":"1"}]}', "not base64"),
        ('{"kvs":[{"key":"\u00e9t\u00e9","mod_revision":"1"}]}'.encode(), "not base64"),
        (b'{"kvs":[7]}', "not an object"),
        (b'{"kvs":{"key":"a"}}', "kvs as dict"),
        (b'{"token":"a\\nb"}', "no usable token"),
        (b'{"ID":"1","error":"etcdserver: lease already exists"}', "already exists"),
    ],
)
def test_what_is_not_etcds_answer_is_a_store_error(body: bytes, words: str) -> None:
    def decode_all(raw: bytes) -> None:
        resp = answer(200, raw)
        revision(resp)
        kvs(resp)
        if "token" in resp:
            token(resp)
        if "ID" in resp:
            lease_granted(resp)

    with pytest.raises(StoreError, match=words):
        decode_all(body)


def test_a_stream_message_without_a_result() -> None:
    with pytest.raises(StoreError, match="without a result"):
        stream_message(b'{"header":{}}')
    with pytest.raises(StoreError, match="not JSON"):
        stream_message(b'{"result":{"header":{}}')  # cut short


DECODERS: list[Callable[[int, bytes], object]] = [
    lambda status, raw: (kvs(answer(status, raw)), revision(answer(status, raw))),
    lambda status, raw: txn_revision(answer(status, raw)),
    lambda status, raw: lease_ttl(answer(status, raw)),
    lambda status, raw: token(answer(status, raw)),
    lambda status, raw: lease_granted(answer(status, raw)),
    lambda status, raw: watch_message(stream_message(raw)),
]


def decode_every_way(status: int, raw: bytes) -> None:
    for decode in DECODERS:
        with contextlib.suppress(StoreError):
            decode(status, raw)


@given(st.binary(max_size=300), st.integers(min_value=100, max_value=599))
def test_arbitrary_bytes_never_raise_anything_but_a_store_error(raw: bytes, status: int) -> None:
    decode_every_way(status, raw)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=20,
)


@given(JSON)
def test_arbitrary_json_never_raises_anything_but_a_store_error(value: object) -> None:
    for shape in (
        value,
        {"header": value, "kvs": value, "succeeded": value},
        {"kvs": [value], "token": value, "ID": value, "error": value},
        {"kvs": [{"key": value, "value": value, "mod_revision": value}]},
        {"result": {"events": value, "created": value, "compact_revision": value, "TTL": value}},
        {"result": {"events": [{"kv": value}]}},
        {"error": value},
    ):
        decode_every_way(200, json.dumps(shape).encode())
