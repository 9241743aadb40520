"""The policy reconciler's port to nftables through libnftables (Debian's
``libnftables1``, the library behind the ``nft`` command), called with
ctypes. This module owns one library context for the life of the port.

Why not ``nft -f`` per transaction: a process start (and ``ip netns exec``,
which also unshares and remounts) per pod add costs more than the
transaction itself and, on a busy node, waits for the scheduler several
times. Here a transaction is one call into the library.

The context lives in one worker thread of its own, which enters the node's
network namespace (``setns`` changes only the calling thread's namespace)
before it creates the context: the library's netlink sockets, opened then
or later, all belong to that namespace; the process and its other threads
stay where they are. Calls are serialised through that thread, the only one
that touches the context.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
from concurrent.futures import ThreadPoolExecutor

from felix_lite.nft_reconciler import LIST_TABLE, NftError, applied, listed
from rtnetlink.sockets import netns_path, setns

LIBRARY = "libnftables.so.1"
_OUTPUT_JSON = 1 << 4
_OUTPUT_TERSE = 1 << 11


def _load(library: str) -> ctypes.CDLL:
    try:
        lib = ctypes.CDLL(library, use_errno=True)
    except OSError as e:
        raise NftError(f"cannot load {library} (Debian package libnftables1): {e}") from e
    lib.nft_ctx_new.restype = ctypes.c_void_p
    lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
    lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
    lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
    lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_output_get_flags.restype = ctypes.c_uint
    lib.nft_ctx_output_get_flags.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
    lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
    lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    return lib


class NftLib:
    """``read`` and ``apply`` of table ``inet meshroute``, in ``netns`` (a
    name under /var/run/netns or a path; None: the process's namespace)."""

    def __init__(self, netns: str | None = None, library: str = LIBRARY) -> None:
        self.netns = netns
        self.library = library
        self._lib: ctypes.CDLL | None = None
        self._ctx: int | None = None
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nft")

    # ---- in the worker thread ----------------------------------------------

    def _open(self) -> int:
        if self._ctx is not None:
            return self._ctx
        lib = self._lib or _load(self.library)
        self._lib = lib
        if self.netns is not None:
            # The worker never leaves the namespace: it serves this port alone.
            try:
                fd = os.open(netns_path(self.netns), os.O_RDONLY | os.O_CLOEXEC)
            except OSError as e:
                raise NftError(f"network namespace {self.netns}: {e.strerror}") from e
            try:
                setns(fd, self.netns)
            except OSError as e:
                raise NftError(str(e)) from e
            finally:
                os.close(fd)
        ctx = lib.nft_ctx_new(0)
        if not ctx:
            raise NftError("nft_ctx_new failed")
        lib.nft_ctx_buffer_output(ctx)
        lib.nft_ctx_buffer_error(ctx)
        self._ctx = ctx
        return ctx

    def _run(self, cmd: str, flags: int) -> tuple[int, str, str]:
        ctx = self._open()
        lib = self._lib
        assert lib is not None
        lib.nft_ctx_output_set_flags(ctx, flags)
        rc = lib.nft_run_cmd_from_buffer(ctx, cmd.encode())
        out = lib.nft_ctx_get_output_buffer(ctx) or b""
        err = lib.nft_ctx_get_error_buffer(ctx) or b""
        return rc, out.decode(errors="replace"), err.decode(errors="replace")

    # ---- the port ------------------------------------------------------------

    async def _call(self, cmd: str, flags: int) -> tuple[int, str, str]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._worker, self._run, cmd, flags)

    async def read(self, terse: bool = False) -> str | None:
        """The table as ``nft -j`` prints it; None when there is no table.
        ``terse``: without set and map elements (``nft -t``)."""
        flags = _OUTPUT_JSON | (_OUTPUT_TERSE if terse else 0)
        return listed(*await self._call(" ".join(LIST_TABLE), flags))

    async def apply(self, script: str) -> None:
        """One transaction: all of ``script`` or, when refused, nothing."""
        applied(*await self._call(script, 0))

    def close(self) -> None:
        """Free the context; the port cannot be used afterwards."""

        def free() -> None:
            if self._ctx is not None and self._lib is not None:
                self._lib.nft_ctx_free(self._ctx)
            self._ctx = None

        self._worker.submit(free).result()
        self._worker.shutdown()
