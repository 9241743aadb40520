"""HTTP/1.1 to etcd's JSON gateway on asyncio streams: one ``Connection``
carries one request at a time; a request is a POST with a JSON body and a
Content-Length; a response body comes with a Content-Length, in chunks, or
until the connection closes, and a streaming one (watch, lease keepalive) is
split into its newline-delimited messages. The framing rules are pure
functions; the connection only moves bytes. Whatever goes wrong on the wire
(refused, reset, TLS, a truncated, malformed or oversized response) is a
``Broken``, a ``StoreError`` that another connection may not meet."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass

from datastore.port import StoreError

MAX_HEAD = 64 * 1024  # a status line and headers; etcd's are ~300 bytes
# The largest body read whole: a listing of 10k keys with ~600-byte values is
# ~9 MB of JSON; 64 MB bounds memory against a hostile or runaway answer.
MAX_BODY = 64 << 20
# One message of a stream: a watch asks etcd to fragment big responses to
# its --max-request-bytes (1.5 MB by default), so a line stays well under this.
MAX_LINE = 16 << 20
_READ = 64 * 1024
# A watch idles for hours: the kernel's keepalive finds a peer that vanished
# (host down, partition) after about IDLE + INTERVAL * COUNT seconds.
_KEEPALIVE_IDLE, _KEEPALIVE_INTERVAL, _KEEPALIVE_COUNT = 30, 10, 3


class Broken(StoreError):
    """The exchange failed on the wire. ``before_response``: nothing of a
    response arrived (a kept-alive connection the server had closed)."""

    def __init__(self, message: str, *, before_response: bool = False) -> None:
        super().__init__(message)
        self.before_response = before_response


@dataclass(frozen=True)
class Head:
    status: int
    version: str  # "HTTP/1.1"
    headers: dict[str, str]  # names lower-cased; a repeated header's values joined by ","

    @property
    def chunked(self) -> bool:
        codings = self.headers.get("transfer-encoding", "")
        return codings.rsplit(",", 1)[-1].strip().lower() == "chunked"

    @property
    def length(self) -> int | None:
        """The Content-Length; None when chunked or read until close."""
        if self.chunked:
            return None
        if self.status in (204, 304):
            return 0
        raw = self.headers.get("content-length")
        if raw is None:
            return None
        values = {v.strip() for v in raw.split(",")}
        if len(values) != 1 or not (v := values.pop()).isdigit() or len(v) > 18:
            raise Broken(f"etcd sent a bad Content-Length {raw[:40]!r}")
        return int(v)

    @property
    def keeps_alive(self) -> bool:
        """The connection can carry another request once this body is read."""
        close = "close" in self.headers.get("connection", "").lower()
        framed = self.chunked or self.length is not None
        return self.version == "HTTP/1.1" and not close and framed


def encode_request(host: str, path: str, body: bytes, headers: Mapping[str, str]) -> bytes:
    """A POST of a JSON body; header values must be one line each."""
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {host}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
    ]
    for name, value in headers.items():
        if any(c in value for c in "\r\n\0"):
            raise StoreError(f"HTTP header {name} holds a line break")
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def parse_head(raw: bytes) -> Head:
    """The status line and headers, up to and including the blank line."""
    text = raw.decode("latin-1")
    status_line, *fields = text.rstrip("\r\n").split("\r\n")
    version, _, rest = status_line.partition(" ")
    code = rest[:3]
    if version not in ("HTTP/1.0", "HTTP/1.1") or not code.isdigit() or len(code) != 3:
        raise Broken(f"etcd did not answer HTTP: {status_line[:80]!r}")
    headers: dict[str, str] = {}
    for f in fields:
        name, sep, value = f.partition(":")
        if not sep or not name or name != name.strip():
            raise Broken(f"etcd sent a malformed header line {f[:80]!r}")
        key = name.lower()
        headers[key] = f"{headers[key]},{value.strip()}" if key in headers else value.strip()
    return Head(int(code), version, headers)


def parse_chunk_size(line: bytes) -> int:
    """A chunk's size line (hex digits, maybe ``;extensions``)."""
    size = line.split(b";", 1)[0].strip()
    if not size or len(size) > 16 or any(c not in b"0123456789abcdefABCDEF" for c in size):
        raise Broken(f"etcd sent a bad chunk size {line[:40]!r}")
    return int(size, 16)


class LineSplitter:
    """Splits a stream's bytes into its newline-delimited messages, none
    longer than ``max_line``."""

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self._max = max_line
        self._partial = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        if b"\n" not in data:  # most pieces of a long message: no re-scan of what came before
            self._partial += data
            self._check(len(self._partial))
            return []
        first, *middle, rest = data.split(b"\n")
        lines = [bytes(self._partial) + first, *middle]
        self._partial = bytearray(rest)
        for n in (*map(len, lines), len(rest)):
            self._check(n)
        return [x for x in lines if x and not x.isspace()]

    def _check(self, n: int) -> None:
        if n > self._max:
            raise Broken(f"etcd sent a stream message over {self._max} bytes")

    def finish(self) -> list[bytes]:
        """What is left when the stream ends (a message without its newline)."""
        rest, self._partial = bytes(self._partial), bytearray()
        return [rest] if rest and not rest.isspace() else []


def _keepalive(sock: socket.socket | None) -> None:
    if sock is None:
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, _KEEPALIVE_IDLE)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, _KEEPALIVE_INTERVAL)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, _KEEPALIVE_COUNT)


class Connection:
    """One HTTP/1.1 connection to one etcd member."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, where: str):
        self._reader, self._writer, self._host = reader, writer, where  # host:port
        self.reusable = False  # set when a response was read to its end

    @classmethod
    async def open(cls, host: str, port: int, tls: ssl.SSLContext | None) -> Connection:
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            reader, writer = await asyncio.open_connection(host, port, limit=MAX_HEAD)
        except OSError as e:
            raise Broken(f"cannot connect to {where}: {e.strerror or e}") from e
        _keepalive(writer.get_extra_info("socket"))
        if tls is not None:
            try:
                await writer.start_tls(tls, server_hostname=host)
            except BaseException as e:
                writer.transport.abort()
                if isinstance(e, ssl.SSLError):
                    raise Broken(f"TLS handshake with {where} failed: {e}") from e
                if isinstance(e, OSError):  # asyncio's bare ConnectionResetError
                    raise Broken(f"{where} closed the connection during the TLS handshake") from e
                raise
        return cls(reader, writer, where)

    @property
    def stale(self) -> bool:
        """The server closed it while it sat idle."""
        return self._reader.at_eof() or self._writer.is_closing()

    async def send(self, path: str, body: bytes, headers: Mapping[str, str]) -> Head:
        """Sends the request and reads the response's head."""
        self.reusable = False
        try:
            self._writer.write(encode_request(self._host, path, body, headers))
            await self._writer.drain()
            raw = await self._reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as e:
            if e.partial:
                raise Broken(f"etcd at {self._host} cut its answer short") from e
            raise Broken(
                f"etcd at {self._host} closed the connection without answering",
                before_response=True,
            ) from e
        except asyncio.LimitOverrunError as e:
            raise Broken(f"etcd at {self._host} sent a response head over {MAX_HEAD} bytes") from e
        except OSError as e:  # reset, or a TLS alert (a refused client certificate)
            raise Broken(f"etcd at {self._host}: {e}", before_response=True) from e
        return parse_head(raw)

    async def read_body(self, head: Head, limit: int = MAX_BODY) -> bytes:
        body = bytearray()
        async for piece in self._pieces(head):
            body += piece
            if len(body) > limit:
                raise Broken(f"etcd at {self._host} sent a response over {limit} bytes")
        return bytes(body)

    async def lines(self, head: Head, max_line: int = MAX_LINE) -> AsyncGenerator[bytes, None]:
        """A streaming body's messages as they arrive."""
        splitter = LineSplitter(max_line)
        async for piece in self._pieces(head):
            for line in splitter.feed(piece):
                yield line
        for line in splitter.finish():
            yield line

    async def _pieces(self, head: Head) -> AsyncIterator[bytes]:
        r = self._reader
        try:
            length = head.length
            if head.chunked:
                while size := parse_chunk_size(await r.readuntil(b"\r\n")):
                    async for piece in self._exactly(size):
                        yield piece
                    if await r.readexactly(2) != b"\r\n":
                        raise Broken(f"etcd at {self._host} sent a chunk without its CRLF")
                while await r.readuntil(b"\r\n") != b"\r\n":  # trailers
                    pass
            elif length is not None:
                async for piece in self._exactly(length):
                    yield piece
            else:
                while piece := await r.read(_READ):
                    yield piece
        except asyncio.IncompleteReadError as e:
            raise Broken(f"etcd at {self._host} cut the response short") from e
        except asyncio.LimitOverrunError as e:
            raise Broken(f"etcd at {self._host} sent a chunk line over {MAX_HEAD} bytes") from e
        except OSError as e:
            raise Broken(f"etcd at {self._host}: {e}") from e
        self.reusable = head.keeps_alive

    async def _exactly(self, n: int) -> AsyncIterator[bytes]:
        """``n`` bytes in pieces, so that a huge announced size is refused by
        the reader's limit before it is held in memory."""
        while n:
            piece = await self._reader.read(min(n, _READ))
            if not piece:
                raise asyncio.IncompleteReadError(b"", n)
            n -= len(piece)
            yield piece

    def close(self) -> None:
        """Drops the connection at once (no TLS close_notify: nothing is owed)."""
        self.reusable = False
        transport = self._writer.transport
        if not transport.is_closing():
            transport.abort()
