"""The API process of ``bench.exabgp_floor``: ExaBGP's no-op reader.

Run by ExaBGP as ``python -S -I floor_reader.py STAMP`` (no site, no
imports beyond the standard library's core, so it starts in milliseconds and
costs nothing while reading). It writes ``STAMP.ready`` once it reads, then
drains ExaBGP's output in large chunks without parsing it, and writes the
wall-clock time of the first End-of-RIB line it sees to ``STAMP`` (by
rename, so the bench never reads half a number). It ends when ExaBGP closes
the pipe.

The one thing it says: when the session comes up it has ExaBGP send our
End-of-RIB, as the node's speaker does at once (manual-eor). Without it the
feeding BIRD took seconds longer to send its own End-of-RIB than it does to
the node (2,000 prefixes: 3.0 s after the session came up, the node had them
all in 1.1 s), so the floor measured a wait, not ExaBGP.
"""

from __future__ import annotations

import os
import sys
import time

EOR = b'"eor"'
UP = b'"state": "up"'


def main() -> None:
    stamp = sys.argv[1]
    with open(stamp + ".ready", "w"):
        pass
    seen = up = False
    tail = b""
    while True:
        chunk = os.read(0, 1 << 20)
        if not chunk:
            return
        if not up and UP in tail + chunk:
            os.write(1, b"announce eor ipv4 unicast\n")
            up = True
        if not seen and EOR in tail + chunk:
            now = time.time()
            with open(stamp + ".tmp", "w") as f:
                f.write(repr(now))
            os.rename(stamp + ".tmp", stamp)
            seen = True
        tail = chunk[-len(UP) :]


if __name__ == "__main__":
    main()
