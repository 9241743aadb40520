"""``meshroute ipam serve`` that SIGKILLs itself right after its first
pending block affinity is written, before the block: the crash between the
two writes of a block claim, reproduced at exactly that instruction. The
hook lives only in this test helper's process, never in the product.

``python -m tests.integration.ipam_killed_claim_proc SERVE_ARGS...``
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence

from datastore.etcd import EtcdStore
from datastore.port import Compare, Op, Put
from ipam.model import AffinityState, loads

_real_txn = EtcdStore.txn


def _writes_pending_affinity(ops: Sequence[Op]) -> bool:
    return any(
        isinstance(op, Put)
        and b"/affinity/" in op.key
        and loads(op.value).get("state") == AffinityState.PENDING.value
        for op in ops
    )


async def _txn_then_die(self: EtcdStore, compares: Sequence[Compare], ops: Sequence[Op]) -> int:
    rev = await _real_txn(self, compares, ops)
    if rev and _writes_pending_affinity(ops):
        os.kill(os.getpid(), signal.SIGKILL)
    return rev


if __name__ == "__main__":
    EtcdStore.txn = _txn_then_die  # type: ignore[method-assign]
    from meshroute.cmd_ipam_serve import main

    sys.exit(main(sys.argv[1:]))
