"""Network namespaces for the lab and the tests.

Every namespace is named ``<prefix><pid>-<n>-<label>`` (prefix ``mrt`` for
tests, ``mrlab`` for the lab) so that it is unique, recognisably ours, and
removable even when its creator died: ``sweep_stale`` removes those whose
creating PID is gone.
Nothing here touches the root namespace's links, addresses or routes.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import re
import signal
import subprocess
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

TEST_PREFIX = "mrt"
_counter = itertools.count()
_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
T = TypeVar("T")


def run(args: Sequence[str], *, check: bool = True, timeout: float = 30) -> str:
    p = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({p.returncode}): {p.stderr.strip()}")
    return p.stdout


@dataclass
class Netns:
    name: str
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def sh(self, cmd: str, *, check: bool = True, timeout: float = 30) -> str:
        return run(
            ["ip", "netns", "exec", self.name, "sh", "-c", cmd], check=check, timeout=timeout
        )

    def ip(self, *args: str, check: bool = True) -> str:
        return run(["ip", "-n", self.name, *args], check=check)

    def popen(self, args: Sequence[str], **kw: object) -> subprocess.Popen[bytes]:
        p: subprocess.Popen[bytes] = subprocess.Popen(  # type: ignore[call-overload]
            ["ip", "netns", "exec", self.name, *args], **kw
        )
        self.procs.append(p)
        return p

    def stop_procs(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs.clear()


class NetnsFactory:
    """Creates namespaces and removes all of them (and the processes started
    in them through ``popen``) in ``cleanup``."""

    def __init__(self, prefix: str = TEST_PREFIX) -> None:
        self.prefix = prefix
        self.created: list[Netns] = []

    def new(self, label: str) -> Netns:
        name = f"{self.prefix}{os.getpid()}-{next(_counter)}-{label}"[:60]
        run(["ip", "netns", "add", name])
        ns = Netns(name)
        self.created.append(ns)
        ns.ip("link", "set", "lo", "up")
        return ns

    def cleanup(self) -> None:
        for ns in reversed(self.created):
            ns.stop_procs()
        for ns in reversed(self.created):
            kill_pids_in(ns.name)
            run(["ip", "netns", "del", ns.name], check=False)
        self.created.clear()


def call_in_netns(name: str, fn: Callable[[], T]) -> T:
    """Run ``fn`` in a short-lived thread that entered namespace ``name``
    (setns changes only the calling thread's network namespace), e.g. to
    open a socket to a daemon listening inside a lab namespace."""
    box: list[T] = []
    errors: list[BaseException] = []

    def run_inside() -> None:
        try:
            fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
            try:
                if _libc.setns(fd, _CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns {name}: {os.strerror(err)}")
            finally:
                os.close(fd)
            box.append(fn())
        except BaseException as e:  # handed to the caller
            errors.append(e)

    t = threading.Thread(target=run_inside, name=f"netns-{name}", daemon=True)
    t.start()
    t.join()
    if errors:
        raise errors[0]
    return box[0]


def kill_pids_in(name: str) -> None:
    """End the processes still running inside a namespace we created."""
    out = run(["ip", "netns", "pids", name], check=False)
    for pid in out.split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


def veth(a: Netns, a_if: str, b: Netns, b_if: str) -> None:
    """A veth pair created inside ``a`` with its peer moved to ``b``."""
    a.ip("link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", b.name)
    a.ip("link", "set", a_if, "up")
    b.ip("link", "set", b_if, "up")


def switch(factory: NetnsFactory, label: str = "sw") -> Netns:
    """A namespace holding bridge ``br0``: one L2 segment for the
    namespaces ``plug`` connects to it."""
    sw = factory.new(label)
    sw.ip("link", "add", "br0", "type", "bridge")
    sw.ip("link", "set", "br0", "up")
    return sw


def plug(sw: Netns, ns: Netns, port: str, address: str, ifname: str = "eth0") -> None:
    """``ns``'s ``ifname`` on the switch's bridge (port ``port``), holding
    ``address`` (with its prefix length)."""
    veth(sw, port, ns, ifname)
    sw.ip("link", "set", port, "master", "br0")
    ns.ip("addr", "add", address, "dev", ifname)


def sweep_stale(prefix: str = TEST_PREFIX, *, all_of_them: bool = False) -> list[str]:
    """Remove our namespaces whose creating process is gone (or all with
    this prefix, for ``lab down``)."""
    pattern = re.compile(rf"^{re.escape(prefix)}(\d+)-")
    removed = []
    for line in run(["ip", "netns", "list"], check=False).splitlines():
        name = line.split()[0] if line.split() else ""
        m = pattern.match(name)
        if m and (all_of_them or not os.path.exists(f"/proc/{m.group(1)}")):
            kill_pids_in(name)
            run(["ip", "netns", "del", name], check=False)
            removed.append(name)
    return removed
