"""What IPAM holds, read by the soak straight from the lab's etcd over one
long-lived client, in the shape of ``meshroute ipam show --json`` (the same
``summarize``). The CLI costs an interpreter start per read: on a loaded
machine that alone took longer than the 10 s between two checks."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import Any

from datastore.etcd import EtcdStore
from datastore.port import StoreError
from ipam.ipam import Ipam
from meshroute.cmd_ipam import summarize


class IpamReader:
    """One event loop on its own thread, one etcd client, for the soak's
    life; ``close`` ends both."""

    def __init__(self, endpoint: str, prefix: str) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="soak-ipam-reader", daemon=True
        )
        self._thread.start()
        self._store = self._call(self._open(endpoint), 30.0)
        self._ipam = Ipam(self._store, prefix=prefix)

    @staticmethod
    async def _open(endpoint: str) -> EtcdStore:
        return EtcdStore([endpoint], timeout=5.0)

    def _call(self, coro: Any, timeout: float) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def show(self, timeout: float) -> dict[str, Any] | None:
        """Pools and blocks per host; None when etcd does not answer in
        ``timeout`` s (frozen, or the machine busy): compare next time."""

        async def read() -> dict[str, Any]:
            return summarize(await self._ipam.snapshot())

        fut = asyncio.run_coroutine_threadsafe(read(), self._loop)
        try:
            return fut.result(timeout)
        except (concurrent.futures.TimeoutError, StoreError):
            fut.cancel()
            return None

    def close(self) -> None:
        try:
            self._call(self._store.close(), 10.0)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10.0)
            self._loop.close()
