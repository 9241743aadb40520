"""Capture the JSON lines a real ExaBGP 5 writes to its API process while it
talks to a real BIRD 2 (IPv4 with TCP-MD5, and IPv6) and a real GoBGP, in
network namespaces. The lines become the codec's fixtures.

Re-capture (root; takes ~40 s):

    .venv/bin/python -m tests.interop.capture_exabgp --out tests/fixtures/exabgp

writes ``session.jsonl`` (every line ExaBGP wrote, in order, through
bgpd.relay) and ``commands.txt`` (the commands sent, in order). The scenario:
sessions come up; ExaBGP announces (single, per-neighbour, bulk, IPv6),
withdraws, sends End-of-RIB, a bad command (an ``error`` ack) and a route
refresh; GoBGP announces and withdraws a route with MED and communities;
BIRD drops a static (a withdraw) and is disabled and enabled (a Cease
NOTIFICATION, state down, up again).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

from netaddr import IPAddress

from bgpd.exabgp_config import ExabgpConfig, NeighborConfig, render, render_env
from lab.netns import NetnsFactory
from tests.harness.bgp_peers import (
    BirdNeighbor,
    BirdSpec,
    GobgpNeighbor,
    GobgpSpec,
    link,
    start_bird,
    start_gobgp,
)

EXA4, BIRD4 = "192.0.2.1", "192.0.2.2"
EXA6, BIRD6 = "2001:db8:12::1", "2001:db8:12::2"
EXAG, GOBGP4 = "192.0.2.5", "192.0.2.6"
PASSWORD = "s3cret pass"


class Recorder:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.writer: asyncio.StreamWriter | None = None
        self.connected = asyncio.Event()
        self.sent: list[str] = []

    async def handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.writer = w
        self.connected.set()
        try:
            while line := await r.readline():
                if not line.startswith(b'{"relay"'):  # the relay's own marker
                    self.lines.append(line.decode().rstrip("\n"))
        except (asyncio.CancelledError, ConnectionError):
            pass

    async def send(self, cmd: str) -> None:
        assert self.writer is not None
        self.sent.append(cmd)
        self.writer.write(cmd.encode() + b"\n")
        await self.writer.drain()
        await asyncio.sleep(0.3)

    async def wait_for(self, needle: str, count: int = 1, limit_s: float = 40) -> None:
        deadline = time.monotonic() + limit_s
        while sum(needle in ln for ln in self.lines) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {count} lines with {needle!r}")
            await asyncio.sleep(0.1)


async def scenario(work: Path, out: Path) -> None:
    f = NetnsFactory()
    try:
        exa, bird_ns, gob_ns = f.new("cexa"), f.new("cbird"), f.new("cgob")
        link(exa, "tobird", f"{EXA4}/30", bird_ns, "toexa", f"{BIRD4}/30")
        exa.ip("addr", "add", f"{EXA6}/64", "dev", "tobird", "nodad")
        bird_ns.ip("addr", "add", f"{BIRD6}/64", "dev", "toexa", "nodad")
        link(exa, "togob", f"{EXAG}/30", gob_ns, "toexa", f"{GOBGP4}/30")
        bird = start_bird(
            bird_ns,
            work / "bird",
            BirdSpec(
                router_id=BIRD4,
                local_as=64513,
                neighbors=(
                    BirdNeighbor("exa4", EXA4, 64512, password=PASSWORD),
                    BirdNeighbor("exa6", EXA6, 64512, ipv6=True),
                ),
                static4=("203.0.113.0/26", "203.0.113.64/26"),
                static6=("2001:db8:100::/48",),
            ),
        )
        gobgp = start_gobgp(
            gob_ns,
            work / "gobgp",
            GobgpSpec(router_id=GOBGP4, local_as=64514, neighbors=(GobgpNeighbor(EXAG, 64512),)),
        )
        rec = Recorder()
        sock = str(work / "node.sock")
        server = await asyncio.start_unix_server(rec.handle, sock, limit=64 * 1024 * 1024)
        cfg = ExabgpConfig(
            router_id=IPAddress(EXA4),
            local_as=64512,
            api_run=(sys.executable, "-m", "bgpd.relay", "--socket", sock),
            neighbors=(
                NeighborConfig(IPAddress(BIRD4), 64513, IPAddress(EXA4), password=PASSWORD),
                NeighborConfig(IPAddress(BIRD6), 64513, IPAddress(EXA6), ipv4=False, ipv6=True),
                NeighborConfig(IPAddress(GOBGP4), 64514, IPAddress(EXAG)),
            ),
        )
        conf = work / "exabgp.conf"
        conf.write_text(render(cfg))
        log = open(work / "exabgp.log", "wb")  # noqa: SIM115, ASYNC230
        exa.popen(
            [str(Path(sys.executable).parent / "exabgp"), "server", str(conf)],
            env={**os.environ, **render_env(cfg)},
            stdout=log,
            stderr=log,
        )
        await asyncio.wait_for(rec.connected.wait(), 30)
        await rec.wait_for('"state": "up"', 3)
        await rec.wait_for('"eor"', 3)
        for cmd in (
            f"announce route 10.244.1.0/26 next-hop {EXA4} community [64512:100] "
            "local-preference 100",
            f"neighbor {GOBGP4} announce route 10.244.1.64/26 next-hop self",
            f"announce attributes next-hop {EXA4} community [64512:100 64512:200] "
            "nlri 10.244.2.0/26 10.244.2.64/26 10.244.2.128/26",
            f"neighbor {BIRD6} announce route 2001:db8:244::/64 next-hop {EXA6}",
            "withdraw route 10.244.2.128/26",
            "announce eor ipv4 unicast",
            "this is not a command",
            "announce route-refresh ipv4 unicast",
        ):
            await rec.send(cmd)
        gobgp.add_route(
            "198.51.100.0/24", extra=("nexthop", GOBGP4, "med", "10", "community", "64514:7")
        )
        await rec.wait_for("198.51.100.0/24")
        gobgp.del_route("198.51.100.0/24")
        await rec.wait_for("198.51.100.0/24", 2)
        bird.reconfigure(
            BirdSpec(
                router_id=BIRD4,
                local_as=64513,
                neighbors=bird.spec.neighbors,
                static4=("203.0.113.0/26",),
                static6=bird.spec.static6,
            )
        )
        await rec.wait_for("203.0.113.64/26", 3)  # announce, refresh re-announce, withdraw
        bird.birdc("disable exa4")
        await rec.wait_for('"notification"')
        await rec.wait_for('"state": "down"')
        bird.birdc("enable exa4")
        await rec.wait_for('"state": "up"', 4)
        await asyncio.sleep(1.0)
        server.close()
        out.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240
        (out / "session.jsonl").write_text("\n".join(rec.lines) + "\n")
        (out / "commands.txt").write_text("\n".join(rec.sent) + "\n")
        print(f"captured {len(rec.lines)} lines into {out}")
    finally:
        f.cleanup()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("tests/fixtures/exabgp"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="exacap") as d:
        asyncio.run(scenario(Path(d), args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
