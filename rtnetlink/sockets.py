"""NETLINK_ROUTE sockets, in the caller's network namespace or another.

This module owns opening a bound rtnetlink socket (``netlink_socket``,
optionally joined to multicast groups), entering a network namespace on one
thread (``setns``, ``netns_path``; ``in_netns`` runs a function there, for
any socket: BFD's too), and the socket option numbers the clients set
(SOL_NETLINK's NETLINK_*, SO_*BUFFORCE), which Python's ``socket`` module
does not name.

Network namespaces: a socket belongs to the namespace it was created in, for
life. ``netlink_socket(netns=...)`` creates it in a short-lived thread that
first ``setns()``-es into the namespace; the calling process and its other
threads stay where they are. (Running the whole process under
``ip netns exec`` also works: pass ``netns=None``.)
"""

from __future__ import annotations

import ctypes
import os
import socket
import threading
from collections.abc import Callable
from typing import TypeVar

SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
NETLINK_EXT_ACK = 11
NETLINK_GET_STRICT_CHK = 12
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33
CLONE_NEWNET = 0x40000000
T = TypeVar("T")


def netns_path(netns: str) -> str:
    """A namespace name's file under /var/run/netns; a path stays as it is."""
    return netns if "/" in netns else f"/var/run/netns/{netns}"


def setns(fd: int, name: str) -> None:
    """Move the calling thread (only it) into the network namespace open as
    ``fd`` (``name`` says which, for the error)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns into {name}: {os.strerror(err)}")


def in_netns(netns: str | None, fn: Callable[[], T]) -> T:
    """``fn()`` run in ``netns`` (a name under /var/run/netns or a path;
    None: here), on a short-lived thread that enters it first and ends
    there: nothing else ever runs in it. What ``fn`` opens (sockets) stays
    in that namespace for life; its errors are raised here."""
    if netns is None:
        return fn()
    fd = os.open(netns_path(netns), os.O_RDONLY | os.O_CLOEXEC)
    box: list[T] = []
    errors: list[BaseException] = []

    def inside() -> None:
        try:
            setns(fd, netns)
            box.append(fn())
        except BaseException as e:  # handed to the caller's thread
            errors.append(e)

    try:
        t = threading.Thread(target=inside, name=f"netns-{netns}")
        t.start()
        t.join()
    finally:
        os.close(fd)
    if errors:
        raise errors[0]
    return box[0]


def netlink_socket(netns: str | None = None, *, groups: int = 0) -> socket.socket:
    """A bound NETLINK_ROUTE socket in ``netns`` (a name under /var/run/netns
    or a path; None: the caller's namespace)."""
    return in_netns(netns, lambda: _new_socket(groups))


def _new_socket(groups: int) -> socket.socket:
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 0)
    try:
        s.bind((0, groups))
    except OSError:
        s.close()
        raise
    return s
