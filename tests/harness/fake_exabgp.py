"""A stand-in for ``exabgp server CONFIG`` that needs no root and no peers:
it starts the API process named in the config (bgpd.relay), says every
configured neighbour is up, and answers each command with ``done`` (or
``error`` for text it does not know), acking in bursts to let commands pile
up. It records what it saw in ``<config>.fake.json`` after every burst.
SIGUSR1 reloads the config as ExaBGP does (a neighbour added comes up, one
removed goes down), and ``show neighbor summary`` answers as ExaBGP's does
(tests/interop/test_exabgp_speaker.py holds both to that contract).

    python -m tests.harness.fake_exabgp server CONFIG

Env: FAKE_EXABGP_EXIT_AFTER=seconds makes it exit (code 3) after that long;
FAKE_EXABGP_DROP_RELOADS=n makes it drop the first n reloads, as ExaBGP
5.0.15 drops one that finds updates still queued for a peer;
FAKE_EXABGP_STAGGER_UP=1 brings the peers a reload adds up one at a time,
each next one as a command for the one before arrives (as the lab's IPv6
session to a new node came up while its IPv4 session got its routes).
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

KNOWN = re.compile(r"^(neighbor \S+ )?(announce|withdraw) (route|attributes|eor|route-refresh) ")
# ExaBGP 5.0.15's (exabgp.bgp.neighbor.NeighborTemplate.summary_header)
SUMMARY_HEADER = "Peer            AS        up/down state       |     #sent     #recvd"


def state_line(peer: str, local: str, state: str) -> str:
    return json.dumps(
        {
            "exabgp": "5.0.0",
            "type": "state",
            "neighbor": {
                "address": {"local": local, "peer": peer},
                "asn": {"local": 64512, "peer": 64513},
                "state": state,
            },
        }
    )


def neighbors(conf: Path) -> list[str]:
    return re.findall(r"^neighbor (\S+) \{", conf.read_text(), re.M)


def summary_line(peer: str) -> str:
    """A peer's line as ExaBGP 5.0.15 writes it (``summary_template``)."""
    return f"{peer:<15} {'64513':<7} {'0:00:01':>9} {'established':<12} {0:>10} {0:>10}"


def main() -> int:
    conf = Path(sys.argv[-1])
    text = conf.read_text()
    run = re.search(r"^\s*run (.+);$", text, re.M)
    assert run is not None
    peers = neighbors(conf)
    reloads: list[int] = []
    signal.signal(signal.SIGUSR1, lambda _n, _f: reloads.append(1))
    drop_reloads = int(os.environ.get("FAKE_EXABGP_DROP_RELOADS", "0") or 0)
    stagger = os.environ.get("FAKE_EXABGP_STAGGER_UP") == "1"
    coming: list[str] = []  # added by a reload, not up yet (stagger)
    relay = subprocess.Popen(run.group(1).split(), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert relay.stdin is not None and relay.stdout is not None
    out, inp = relay.stdin, relay.stdout
    for p in peers:
        out.write((state_line(p, "192.0.2.1", "up") + "\n").encode())
    out.flush()
    exit_after = float(os.environ.get("FAKE_EXABGP_EXIT_AFTER", "0") or 0)
    started = time.monotonic()
    seen = {"commands": [], "max_unacked": 0}
    buf = b""
    while True:
        if exit_after and time.monotonic() - started > exit_after:
            return 3
        if reloads:  # at the top of the loop, as ExaBGP's reactor takes them
            reloads.clear()
            if drop_reloads:
                drop_reloads -= 1
            else:
                new = neighbors(conf)
                for p in peers:
                    if p not in new:
                        out.write((state_line(p, "192.0.2.1", "down") + "\n").encode())
                added = [p for p in new if p not in peers]
                if stagger:
                    added, coming = added[:1], added[1:]
                for p in added:
                    out.write((state_line(p, "192.0.2.1", "up") + "\n").encode())
                out.flush()
                peers = new
        r, _, _ = select.select([inp], [], [], 0.02)
        if not r:
            continue
        chunk = os.read(inp.fileno(), 1 << 20)
        if not chunk:
            return 0
        buf += chunk
        time.sleep(0.01)  # let more commands arrive before acking: a burst
        more = select.select([inp], [], [], 0)[0]
        while more:
            extra = os.read(inp.fileno(), 1 << 20)
            if not extra:
                break
            buf += extra
            more = select.select([inp], [], [], 0)[0]
        *lines, buf = buf.split(b"\n")
        seen["max_unacked"] = max(seen["max_unacked"], len(lines))  # type: ignore[call-overload]
        acks = []
        for ln in lines:
            cmd = ln.decode()
            seen["commands"].append(cmd)  # type: ignore[attr-defined]
            if coming and cmd.startswith("neighbor ") and cmd.split()[1] not in coming:
                # a command for a peer up already: the next one comes up now,
                # before that command is acked
                out.write((state_line(coming.pop(0), "192.0.2.1", "up") + "\n").encode())
                out.flush()
            if cmd == "show neighbor summary":
                acks += [SUMMARY_HEADER, *map(summary_line, peers), "done"]
            else:
                acks.append("done" if KNOWN.match(cmd) else "error")
        # What was seen is on record before the acks go out, whole (a rename):
        # a test that saw the acks once read a record still being written.
        record = Path(str(conf) + ".fake.json")
        record.with_suffix(".tmp").write_text(json.dumps(seen))
        record.with_suffix(".tmp").replace(record)
        if acks:
            out.write(("\n".join(acks) + "\n").encode())
            out.flush()


if __name__ == "__main__":
    sys.exit(main())
