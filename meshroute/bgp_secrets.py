"""BGPPeer passwords kept out of the resources. A BGPPeer names its TCP-MD5
password as ``passwordFile`` (a file on every host that has the session) or
``passwordSecret`` (an etcd key under ``<prefix>/secrets/v1/`` that an etcd
role can leave readable by the hosts only). This module owns those keys, and
turns peers that refer to a password into peers that carry it: the pure
``plan_peer_passwords`` over what ``resolve_peer_passwords`` read. Nothing
here puts a password in a message."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from datastore.port import Compare, Delete, KvStore, Put
from meshroute.resources import BGPPeerSpec

MAX_PASSWORD = 80  # TCP-MD5 keys: the kernel's limit
MAX_FILE = 4096
REDACTED = "<redacted>"


def password_problem(value: str) -> str | None:
    """Why ``value`` cannot be a TCP-MD5 password (without quoting it)."""
    if not value:
        return "empty"
    if len(value) > MAX_PASSWORD:
        return f"longer than {MAX_PASSWORD} characters"
    if not all(" " <= c <= "~" for c in value) or '"' in value or "\\" in value:
        return "only printable ASCII without double quote or backslash is accepted"
    return None


def read_password_file(path: str) -> str:
    """The password in ``path`` (one trailing newline dropped). Raises
    ``ValueError`` naming the file and the problem."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_FILE + 1)
    except OSError as e:
        raise ValueError(f"passwordFile {path}: cannot read: {e.strerror}") from e
    if len(raw) > MAX_FILE:
        raise ValueError(f"passwordFile {path}: larger than {MAX_FILE} bytes")
    text = raw.decode("ascii", errors="replace")
    text = text[:-1] if text.endswith("\n") else text
    if why := password_problem(text):
        raise ValueError(f"passwordFile {path}: {why}")
    return text


@dataclass(frozen=True)
class Resolved:
    peers: dict[str, BGPPeerSpec]  # every usable peer, passwords inline
    problems: tuple[str, ...]  # peers left out, one line each
    files: frozenset[str]  # the password files read (watched for changes)


def plan_peer_passwords(
    peers: Mapping[str, BGPPeerSpec],
    files: Mapping[str, str | ValueError],
    secrets: Mapping[str, str | None],
) -> Resolved:
    """Peers with their password inline. A peer whose password cannot be had
    is left out (a session without its TCP-MD5 key would never come up, and
    must not come up unprotected)."""
    out: dict[str, BGPPeerSpec] = {}
    problems = []
    for name, spec in sorted(peers.items()):
        value: str | ValueError | None = spec.password
        if spec.password_file is not None:
            value = files[spec.password_file]
        elif spec.password_secret is not None:
            got = secrets.get(spec.password_secret)
            value = (
                ValueError(f"passwordSecret {spec.password_secret}: no such secret")
                if got is None
                else got
            )
            if isinstance(value, str) and (why := password_problem(value)):
                value = ValueError(f"passwordSecret {spec.password_secret}: {why}")
        if isinstance(value, ValueError):
            problems.append(f"BGPPeer {name}: {value}; its sessions are left out")
            continue
        out[name] = spec.model_copy(
            update={"password": value, "password_file": None, "password_secret": None}
        )
    used = frozenset(f for f in (s.password_file for s in peers.values()) if f is not None)
    return Resolved(out, tuple(problems), used)


class SecretStore:
    """``<prefix>/secrets/v1/NAME`` holds a password, written with CAS."""

    def __init__(self, store: KvStore, prefix: str = "/meshroute") -> None:
        self.store = store
        self.watch_prefix = (prefix.rstrip("/") + "/secrets/v1/").encode()

    async def get(self, name: str) -> str | None:
        v = await self.store.get(self.watch_prefix + name.encode())
        return None if v is None else v.value.decode("ascii", errors="replace")

    async def names(self) -> list[str]:
        listing = await self.store.list(self.watch_prefix)
        return sorted(k[len(self.watch_prefix) :].decode() for k in listing.items)

    async def put(self, name: str, value: str) -> bool:
        """Create or replace; True when created."""
        key = self.watch_prefix + name.encode()
        for _ in range(32):
            cur = await self.store.get(key)
            rev = cur.mod_revision if cur else 0
            if await self.store.txn([Compare(key, rev)], [Put(key, value.encode())]):
                return cur is None
        raise RuntimeError(f"secret {name}: too many concurrent changes")

    async def delete(self, name: str) -> bool:
        key = self.watch_prefix + name.encode()
        cur = await self.store.get(key)
        if cur is None:
            return False
        return bool(await self.store.txn([Compare(key, cur.mod_revision)], [Delete(key)]))


async def resolve_peer_passwords(
    peers: Mapping[str, BGPPeerSpec], secrets: SecretStore
) -> Resolved:
    files: dict[str, str | ValueError] = {}
    for path in {s.password_file for s in peers.values() if s.password_file is not None}:
        try:
            files[path] = read_password_file(path)
        except ValueError as e:
            files[path] = e
    wanted = {s.password_secret for s in peers.values() if s.password_secret is not None}
    found = {name: await secrets.get(name) for name in sorted(wanted)}
    return plan_peer_passwords(peers, files, found)


def file_signature(paths: frozenset[str]) -> tuple[tuple[str, int, int, int], ...]:
    """What changes when a password file is replaced or rewritten."""
    out = []
    for p in sorted(paths):
        try:
            st = os.stat(p)
            out.append((p, st.st_ino, st.st_mtime_ns, st.st_size))
        except OSError:
            out.append((p, 0, 0, -1))
    return tuple(out)


async def watch_password_files(
    files: Callable[[], frozenset[str]], changed: Callable[[], None], interval: float = 2.0
) -> None:
    """Call ``changed`` when a password file in ``files()`` is rewritten,
    replaced, created or removed (polled: no inotify in the standard library)."""
    seen = None
    while True:
        now = await asyncio.to_thread(file_signature, files())
        if seen is not None and now != seen:
            changed()
        seen = now
        await asyncio.sleep(interval)
