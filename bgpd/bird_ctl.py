"""BIRD's control socket (what ``birdc`` speaks) without ``birdc``: send one
command, collect the reply; and ``show protocols all`` parsed into one
frozen record per BGP session. Parsing is pure."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from datetime import datetime

# A reply line is "CODE-text" (more follows), "CODE text" (last line) or
# " text" (continues the previous code). 0000 ends a successful reply; codes
# 8xxx (runtime error) and 9xxx (syntax error) end a failed one.
_CODE = re.compile(r"^(\d{4})([ -])(.*)$")


class BirdCtlError(RuntimeError):
    """BIRD answered with an error code, or the socket failed."""


@dataclass(frozen=True)
class BirdReply:
    code: str  # the last line's code
    lines: tuple[str, ...]  # text without codes

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def parse_reply(raw: list[str]) -> BirdReply:
    out: list[str] = []
    code = ""
    for line in raw:
        m = _CODE.match(line)
        if m:
            code = m.group(1)
            out.append(m.group(3))
        elif line.startswith(" "):
            out.append(line[1:])
    return BirdReply(code, tuple(out))


async def bird_command(socket_path: str, command: str, limit_s: float = 10.0) -> BirdReply:
    """Send ``command``; raise BirdCtlError on an error reply."""

    async def talk() -> BirdReply:
        reader, writer = await asyncio.open_unix_connection(socket_path, limit=1 << 22)
        try:
            await reader.readline()  # "0001 BIRD 2.0.12 ready."
            writer.write(command.encode() + b"\n")
            await writer.drain()
            raw: list[str] = []
            while True:
                b = await reader.readline()
                if not b:
                    raise BirdCtlError(f"{socket_path}: BIRD closed the connection")
                line = b.decode(errors="replace").rstrip("\n")
                raw.append(line)
                m = _CODE.match(line)
                if m and m.group(2) == " ":
                    break
            return parse_reply(raw)
        finally:
            writer.close()

    try:
        async with asyncio.timeout(limit_s):
            reply = await talk()
    except (OSError, TimeoutError) as e:
        raise BirdCtlError(f"{socket_path}: {e or 'timed out'}") from e
    if reply.code[:1] in ("8", "9"):
        raise BirdCtlError(f"{command!r}: {reply.text.strip()}")
    return reply


@dataclass(frozen=True)
class BgpSessionInfo:
    protocol: str
    state: str  # "up", "start", "down", ...
    since: datetime | None  # last state change, with ``timeformat protocol iso long``
    bgp_state: str  # "Established", "Active", "Connect", ...
    neighbor: str | None
    neighbor_as: int | None
    imported: int
    filtered: int
    exported: int
    last_error: str = ""

    @property
    def established(self) -> bool:
        return self.bgp_state == "Established"

    @property
    def received(self) -> int:
        return self.imported + self.filtered


_ROUTES = re.compile(r"(\d+) (imported|filtered|exported|preferred)")


def _since(parts: list[str]) -> tuple[datetime | None, list[str]]:
    """The Since column (iso long: two fields) and what follows it."""
    if len(parts) >= 2:
        try:
            return datetime.strptime(f"{parts[0]} {parts[1]}", "%Y-%m-%d %H:%M:%S"), parts[2:]
        except ValueError:
            pass
    return None, parts[1:]


def parse_show_protocols_all(text: str) -> list[BgpSessionInfo]:
    """BGP protocols of ``show protocols all`` (other protocols skipped)."""
    out: list[BgpSessionInfo] = []
    cur: dict[str, object] | None = None

    def flush() -> None:
        if cur is not None:
            out.append(BgpSessionInfo(**cur))  # type: ignore[arg-type]

    for line in text.splitlines():
        if not line.strip():
            continue
        if not line[0].isspace():
            parts = line.split()
            if len(parts) < 4 or parts[0] in ("Name", "BIRD"):
                continue
            flush()
            cur = None
            if parts[1] != "BGP":
                continue
            since, rest = _since(parts[4:])
            cur = {
                "protocol": parts[0],
                "state": parts[3],
                "since": since,
                "bgp_state": rest[0] if rest else "",
                "neighbor": None,
                "neighbor_as": None,
                "imported": 0,
                "filtered": 0,
                "exported": 0,
            }
            continue
        if cur is None:
            continue
        key, _, value = line.strip().partition(":")
        value = value.strip()
        if key == "BGP state":
            cur["bgp_state"] = value
        elif key == "Neighbor address":
            cur["neighbor"] = value
        elif key == "Neighbor AS" and value.isdigit():
            cur["neighbor_as"] = int(value)
        elif key == "Last error":
            cur["last_error"] = value
        elif key == "Routes":
            for n, what in _ROUTES.findall(value):
                if what != "preferred":
                    cur[what] = int(n)
    flush()
    return out


async def bgp_sessions(socket_path: str) -> list[BgpSessionInfo]:
    reply = await bird_command(socket_path, "show protocols all")
    return parse_show_protocols_all(reply.text)
