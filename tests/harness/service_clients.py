"""Servers that say who they are and clients that count who answered, for
service address tests: a ``NameServer`` listens in a namespace and writes
its name to every connection; ``connect_many`` opens connections from
another namespace and tallies the names (or the error) it got back.
Sockets are opened by a thread that entered the namespace, as
``policy_pods`` does, so no process is started per connection."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from lab.netns import call_in_netns

FAILED = "<failed>"


class NameServer:
    """A TCP server on ``address:port`` in namespace ``ns`` answering every
    connection with ``name`` (and holding it open until the client closes,
    so a long-lived connection can be checked again later)."""

    def __init__(self, ns: str, address: str, port: int, name: str) -> None:
        fam = socket.AF_INET6 if ":" in address else socket.AF_INET
        self.name = name
        self.sock = call_in_netns(ns, lambda: socket.socket(fam, socket.SOCK_STREAM))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((address, port))
        self.sock.listen(512)
        self.sock.settimeout(0.2)
        self._stop = threading.Event()
        self._conns: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with contextlib.suppress(OSError):
                conn.sendall(self.name.encode() + b"\n")
            self._conns.append(conn)
            # answer "again" on the same connection: which endpoint still holds it
            threading.Thread(target=self._echo_name, args=(conn,), daemon=True).start()

    def _echo_name(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while conn.recv(64):
                conn.sendall(self.name.encode() + b"\n")

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()
        for c in self._conns:
            with contextlib.suppress(OSError):
                c.close()


def open_conn(ns: str, address: str, port: int, timeout: float = 3.0) -> socket.socket:
    fam = socket.AF_INET6 if ":" in address else socket.AF_INET
    s = call_in_netns(ns, lambda: socket.socket(fam, socket.SOCK_STREAM))
    try:
        s.settimeout(timeout)
        s.connect((address, port))
    except OSError:
        s.close()
        raise
    return s


def read_name(s: socket.socket) -> str:
    data = b""
    while not data.endswith(b"\n"):
        chunk = s.recv(64)
        if not chunk:
            break
        data += chunk
    return data.decode().strip() or FAILED


def ask(ns: str, address: str, port: int, timeout: float = 3.0) -> str:
    """The name of the server one new connection reached, or FAILED."""
    try:
        with open_conn(ns, address, port, timeout) as s:
            return read_name(s)
    except OSError:
        return FAILED


def connect_many(ns: str, address: str, port: int, n: int, parallel: int = 16) -> Counter[str]:
    """``n`` new connections from ``ns``; how many each server answered."""
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        return Counter(pool.map(lambda _: ask(ns, address, port), range(n)))
