"""What the benchmarks read about a process from /proc: CPU seconds, RSS,
its descendants and when it started."""

from __future__ import annotations

import os
import time
from pathlib import Path


def cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds of these processes (all their threads)."""
    user, system = cpu_split_s(pids)
    return user + system


def cpu_split_s(pids: list[int]) -> tuple[float, float]:
    """User and system CPU seconds of these processes (all their threads)."""
    tick = os.sysconf("SC_CLK_TCK")
    user = system = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        user += int(fields[11])  # utime
        system += int(fields[12])  # stime
    return user / tick, system / tick


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def descendants(pid: int) -> list[int]:
    out: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            kids = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            continue
        out += map(int, kids)
        todo += map(int, kids)
    return out


def started_at(pid: int) -> float:
    """When ``pid`` started (exec keeps it: ``ip netns exec`` then the
    program), on ``time.monotonic()``'s clock, in 10 ms steps."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    since_boot = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # starttime, field 22
    return since_boot - time.clock_gettime(time.CLOCK_BOOTTIME) + time.monotonic()
