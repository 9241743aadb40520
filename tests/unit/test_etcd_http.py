"""HTTP/1.1 framing for the etcd client, and what it does with answers etcd
would never send: the pure rules alone, then a real ``Connection`` and a
real ``EtcdStore`` against a loopback server that answers with exactly the
bytes a test gives (truncated chunks, lines that are not JSON or too long, a
connection closed while idle). Every one ends as a ``StoreError`` (or a
resumed watch), never another exception."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest

from datastore.etcd import EtcdStore
from datastore.etcd_http import (
    Broken,
    Connection,
    LineSplitter,
    encode_request,
    parse_chunk_size,
    parse_head,
)
from datastore.port import StoreError


def test_head_parsed_and_framing_decided() -> None:
    h = parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\nX-A: 1\r\nx-a: 2\r\n\r\n")
    assert (h.status, h.length, h.chunked, h.keeps_alive) == (200, 12, False, True)
    assert h.headers["x-a"] == "1,2"
    chunked = parse_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n")
    assert chunked.chunked and chunked.length is None and chunked.keeps_alive
    until_close = parse_head(b"HTTP/1.0 400 Bad Request\r\n\r\n")
    assert until_close.length is None and not until_close.keeps_alive
    closing = parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    assert not closing.keeps_alive
    assert parse_head(b"HTTP/1.1 204 No Content\r\n\r\n").length == 0  # no body by rule


@pytest.mark.parametrize(
    "raw",
    [
        b"SSH-2.0-OpenSSH_9.2\r\n\r\n",
        b"HTTP/2 200\r\n\r\n",
        b"HTTP/1.1 2xx OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n : empty name\r\n\r\n",
    ],
)
def test_a_head_that_is_not_http(raw: bytes) -> None:
    with pytest.raises(Broken):
        parse_head(raw)


@pytest.mark.parametrize("value", ["-1", "12, 13", "1e3", "9" * 30, ""])
def test_a_bad_content_length(value: str) -> None:
    with pytest.raises(Broken, match="Content-Length"):
        _ = parse_head(f"HTTP/1.1 200 OK\r\nContent-Length: {value}\r\n\r\n".encode()).length


def test_chunk_sizes() -> None:
    assert parse_chunk_size(b"1a\r\n") == 26
    assert parse_chunk_size(b"FF;name=value\r\n") == 255
    assert parse_chunk_size(b"0\r\n") == 0
    for bad in (b"\r\n", b"-1\r\n", b"zz\r\n", b"1" * 17 + b"\r\n", b"0x10\r\n"):
        with pytest.raises(Broken, match="chunk size"):
            parse_chunk_size(bad)


def test_lines_split_across_pieces_and_bounded() -> None:
    s = LineSplitter(max_line=10)
    assert s.feed(b'{"a"') == []
    assert s.feed(b':1}\n\n{"b"') == [b'{"a":1}']
    assert s.feed(b":2}\n") == [b'{"b":2}']
    assert s.feed(b"tail") == [] and s.finish() == [b"tail"]
    with pytest.raises(Broken, match="over 10 bytes"):
        LineSplitter(max_line=10).feed(b"x" * 11 + b"\n")
    s = LineSplitter(max_line=10)
    s.feed(b"x" * 6)
    with pytest.raises(Broken, match="over 10 bytes"):
        s.feed(b"x" * 6)  # no newline yet: the partial line alone is too long


def test_a_header_value_cannot_smuggle_a_line() -> None:
    assert encode_request("h:1", "/v3/kv/range", b"{}", {"Authorization": "t.1"}).startswith(
        b"POST /v3/kv/range HTTP/1.1\r\nHost: h:1\r\n"
    )
    with pytest.raises(StoreError, match="line break"):
        encode_request("h:1", "/p", b"{}", {"Authorization": "t\r\nX-Evil: 1"})


# ---- a loopback server that answers with a test's bytes ---------------------

Answer = Callable[[str, bytes], bytes | None]  # (path, body) -> raw answer; None: hang up


@dataclass
class Fake:
    answer: Answer
    port: int = 0
    requests: list[tuple[str, bytes]] = field(default_factory=list)
    close_after_answer: bool = False


@contextlib.asynccontextmanager
async def fake_etcd(answer: Answer, *, close_after_answer: bool = False) -> AsyncIterator[Fake]:
    fake = Fake(answer, close_after_answer=close_after_answer)
    handlers: dict[asyncio.Task[None], asyncio.StreamWriter] = {}

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers[task] = writer
        try:
            while True:
                request_line, *fields = (await reader.readuntil(b"\r\n\r\n")).split(b"\r\n")
                path = request_line.split()[1].decode()
                length = next(
                    int(f[15:]) for f in fields if f.lower().startswith(b"content-length:")
                )
                body = await reader.readexactly(length)
                fake.requests.append((path, body))
                raw = fake.answer(path, body)
                if raw is None:
                    break
                writer.write(raw)
                await writer.drain()
                if fake.close_after_answer:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    fake.port = server.sockets[0].getsockname()[1]
    try:
        yield fake
    finally:
        server.close()
        for writer in handlers.values():  # each handler then ends on its own
            writer.close()
        await asyncio.gather(*handlers)
        await server.wait_closed()


def ok(body: bytes, *, chunked: bool = False) -> bytes:
    if not chunked:
        return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + body


def chunk(data: bytes) -> bytes:
    return b"%x\r\n" % len(data) + data + b"\r\n"


async def exchange(fake: Fake, **kw: int) -> tuple[Connection, bytes]:
    conn = await Connection.open("127.0.0.1", fake.port, None)
    try:
        head = await conn.send("/v3/kv/range", b"{}", {})
        return conn, await conn.read_body(head, **kw)
    except BaseException:
        conn.close()
        raise


async def test_a_chunked_body_with_trailers_and_a_kept_alive_connection() -> None:
    body = chunk(b'{"header":') + chunk(b'{"revision":"7"}}') + b"0\r\nX-Trailer: 1\r\n\r\n"
    async with fake_etcd(lambda p, b: ok(body, chunked=True)) as fake:
        conn, got = await exchange(fake)
        assert got == b'{"header":{"revision":"7"}}' and conn.reusable
        head = await conn.send("/v3/kv/range", b"{}", {})
        assert await conn.read_body(head) == got  # the same connection, a second request
        conn.close()


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (ok(chunk(b'{"header":') + b"40\r\nshort", chunked=True), "cut the response short"),
        (ok(b"zz\r\n{}\r\n0\r\n\r\n", chunked=True), "chunk size"),
        (ok(b"2\r\n{}XX0\r\n\r\n", chunked=True), "without its CRLF"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{}", "cut the response short"),
        (b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n", "head over"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n" + b"x" * 5000, "over 1000 bytes"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 9999999999999999999\r\n\r\n", "Content-Length"),
        (ok(b"ffffffffffff\r\n" + b"x" * 2000, chunked=True), "over 1000 bytes"),
        (b"HTTP/1.1 200", "cut its answer short"),
    ],
)
async def test_a_hostile_answer_is_broken(raw: bytes, words: str) -> None:
    async with fake_etcd(lambda p, b: raw, close_after_answer=True) as fake:
        with pytest.raises(Broken, match=words):
            await exchange(fake, limit=1000)


async def test_a_connection_closed_before_any_answer_says_so() -> None:
    async with fake_etcd(lambda p, b: None) as fake:
        with pytest.raises(Broken, match="without answering") as e:
            await exchange(fake)
        assert e.value.before_response


# ---- the store on top ------------------------------------------------------

RANGE = json.dumps({"header": {"revision": "5"}, "kvs": [{"key": "L2s=", "mod_revision": "4"}]})


async def test_a_kept_alive_connection_etcd_closed_is_replaced_unseen() -> None:
    # the server closes after each answer, without saying so: the pooled
    # connection is dead when the second call takes it
    async with fake_etcd(lambda p, b: ok(RANGE.encode()), close_after_answer=True) as fake:
        store = EtcdStore([f"127.0.0.1:{fake.port}"], timeout=2)
        try:
            assert (await store.get(b"/k")) is not None
            await asyncio.sleep(0.05)
            got = await store.get(b"/k")
            assert got is not None and got.mod_revision == 4
            assert len(fake.requests) == 2
        finally:
            await store.close()


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (ok(b"<html>hello</html>"), "not JSON"),
        (ok(b'{"kvs":[{"key":"%%%"}]}'), "not base64"),
        (ok(b"[1,2,3]"), "not an object"),
        (b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 3\r\n\r\nbye", "HTTP 503: bye"),
    ],
)
async def test_the_store_turns_hostile_answers_into_store_errors(raw: bytes, words: str) -> None:
    async with fake_etcd(lambda p, b: raw) as fake:
        store = EtcdStore([f"127.0.0.1:{fake.port}"], timeout=2)
        try:
            with pytest.raises(StoreError, match=words):
                await store.get(b"/k")
        finally:
            await store.close()


def watch_stream(*lines: bytes) -> bytes:
    return ok(b"".join(chunk(x + b"\n") for x in lines), chunked=True)


CREATED = b'{"result":{"header":{"revision":"5"},"created":true}}'


@pytest.mark.parametrize(
    "after_created",
    [
        b"this is not json",
        b'{"result":' + b" " * 20_000_000 + b"}",  # a line over the bound
        b'{"result":{"events":[{"kv":{"mod_revision":"six"}}]}}',
        b'{"error":{"grpc_code":14,"message":"etcdserver: no leader"}}',
        b'{"result":{"canceled":true,"cancel_reason":"who knows"}}',
    ],
)
async def test_a_watch_resumes_after_a_hostile_message(after_created: bytes) -> None:
    """What was missed is unknown: the prefix is listed again, its revision
    yielded, and the watch goes on from there."""
    answers = {
        "/v3/watch": [watch_stream(CREATED, after_created), watch_stream(CREATED)],
        "/v3/kv/range": [ok(b'{"header":{"revision":"9"}}')],
    }

    async with fake_etcd(lambda p, b: answers[p].pop(0) if answers[p] else None) as fake:
        store = EtcdStore([f"127.0.0.1:{fake.port}"], timeout=2)  # the second stream stays open
        stream = store.changes(b"/w/", 5)
        try:
            assert await asyncio.wait_for(anext(stream), 5) == 9
            following = asyncio.ensure_future(anext(stream))  # watches again
            for _ in range(100):
                if len(fake.requests) == 3:
                    break
                await asyncio.sleep(0.01)
            assert [p for p, _ in fake.requests] == ["/v3/watch", "/v3/kv/range", "/v3/watch"]
            assert json.loads(fake.requests[2][1])["create_request"]["start_revision"] == "10"
            assert not following.done()
            following.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await following
        finally:
            await stream.aclose()  # type: ignore[attr-defined]
            await store.close()


async def test_a_compacted_watch_relists_and_watches_from_the_listing() -> None:
    answers = {
        "/v3/watch": [
            watch_stream(CREATED, b'{"result":{"canceled":true,"compact_revision":"40"}}'),
            watch_stream(CREATED),
        ],
        "/v3/kv/range": [ok(b'{"header":{"revision":"50"}}')],
    }

    async with fake_etcd(lambda p, b: answers[p].pop(0)) as fake:
        store = EtcdStore([f"127.0.0.1:{fake.port}"], timeout=2)
        stream = store.changes(b"/w/", 5)
        try:
            assert await asyncio.wait_for(anext(stream), 5) == 50
            second = asyncio.ensure_future(anext(stream))
            await asyncio.sleep(0.3)
            assert not second.done()  # no resume tick: nothing broke
            second.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await second
            watches = [json.loads(b) for p, b in fake.requests if p == "/v3/watch"]
            assert [w["create_request"]["start_revision"] for w in watches] == ["6", "51"]
        finally:
            await stream.aclose()  # type: ignore[attr-defined]
            await store.close()
