"""Route-reflector clients for tests and the reflector benchmark: one BIRD
process speaking for many clients, each with its own address (strict bind),
router id, routing table and originated prefixes, so that what one client
learns is never re-announced by another. Optionally the namespace's kernel
gets the routes (one client per namespace, to ping across reflected routes).

Stopped by PID; the caller owns the namespace."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lab.netns import Netns


@dataclass(frozen=True)
class Client:
    name: str  # letters, digits, _
    address: str
    prefixes: tuple[str, ...]
    passive: bool = False  # wait for the reflector to connect
    # its own interface (macvlan): BIRD runs one session per neighbour
    # address and interface at a time, so many clients of one reflector in
    # one BIRD need one interface each
    interface: str | None = None
    ttl_security: bool = False  # GTSM (RFC 5082), single hop
    password: str | None = None


def clients_conf(
    clients: Sequence[Client],
    reflectors: Sequence[str],
    asn: int,
    *,
    kernel: bool = False,
    disabled: bool = False,
    connect_delay: int = 1,
    direct: bool = True,
) -> str:
    """``direct``: single-hop sessions (the next hop is on the interface);
    BIRD only finds the interface by a primary address, so with many
    addresses on one interface (benchmark) use multihop sessions whose next
    hops resolve through master4's connected routes."""
    lines = [f"router id {clients[0].address};", "protocol device {}"]
    shared = any(c.interface for c in clients)
    if not direct or shared:
        lines.append('protocol direct { ipv4; interface "*"; }')
    for c in clients:
        t = f"t_{c.name}"
        lines.append(f"ipv4 table {t};")
        if c.prefixes:
            lines.append(f"protocol static s_{c.name} {{ ipv4 {{ table {t}; }};")
            lines += [f"  route {p} blackhole;" for p in c.prefixes]
            lines.append("}")
        if kernel:
            # own prefixes stay out of the kernel: the client's addresses are local
            lines.append(
                f"protocol kernel k_{c.name} {{ ipv4 {{ table {t}; import none;"
                " export where source = RTS_BGP; }; }"
            )
        for i, rr in enumerate(reflectors, start=1):
            lines += [
                f"protocol bgp {c.name}_rr{i} {{",
                f"  router id {c.address};",
                f"  local {c.address} as {asn};",
                f"  neighbor {rr} as {asn};",
                "  strict bind on;" if direct and not c.interface else "",
                f'  interface "{c.interface}";' if c.interface else "",
                "  direct;" if direct else "  multihop;",
                f"  connect delay time {connect_delay};",
                *(["  passive on;"] if c.passive else []),
                *(["  ttl security on;"] if c.ttl_security else []),
                *([f'  password "{c.password}";'] if c.password else []),
                "  connect retry time 1;",
                "  error wait time 1, 3;",
                "  graceful restart on;",
                *(["  disabled;"] if disabled else []),
                # clients sharing a namespace: the others' next hops are local
                # addresses, which a direct gateway refuses; resolve them instead
                f"  ipv4 {{ table {t};"
                f"{' gateway recursive;' if c.interface else ''}"
                f"{' igp table master4;' if c.interface or not direct else ''}"
                " import all; export all; };",
                "}",
            ]
    return "\n".join(lines) + "\n"


class BirdClients:
    def __init__(self, ns: Netns, workdir: Path, conf: str) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.ns = ns
        self.sock = workdir / "bird.ctl"
        self.conf = workdir / "bird.conf"
        self.conf.write_text(conf)
        check = subprocess.run(["bird", "-p", "-c", str(self.conf)], capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"client BIRD config refused: {check.stderr.strip()}")
        with open(workdir / "bird.out", "wb") as out:
            self.proc = ns.popen(
                ["bird", "-f", "-c", str(self.conf), "-s", str(self.sock)],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 10
        while not self.sock.exists():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"client BIRD did not start: {(workdir / 'bird.out')}")
            time.sleep(0.05)

    def birdc(self, *cmd: str) -> str:
        p = subprocess.run(
            ["birdc", "-s", str(self.sock), *cmd], capture_output=True, text=True, timeout=60
        )
        return p.stdout

    def route_count(self, client: str) -> int:
        out = self.birdc("show", "route", "count", "table", f"t_{client}")
        for line in out.splitlines():
            tok = line.split()
            if len(tok) >= 2 and tok[1] == "of" and tok[0].isdigit():
                return int(tok[0])
        return 0

    def routes_all(self, client: str) -> str:
        return self.birdc("show", "route", "all", "table", f"t_{client}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
