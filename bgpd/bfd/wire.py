"""The JSON lines between the node and the BFD daemon (``bgpd.bfd.daemon``).

node -> daemon: ``{"sessions": [PeerSpec...]}``, the whole desired set.
daemon -> node: ``{"change": BfdChange}`` as it happens, and
``{"snapshot": {"sessions": [SessionStatus...], "drops": {reason: n}}}``
after each connect, each change and every second.

Every line is decoded strictly; a bad one raises ``ValueError``."""

from __future__ import annotations

import json
from typing import Any

from netaddr import AddrFormatError, IPAddress

from bgpd.bfd.packet import State
from bgpd.bfd.session import Timers
from bgpd.bfd.speaker import BfdChange, PeerSpec, SessionStatus

MAX_LINE = 16 * 1024 * 1024


def _ip(v: Any) -> IPAddress:
    if not isinstance(v, str):
        raise ValueError(f"not an address: {str(v)[:40]!r}")
    try:
        return IPAddress(v)
    except (AddrFormatError, ValueError) as e:
        raise ValueError(f"not an address: {v[:40]!r}") from e


def _int(v: Any, lo: int, hi: int) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise ValueError(f"not an integer in {lo}..{hi}: {str(v)[:40]!r}")
    return v


def spec_to_json(s: PeerSpec) -> dict[str, Any]:
    t = s.timers
    return {
        "peer": str(s.peer),
        "local": str(s.local) if s.local is not None else None,
        "multihop": s.multihop,
        "minimumTtl": s.minimum_ttl,
        "txUs": t.desired_min_tx_us,
        "rxUs": t.required_min_rx_us,
        "mult": t.detect_mult,
        "passive": t.passive,
        "cpi": t.cpi,
    }


def spec_from_json(d: Any) -> PeerSpec:
    if not isinstance(d, dict):
        raise ValueError("a session must be an object")
    timers = Timers(
        _int(d.get("txUs"), 1, 2**32 - 1),
        _int(d.get("rxUs"), 1, 2**32 - 1),
        _int(d.get("mult"), 1, 255),
        passive=d.get("passive") is True,
        cpi=d.get("cpi") is True,
    )
    local = d.get("local")
    return PeerSpec(
        peer=_ip(d.get("peer")),
        timers=timers,
        local=_ip(local) if local is not None else None,
        multihop=d.get("multihop") is True,
        minimum_ttl=_int(d.get("minimumTtl", 254), 1, 255),
    )


def encode_sessions(specs: list[PeerSpec]) -> bytes:
    return json.dumps({"sessions": [spec_to_json(s) for s in specs]}).encode() + b"\n"


def decode_sessions(line: bytes) -> list[PeerSpec]:
    msg = json.loads(line)
    if not isinstance(msg, dict) or not isinstance(msg.get("sessions"), list):
        raise ValueError('expected {"sessions": [...]}')
    return [spec_from_json(d) for d in msg["sessions"]]


def change_to_json(c: BfdChange) -> dict[str, Any]:
    return {
        "peer": str(c.peer),
        "multihop": c.multihop,
        "old": c.old.name,
        "new": c.new.name,
        "diag": c.diag,
        "remoteDiag": c.remote_diag,
    }


def change_from_json(d: Any) -> BfdChange:
    if not isinstance(d, dict):
        raise ValueError("a change must be an object")
    return BfdChange(
        peer=_ip(d.get("peer")),
        multihop=d.get("multihop") is True,
        old=State[str(d.get("old"))],
        new=State[str(d.get("new"))],
        diag=_int(d.get("diag"), 0, 31),
        remote_diag=_int(d.get("remoteDiag"), 0, 31),
    )


def status_to_json(s: SessionStatus) -> dict[str, Any]:
    return {
        "peer": str(s.peer),
        "multihop": s.multihop,
        "state": s.state.name,
        "diag": s.diag,
        "remoteDiag": s.remote_diag,
        "since": s.since,
        "txIntervalMs": s.tx_interval_ms,
        "detectTimeMs": s.detect_time_ms,
        "remoteCpi": s.remote_cpi,
        "sent": s.sent,
        "received": s.received,
        "lastDownDiag": s.last_down_diag,
        "lastDownAt": s.last_down_at,
    }


def status_from_json(d: Any) -> SessionStatus:
    if not isinstance(d, dict):
        raise ValueError("a status must be an object")
    ldd = d.get("lastDownDiag")
    lda = d.get("lastDownAt")
    return SessionStatus(
        peer=_ip(d.get("peer")),
        multihop=d.get("multihop") is True,
        state=State[str(d.get("state"))],
        diag=_int(d.get("diag"), 0, 31),
        remote_diag=_int(d.get("remoteDiag"), 0, 31),
        since=float(d.get("since", 0.0)),
        tx_interval_ms=float(d.get("txIntervalMs", 0.0)),
        detect_time_ms=float(d.get("detectTimeMs", 0.0)),
        remote_cpi=d.get("remoteCpi") is True,
        sent=_int(d.get("sent", 0), 0, 2**63),
        received=_int(d.get("received", 0), 0, 2**63),
        last_down_diag=_int(ldd, 0, 31) if ldd is not None else None,
        last_down_at=float(lda) if lda is not None else None,
    )
