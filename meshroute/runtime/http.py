"""The small HTTP endpoint of a meshroute process (node, reflector):
``/liveness``, ``/readiness`` (200 or 503 with the reason), ``/metrics``
(Prometheus text) and ``/status`` (JSON for ``meshroute status``). HTTP/1.0,
one request per connection; the process supplies what each one answers."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from meshroute.runtime.exposition import CONTENT_TYPE

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Health:
    ok: bool
    reason: str


@dataclass(frozen=True)
class Endpoints:
    liveness: Callable[[], Health]
    readiness: Callable[[], Health]
    metrics: Callable[[], bytes]
    status: Callable[[], dict[str, Any]]
    # Awaited before /status and /metrics are answered, for a process whose
    # state there mirrors another daemon's (the reflector's BIRD): read it now,
    # so an answer never predates what the asker already saw happen
    refresh: Callable[[], Awaitable[None]] | None = None


FRESH_PATHS = ("/status", "/metrics")
HEADER_WAIT_S = 5.0  # a client that has not sent its request head by then is dropped


def _response(code: int, body: bytes, ctype: str) -> bytes:
    reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Unavailable"}[code]
    head = (
        f"HTTP/1.0 {code} {reason}\r\nContent-Type: {ctype}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


def route(endpoints: Endpoints, method: str, path: str) -> bytes:
    """Pure: the response for one request line."""
    if method != "GET":
        return _response(405, b"GET only\n", "text/plain")
    path = path.split("?", 1)[0]
    if path in ("/liveness", "/readiness"):
        h = (endpoints.liveness if path == "/liveness" else endpoints.readiness)()
        return _response(200 if h.ok else 503, (h.reason + "\n").encode(), "text/plain")
    if path == "/metrics":
        return _response(200, endpoints.metrics(), CONTENT_TYPE)
    if path == "/status":
        return _response(200, json.dumps(endpoints.status()).encode(), "application/json")
    return _response(404, b"not found\n", "text/plain")


async def serve_http(endpoints: Endpoints, listen: str) -> asyncio.Server:
    host, _, port = listen.rpartition(":")

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(HEADER_WAIT_S):  # the whole head, not each line
                line = await reader.readline()
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass
            parts = line.decode("latin-1").split()
            fresh = len(parts) >= 2 and parts[1].split("?", 1)[0] in FRESH_PATHS
            if endpoints.refresh is not None and fresh:
                await endpoints.refresh()
            resp = (
                route(endpoints, parts[0], parts[1])
                if len(parts) >= 2
                else _response(405, b"bad request\n", "text/plain")
            )
            writer.write(resp)
            await writer.drain()
        except (TimeoutError, ConnectionError, UnicodeDecodeError) as e:
            log.debug("http: %s", e)
        finally:
            writer.close()

    return await asyncio.start_server(handle, host.strip("[]") or "127.0.0.1", int(port))
