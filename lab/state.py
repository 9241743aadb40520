"""What a running lab consists of, on disk (``<run dir>/state.json``): its
namespaces, the processes it started (PID, kernel start time, argv) and its
pods. Written after every step, so ``lab down`` in another process, or
after a crash, ends exactly what the lab started and nothing else: a PID
counts as ours only while its start time and command line still match."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

STATE_FILE = "state.json"


@dataclass(frozen=True)
class ProcessRecord:
    role: str  # etcd, bird, node
    label: str  # the namespace label it runs in
    pid: int
    start_time: int  # field 22 of /proc/PID/stat, in clock ticks since boot
    argv: tuple[str, ...]  # what runs once ``ip netns exec`` has exec'd it


@dataclass(frozen=True)
class PodRecord:
    label: str
    node: str  # node name
    netns: str
    container_id: str
    address: str  # without prefix length
    address6: str = ""  # dual stack only


@dataclass
class LabState:
    run_dir: str
    prefix: str
    topology: str
    namespaces: dict[str, str] = field(default_factory=dict)  # label -> real name
    processes: list[ProcessRecord] = field(default_factory=list)
    pods: list[PodRecord] = field(default_factory=list)
    etcd_endpoint: str = ""
    params: dict[str, Any] = field(default_factory=dict)  # the LabParams it was built from

    @property
    def path(self) -> Path:
        return Path(self.run_dir) / STATE_FILE

    def save(self) -> None:
        """Atomically, so a crash never leaves half a state file."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2, sort_keys=True))
        os.replace(tmp, self.path)

    def ns(self, label: str) -> str:
        return self.namespaces[label]


def load_state(run_dir: str | os.PathLike[str]) -> LabState | None:
    path = Path(run_dir) / STATE_FILE
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    return LabState(
        run_dir=raw["run_dir"],
        prefix=raw["prefix"],
        topology=raw["topology"],
        namespaces=dict(raw["namespaces"]),
        processes=[ProcessRecord(**{**p, "argv": tuple(p["argv"])}) for p in raw["processes"]],
        pods=[PodRecord(**p) for p in raw["pods"]],
        etcd_endpoint=raw.get("etcd_endpoint", ""),
        params=dict(raw.get("params", {})),
    )


def start_time(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses
    return int(stat.rsplit(")", 1)[1].split()[19])


def cmdline(pid: int) -> tuple[str, ...] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return tuple(raw.decode(errors="replace").split("\0")[:-1])


def record_process(role: str, label: str, pid: int, argv: Sequence[str]) -> ProcessRecord:
    """``argv`` is the full command started (``ip netns exec NS prog ...``);
    the record keeps what the process will be after the exec."""
    args = tuple(argv)
    if args[:3] == ("ip", "netns", "exec"):
        args = args[4:]
    t = start_time(pid)
    if t is None:
        raise ProcessLookupError(f"{role} {label}: PID {pid} exited at once")
    return ProcessRecord(role, label, pid, t, args)


def still_ours(rec: ProcessRecord) -> bool:
    """The PID is the process we started: same start time, and its command
    line is ours (or still ``ip netns exec`` a moment before the exec)."""
    if start_time(rec.pid) != rec.start_time:
        return False
    line = cmdline(rec.pid)
    for _ in range(20):
        # /proc/PID/cmdline reads empty for a moment around an exec.
        if line != ():
            break
        time.sleep(0.005)
        line = cmdline(rec.pid)
    if line is None:
        return False
    return line == rec.argv or line[4:] == rec.argv or line[:1] == ("ip",)


def end_processes(records: Sequence[ProcessRecord], grace: float = 5.0) -> list[int]:
    """SIGTERM the records that are still ours, SIGKILL those left after
    ``grace`` seconds; return the PIDs signalled."""
    ours = [r for r in records if still_ours(r)]
    for r in ours:
        with contextlib.suppress(ProcessLookupError):
            os.kill(r.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(still_ours(r) for r in ours):
        _reap(ours)
        time.sleep(0.05)
    for r in ours:
        if still_ours(r):
            with contextlib.suppress(ProcessLookupError):
                os.kill(r.pid, signal.SIGKILL)
    _reap(ours)
    return [r.pid for r in ours]


def _reap(records: Sequence[ProcessRecord]) -> None:
    """Collect our own children so they do not linger as zombies (whose
    /proc entry keeps the start time)."""
    for r in records:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(r.pid, os.WNOHANG)


# what the lab starts; a shell or ``tail -f`` reading the lab's logs is not
LAB_PROGRAMS = ("etcd", "bird", "exabgp", "python", "meshroute")


def processes_under(run_dir: str | os.PathLike[str]) -> list[ProcessRecord]:
    """Processes of the kinds the lab starts with an argument that is a path
    inside ``run_dir`` (the lab's own directory)."""
    root = str(Path(run_dir).resolve()).rstrip("/") + "/"
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        pid = int(entry)
        line = cmdline(pid)
        t = start_time(pid)
        if not line or t is None or not os.path.basename(line[0]).startswith(LAB_PROGRAMS):
            continue
        if any(a.startswith(root) for a in line):
            out.append(ProcessRecord("found", "", pid, t, line))
    return out


def alive(rec: ProcessRecord) -> bool:
    if not still_ours(rec):
        return False
    try:
        state = Path(f"/proc/{rec.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
