"""FRR daemons for interop tests, started by hand inside a namespace the
caller created: never the system service. Each gets its own config, pid
file, vty and control sockets in a private directory (owned by the ``frr``
user, which the daemons drop to, so it lives under /tmp: pytest's tmp_path
is root-only), is queried through ``vtysh --vty_socket`` (BFD peers, BGP
neighbors and table) and stopped by PID with the namespace's other
processes."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab.frr import bfd_peers, bgp_neighbors, bgp_routes, daemon_argv, vty_ready, vtysh
from lab.netns import Netns
from lab.poll import wait_for


@dataclass
class FrrDaemons:
    """Some of ``zebra``, ``bfdd``, ``bgpd`` sharing one directory and one
    integrated config (``frr.conf``, read by each daemon)."""

    ns: Netns
    conf: str
    daemons: tuple[str, ...] = ("bfdd",)
    dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="mrt-frr-")))
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self) -> FrrDaemons:
        shutil.chown(self.dir, "frr", "frr")
        self.dir.chmod(0o755)
        (self.dir / "frr.conf").write_text(self.conf)
        for d in self.daemons:
            self.start_daemon(d)
        return self

    def start_daemon(self, d: str) -> None:
        out = open(self.dir / f"{d}.out", "wb")  # noqa: SIM115 - the child's
        try:
            argv = daemon_argv(d, self.dir)
            self.procs[d] = self.ns.popen(argv, stdout=out, stderr=subprocess.STDOUT)
        finally:
            out.close()
        wait_for(f"FRR {d} vty socket", lambda: vty_ready(self.dir, d), 15)

    def vtysh(self, daemon: str, *commands: str, check: bool = False) -> str:
        return vtysh(self.dir, daemon, *commands, check=check)

    def reconfigure(self, *commands: str) -> None:
        """Change bgpd's running configuration, as an operator does in vtysh."""
        self.vtysh("bgpd", "configure terminal", *commands, check=True)

    def bfd_peers(self) -> list[dict[str, Any]]:
        return bfd_peers(self.dir)

    def bfd_peer(self, peer: str) -> dict[str, Any]:
        for p in self.bfd_peers():
            if p.get("peer") == peer:
                return p
        return {}

    def neighbor(self, address: str) -> dict[str, Any]:
        return bgp_neighbors(self.dir).get(address, {})

    def established(self, address: str) -> bool:
        return self.neighbor(address).get("bgpState") == "Established"

    def wait_established(self, address: str, timeout: float = 30) -> None:
        wait_for(f"FRR neighbor {address}", lambda: self.established(address), timeout)

    def routes(self) -> set[str]:
        """Prefixes in bgpd's IPv4 table."""
        return bgp_routes(self.dir)

    def log(self, daemon: str = "bgpd") -> str:
        f = self.dir / f"{daemon}.log"
        return f.read_text(errors="replace") if f.exists() else ""

    def log_tails(self, chars: int = 4000) -> str:
        out = []
        for d in self.daemons:
            for suffix in (".log", ".out"):
                f = self.dir / f"{d}{suffix}"
                if f.exists():
                    tail = f.read_text(errors="replace")[-chars:]
                    out.append(f"--- FRR {f.name} (tail) ---\n{tail}")
        return "\n".join(out)

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.terminate()
        for p in self.procs.values():
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        shutil.rmtree(self.dir, ignore_errors=True)
