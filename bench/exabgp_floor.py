"""ExaBGP's own floor in ``bench.bgp_ingest``: ExaBGP alone taking the same
feed with the node's configuration, its API output drained by a no-op reader
(``bench/floor_reader.py``), so what is left of the node's time is
meshroute's own share.

The configuration is the one the node under test wrote (its work dir's
``exabgp.conf``) with only the ``run`` line swapped for the reader, and the
environment is the speaker's (``render_env`` at the speaker's log level): the
same capabilities, API encoder and ``receive`` settings, the same logging.
The clock runs as the node's does: from ``birdc enable`` of the feeder's
protocol until the reader sees ExaBGP's End-of-RIB line (all N updates are
before it), and from the session's establishment (the feeder's log).

The reader is started by ExaBGP before the session can come up, and the
clock starts only once it reads: a reader still importing would leave
ExaBGP blocked on a full pipe and charge the import to ExaBGP.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from netaddr import IPAddress

from bench.procstat import cpu_s, descendants
from bgpd.exabgp_config import ExabgpConfig, render_env
from bgpd.speaker import SpeakerSettings
from lab.netns import Netns
from lab.node_rig import wait_for

if TYPE_CHECKING:
    from bench.bgp_ingest import Bird

READER = Path(__file__).resolve().parent / "floor_reader.py"
_RUN_LINE = re.compile(r"^(\s*)run [^;\n]*;$", re.MULTILINE)


@dataclass(frozen=True)
class Floor:
    seconds: float  # enable -> ExaBGP's End-of-RIB line read
    cpu_s: float  # ExaBGP and its reader meanwhile
    after_up_s: float | None  # session established -> End-of-RIB line read


def floor_config(node_conf: str, stamp: Path) -> str:
    """The node's ExaBGP configuration with the no-op reader as its API process."""
    run = f"run {sys.executable} -S -I {READER} {stamp};"
    out, n = _RUN_LINE.subn(lambda m: m.group(1) + run, node_conf)
    if n != 1:
        raise ValueError(f"expected one 'run' line in the node's ExaBGP config, found {n}")
    return out


def exabgp_floor(
    feeder: Bird,
    protocol: str,
    ns: Netns,
    node_conf: str,
    listen: tuple[str, int],
    work: Path,
    timeout: float,
) -> Floor:
    """One sample (see the module docstring)."""
    work.mkdir(parents=True, exist_ok=True)
    stamp = work / "eor"
    conf = work / "exabgp.conf"
    conf.write_text(floor_config(node_conf, stamp))
    conf.chmod(0o600)
    address, port = listen
    # only bind and port come from the config; the rest is the speaker's
    bind = ExabgpConfig(IPAddress(address), 1, (), ("-",), listen=(IPAddress(address), port))
    env = render_env(bind, log_level=SpeakerSettings(workdir=work).log_level, base=os.environ)

    def listening() -> bool:
        return bool(ns.sh(f"ss -Hltn 'sport = :{port}'", check=False).strip())

    # the node's ExaBGP may hold the port a moment after the node stopped
    wait_for(f"port {port} free", lambda: not listening(), 60)
    exabgp = str(Path(sys.executable).parent / "exabgp")
    with open(work / "exabgp.log", "wb") as log:
        proc = ns.popen(
            [exabgp, "server", str(conf)], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        wait_for("ExaBGP listening", listening, 60)
        wait_for("the floor's reader", Path(f"{stamp}.ready").exists, 60)
        pids = [proc.pid, *descendants(proc.pid)]
        c0 = cpu_s(pids)
        wall0 = time.time()
        feeder.birdc(f"enable {protocol}")
        wait_for("ExaBGP's End-of-RIB", stamp.exists, timeout, step=0.02)
        cpu = cpu_s(pids) - c0
        seen = float(stamp.read_text())
        up = feeder.established_at(protocol, wall0)
        return Floor(seen - wall0, cpu, None if up is None else seen - up)
    finally:
        feeder.birdc(f"disable {protocol}")
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
