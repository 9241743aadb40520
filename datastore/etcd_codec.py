"""etcd's JSON gateway messages both ways, as pure functions: the requests
for ranges, transactions, watches, leases and logging in (keys and values in
base64), and the answers read back (int64s arrive as strings; a field at its
zero value is left out). An answer that is not what etcd sends is ``Broken``;
an error etcd answers with is ``Refused``, and ``verdict`` says what the
client does about it."""

from __future__ import annotations

import base64
import enum
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from datastore.etcd_http import Broken
from datastore.port import Compare, Condition, Delete, KeyChange, Op, StoreError, Versioned

# gRPC status codes, as the gateway reports them
_DEADLINE_EXCEEDED, _INTERNAL, _UNAVAILABLE, _UNAUTHENTICATED = 4, 13, 14, 16
# What etcd says when a request passes its --max-request-bytes or --max-txn-ops
# (the gateway's own gRPC client says the third past --max-request-bytes + 512 KB).
_TOO_LARGE = (
    "request is too large",
    "too many operations in txn request",
    "received message larger than max",
)
_MAX_MESSAGE = 300  # of an error etcd sends, as quoted in ours


class Verdict(enum.Enum):
    ELSEWHERE = "another endpoint may answer"  # unavailable, timed out, internal
    LOG_IN = "the auth token was refused: authenticate again"
    TOO_LARGE = "too large: retrying cannot help"
    FAIL = "refused"


class Refused(StoreError):
    """etcd answered with an error: ``code`` is its gRPC status (None when
    the body was not the gateway's), ``status`` the HTTP one."""

    def __init__(self, message: str, code: int | None, status: int) -> None:
        super().__init__(message)
        self.code, self.status = code, status

    @property
    def verdict(self) -> Verdict:
        text = str(self)
        if any(m in text for m in _TOO_LARGE):
            return Verdict.TOO_LARGE
        if self.code == _UNAUTHENTICATED:
            return Verdict.LOG_IN
        if self.code in (_DEADLINE_EXCEEDED, _INTERNAL, _UNAVAILABLE):
            return Verdict.ELSEWHERE
        if self.code is None and self.status >= 500:
            return Verdict.ELSEWHERE
        return Verdict.FAIL


def _printable(text: str) -> str:
    """One line, bounded: what a hostile answer may put in our messages."""
    flat = "".join(c if c.isprintable() else " " for c in text[: _MAX_MESSAGE + 1])
    return flat.strip()[:_MAX_MESSAGE] or "(no message)"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode()


def prefix_end(prefix: bytes) -> bytes:
    """The range_end that makes a range of every key under ``prefix``: the
    prefix with its last byte below 0xff incremented (``\\0``: every key)."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return b"\0"
    return stripped[:-1] + bytes([stripped[-1] + 1])


def range_request(key: bytes, *, prefix: bool = False) -> dict[str, Any]:
    if prefix:
        return {"key": b64(key), "range_end": b64(prefix_end(key))}
    return {"key": b64(key)}


def _compare(c: Condition) -> dict[str, Any]:
    if isinstance(c, Compare):
        return {"target": "MOD", "key": b64(c.key), "mod_revision": str(c.mod_revision)}
    # every key of the range: etcd holds a compare over an empty range true
    return {
        "target": "MOD",
        "key": b64(c.prefix),
        "range_end": b64(prefix_end(c.prefix)),
        "mod_revision": str(c.revision + 1),
        "result": "LESS",
    }


def _op(op: Op) -> dict[str, Any]:
    if isinstance(op, Delete):
        return {"request_delete_range": {"key": b64(op.key)}}
    put: dict[str, Any] = {"key": b64(op.key), "value": b64(op.value)}
    if op.lease is not None:
        put["lease"] = str(op.lease)
    return {"request_put": put}


def txn_request(compares: Sequence[Condition], ops: Sequence[Op]) -> dict[str, Any]:
    """The result EQUAL is the default, and so left out like etcd does."""
    return {"compare": [_compare(c) for c in compares], "success": [_op(o) for o in ops]}


def watch_request(prefix: bytes, start_revision: int) -> dict[str, Any]:
    """``fragment``: etcd splits a response bigger than its request limit,
    which bounds the line a watch reads."""
    req = range_request(prefix, prefix=True)
    return {"create_request": {**req, "start_revision": str(start_revision), "fragment": True}}


def authenticate_request(name: str, password: str) -> dict[str, Any]:
    return {"name": name, "password": password}


def lease_request(lease: int) -> dict[str, Any]:
    return {"ID": str(lease)}


def _object(raw: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        raise Broken(f"etcd sent something that is not JSON: {_printable(repr(raw[:80]))}") from e
    if not isinstance(obj, dict):
        raise Broken(f"etcd sent JSON that is not an object: {_printable(repr(raw[:80]))}")
    return obj


def _field(obj: Any, name: str, kind: type) -> Any:
    value = obj.get(name) if isinstance(obj, dict) else None
    if value is not None and not isinstance(value, kind):
        raise Broken(f"etcd sent {name} as {type(value).__name__}")
    return value


def _int(obj: Any, name: str) -> int:
    """An int64, which etcd sends as a string; absent is 0."""
    value = obj.get(name, 0) if isinstance(obj, dict) else 0
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise Broken(f"etcd sent {name} as {type(value).__name__}")
    try:
        return int(value)
    except ValueError as e:
        raise Broken(f"etcd sent {name} {_printable(repr(value))}, not an integer") from e


def _bytes(obj: dict[str, Any], name: str) -> bytes:
    value = _field(obj, name, str) or ""
    try:
        return base64.b64decode(value, validate=True)
    except ValueError as e:  # binascii.Error, or a character outside ASCII
        raise Broken(f"etcd sent {name} that is not base64") from e


def _refused(error: Any, status: int) -> Refused:
    """From the gateway's error object: {"error", "message", "code"} for a
    call, {"grpc_code", "message", ...} inside a stream."""
    message = _field(error, "message", str) or _field(error, "error", str) or ""
    code = _int(error, "code") or _int(error, "grpc_code") or None
    return Refused(_printable(message), code, status)


def answer(status: int, body: bytes) -> dict[str, Any]:
    """A call's answer, or the error etcd answered with."""
    if status == 200:
        return _object(body)
    raise refusal(status, body)


def refusal(status: int, body: bytes) -> Refused:
    """The error a response other than 200 carries."""
    try:
        error = json.loads(body)
    except (ValueError, RecursionError):
        error = None
    if isinstance(error, dict):
        return _refused(error, status)
    # not the gateway: Go's TLS server answering plain HTTP, a proxy, an old etcd
    return Refused(f"HTTP {status}: {_printable(body.decode('utf-8', 'replace'))}", None, status)


def stream_result(message: dict[str, Any]) -> dict[str, Any]:
    """One message of a stream (watch, keepalive): its result, or the error."""
    if "error" in message:
        raise _refused(message["error"], 200)
    result = _field(message, "result", dict)
    if result is None:
        raise Broken(f"etcd sent a stream message without a result: {_printable(repr(message))}")
    return dict(result)


def stream_message(line: bytes) -> dict[str, Any]:
    return stream_result(_object(line))


def revision(resp: dict[str, Any]) -> int:
    return _int(_field(resp, "header", dict) or {}, "revision")


def kvs(resp: dict[str, Any]) -> dict[bytes, Versioned]:
    out = {}
    for kv in _field(resp, "kvs", list) or []:
        if not isinstance(kv, dict):
            raise Broken("etcd sent a key-value that is not an object")
        out[_bytes(kv, "key")] = Versioned(_bytes(kv, "value"), _int(kv, "mod_revision"))
    return out


def txn_revision(resp: dict[str, Any]) -> int:
    """The revision a transaction left the store at; 0 when a compare failed."""
    return revision(resp) if _field(resp, "succeeded", bool) else 0


def token(resp: dict[str, Any]) -> str:
    value = _field(resp, "token", str)
    if not value or not value.isprintable():
        raise Broken("etcd's authentication answer holds no usable token")
    return str(value)


def lease_granted(resp: dict[str, Any]) -> int:
    if error := _field(resp, "error", str):
        raise Refused(_printable(error), None, 200)
    return _int(resp, "ID")


def lease_ttl(resp: dict[str, Any]) -> int:
    """A keepalive's TTL (its stream holds one message): 0 when the lease is gone."""
    return _int(stream_result(resp), "TTL")


@dataclass(frozen=True)
class WatchMessage:
    changes: tuple[KeyChange, ...]  # in etcd's order
    created: bool
    canceled: bool
    compact_revision: int
    cancel_reason: str
    fragment: bool  # more of the same revision's events follow

    @property
    def last_revision(self) -> int:
        """The highest revision among its events; 0: none."""
        return max((c.revision for c in self.changes), default=0)


def _key_change(event: Any) -> KeyChange:
    kv = _field(event, "kv", dict) or {}
    kind = _field(event, "type", str) or "PUT"  # the zero value (PUT) is left out
    if kind not in ("PUT", "DELETE"):
        raise Broken(f"etcd sent a watch event of type {_printable(kind)}")
    value = _bytes(kv, "value") if kind == "PUT" else None
    return KeyChange(_bytes(kv, "key"), value, _int(kv, "mod_revision"))


def watch_message(result: dict[str, Any]) -> WatchMessage:
    return WatchMessage(
        tuple(_key_change(e) for e in _field(result, "events", list) or []),
        bool(_field(result, "created", bool)),
        bool(_field(result, "canceled", bool)),
        _int(result, "compact_revision"),
        _printable(_field(result, "cancel_reason", str) or ""),
        bool(_field(result, "fragment", bool)),
    )
