"""A host that allocates: registers itself, then assigns ``--count``
addresses with ``--concurrency`` tasks racing on its blocks, printing one
``ip handle`` line per address as soon as it has it. Run by the multi-process
IPAM tests as ``python -m tests.integration.ipam_allocator_proc``."""

from __future__ import annotations

import argparse
import asyncio
import sys

from datastore.etcd import EtcdStore
from ipam.ipam import AssignRequest, Ipam
from meshroute.registry import NodeRecord, Registry


async def main(args: argparse.Namespace) -> None:
    store = EtcdStore([args.etcd])
    ipam = Ipam(store, prefix=args.prefix)
    await Registry(store, args.prefix).upsert(NodeRecord(args.host))
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(args.count):
        queue.put_nowait(i)

    async def worker() -> None:
        while not queue.empty():
            i = queue.get_nowait()
            handle = f"{args.host}-{i}.eth0"
            (a,) = await ipam.assign(AssignRequest(host=args.host, handle=handle))
            sys.stdout.write(f"{a.ip} {handle}\n")
            sys.stdout.flush()

    await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    await store.close()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--etcd", required=True)
    p.add_argument("--prefix", required=True)
    p.add_argument("--host", required=True)
    p.add_argument("--count", type=int, default=250)
    p.add_argument("--concurrency", type=int, default=8)
    asyncio.run(main(p.parse_args()))
