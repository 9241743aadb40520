"""sd_notify over a real datagram socket, the HTTP endpoint's routing and
its fresh reads."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

import pytest
from netaddr import IPAddress

from meshroute.node.readiness import decide_readiness
from meshroute.runtime import http
from meshroute.runtime.http import Endpoints, Health, route, serve_http
from meshroute.runtime.systemd import Notifier


def test_notify_reaches_a_real_notify_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(path)
        s.settimeout(2)
        n = Notifier(
            {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "20000000", "WATCHDOG_PID": str(os.getpid())}
        )
        assert n.enabled and n.watchdog_interval_s == 10.0
        assert n.notify("READY=1", "STATUS=serving")
        assert s.recv(4096) == b"READY=1\nSTATUS=serving"
        assert n.notify("WATCHDOG=1")
        assert s.recv(4096) == b"WATCHDOG=1"


def test_notify_never_waits_for_a_receiver_that_does_not_read(tmp_path: Path) -> None:
    """The node's event loop sends the watchdog pings: a full receiver queue
    (a test's socket nobody reads any more) must drop them, not block. It
    froze a node's HTTP answers once, and with them `meshroute status`."""
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(path)
        n = Notifier({"NOTIFY_SOCKET": path})
        sent = [n.notify("WATCHDOG=1") for _ in range(200)]  # far past any queue
        assert sent[0] and not sent[-1]
        s.settimeout(2)
        assert s.recv(4096) == b"WATCHDOG=1"
        assert n.notify("STATUS=read again")  # room again: delivered


def test_notify_without_systemd_and_watchdog_for_another_pid() -> None:
    assert not Notifier({}).notify("READY=1")
    assert Notifier({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}).watchdog_interval_s is None
    assert Notifier({"NOTIFY_SOCKET": "/nonexistent/sock"}).notify("READY=1") is False


def test_http_routes() -> None:
    ep = Endpoints(
        liveness=lambda: Health(True, "alive"),
        readiness=lambda: Health(False, "peer 192.0.2.1 not established"),
        metrics=lambda: b"meshroute_up 1\n",
        status=lambda: {"peers": []},
    )
    assert route(ep, "GET", "/liveness").startswith(b"HTTP/1.0 200 OK")
    ready = route(ep, "GET", "/readiness")
    assert ready.startswith(b"HTTP/1.0 503") and ready.endswith(b"not established\n")
    metrics = route(ep, "GET", "/metrics")
    assert b"\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n" in metrics
    assert metrics.endswith(b"meshroute_up 1\n")
    assert route(ep, "GET", "/status?x=1").endswith(b'{"peers": []}')
    assert route(ep, "POST", "/liveness").startswith(b"HTTP/1.0 405")
    assert route(ep, "GET", "/nope").startswith(b"HTTP/1.0 404")


def test_readiness_rule() -> None:
    a, b = IPAddress("192.0.2.1"), IPAddress("192.0.2.2")
    assert not decide_readiness(False, [a], [a], 5).ok
    assert decide_readiness(True, [], [], 5).ok
    early = decide_readiness(True, [a, b], [a], 5)
    assert not early.ok and "192.0.2.2" in early.reason
    assert decide_readiness(True, [a, b], [a, b], 5).ok
    assert decide_readiness(True, [a, b], [a], 120).ok  # later: one is enough
    assert not decide_readiness(True, [a, b], [], 120).ok
    assert not decide_readiness(True, [a], [b], 120).ok  # b is not a configured peer


async def test_status_and_metrics_are_read_fresh_liveness_is_not() -> None:
    """A process whose /status mirrors another daemon refreshes that view
    before answering /status and /metrics, never before /liveness."""
    reads = 0

    async def refresh() -> None:
        nonlocal reads
        await asyncio.sleep(0)
        reads += 1

    ep = Endpoints(
        liveness=lambda: Health(True, "alive"),
        readiness=lambda: Health(True, "ready"),
        metrics=lambda: f"reads {reads}\n".encode(),
        status=lambda: {"reads": reads},
        refresh=refresh,
    )
    server = await serve_http(ep, "127.0.0.1:0")
    port = server.sockets[0].getsockname()[1]

    async def get(path: str) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET {path} HTTP/1.0\r\n\r\n".encode())
        await writer.drain()
        body = await reader.read()
        writer.close()
        return body

    try:
        assert (await get("/status")).endswith(b'{"reads": 1}')
        assert (await get("/metrics")).endswith(b"reads 2\n")
        assert (await get("/liveness")).endswith(b"alive\n")
        assert reads == 2
        assert (await get("/status?x=1")).endswith(b'{"reads": 3}')
    finally:
        server.close()
        await server.wait_closed()


async def test_a_request_head_trickled_line_by_line_is_dropped_on_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The head has one deadline in all, not one per line: a client sending
    a header line every 50 ms, each well within the deadline, is cut off
    once the head as a whole is late, and the server answers others."""
    monkeypatch.setattr(http, "HEADER_WAIT_S", 0.3)
    ep = Endpoints(
        liveness=lambda: Health(True, "alive"),
        readiness=lambda: Health(True, "ready"),
        metrics=lambda: b"",
        status=lambda: {},
    )
    server = await serve_http(ep, "127.0.0.1:0")
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /liveness HTTP/1.0\r\n")
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        closed = None
        while loop.time() - t0 < 3:
            try:
                writer.write(b"X-Slow: 1\r\n")
                await writer.drain()
            except ConnectionError:
                closed = loop.time() - t0
                break
            if reader.at_eof() or await _eof_within(reader, 0.05):
                closed = loop.time() - t0
                break
        assert closed is not None and closed < 1.5, f"the trickling client was kept {closed}"
        r2, w2 = await asyncio.open_connection("127.0.0.1", port)
        w2.write(b"GET /liveness HTTP/1.0\r\n\r\n")
        assert (await r2.read()).endswith(b"alive\n")
        w2.close()
    finally:
        writer.close()
        server.close()
        await server.wait_closed()


async def _eof_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    try:
        async with asyncio.timeout(seconds):
            return await reader.read(1) == b""
    except TimeoutError:
        return False
