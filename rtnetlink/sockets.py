"""NETLINK_ROUTE sockets, in the caller's network namespace or another.

This module owns opening a bound rtnetlink socket (``netlink_socket``,
optionally joined to multicast groups), entering a network namespace on one
thread (``setns``, ``netns_path``), and the socket option numbers the
clients set (SOL_NETLINK's NETLINK_*, SO_*BUFFORCE), which Python's
``socket`` module does not name.

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

SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
NETLINK_EXT_ACK = 11
NETLINK_GET_STRICT_CHK = 12
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33
CLONE_NEWNET = 0x40000000


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


def netlink_socket(netns: str | None = None, *, groups: int = 0) -> socket.socket:
    """A bound NETLINK_ROUTE socket in ``netns`` (a name under /var/run/netns
    or a path; None: the caller's namespace)."""
    if netns is None:
        return _new_socket(groups)
    fd = os.open(netns_path(netns), os.O_RDONLY | os.O_CLOEXEC)
    result: list[socket.socket | BaseException] = []

    def enter_and_open() -> None:
        try:
            setns(fd, netns)
            result.append(_new_socket(groups))
        except BaseException as e:  # handed to the caller's thread
            result.append(e)

    try:
        # This thread ends inside the namespace; nothing else ever runs in it.
        t = threading.Thread(target=enter_and_open, name=f"netns-{netns}")
        t.start()
        t.join()
    finally:
        os.close(fd)
    got = result[0]
    if isinstance(got, BaseException):
        raise got
    return got


def _new_socket(groups: int) -> socket.socket:
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 0)
    try:
        s.bind((0, groups))
    except OSError:
        s.close()
        raise
    return s
