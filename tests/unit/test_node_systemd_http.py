"""sd_notify over a real datagram socket, and the HTTP endpoint's routing."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from netaddr import IPAddress

from meshroute.node.readiness import decide_readiness
from meshroute.runtime.http import Endpoints, Health, route
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
    assert route(ep, "GET", "/metrics").endswith(b"meshroute_up 1\n")
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
