"""`python -m bench`: every benchmark in one run, its JSON lines kept in ``bench/results/``.

The README's benchmark table quotes one such file, so a reader can check each
figure against the run it came from: the file's first line says when, on how
many cores, at which commit and under what load the run happened.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
from pathlib import Path

from bench.report import require_root

BENCHES: tuple[tuple[str, ...], ...] = (
    ("bench.ipam",),
    ("bench.cni_routed",),
    ("bench.routes", "--routes", "100000"),
    ("bench.rib_ingest", "--prefixes", "100000"),
    ("bench.bgp_ingest", "--prefixes", "100000"),
    ("bench.bgp_ingest", "--prefixes", "10000"),
    ("bench.churn", "--prefixes", "100000"),
    ("bench.convergence",),
    ("bench.reflector", "--clients", "200", "--prefixes", "4000"),
    ("bench.policy", "--pods", "5000", "--policies", "500"),
    ("bench.nft_txn", "--pods", "5000", "--policies", "500"),
    ("bench.failover",),
    ("bench.services", "--services", "1000"),
)


def _commit() -> str:
    done = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    )
    return done.stdout.strip() or "unknown"


def _run_one(bench: tuple[str, ...]) -> dict[str, object]:
    """One benchmark as a child process; its last stdout line is its JSON result."""
    command = [sys.executable, "-m", *bench, "--json"]
    print("$", " ".join(["python", "-m", *bench, "--json"]), flush=True)
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=False)
    lines = done.stdout.strip().splitlines()
    entry: dict[str, object] = {"command": " ".join(["python", "-m", *bench, "--json"])}
    try:
        entry["result"] = json.loads(lines[-1]) if done.returncode == 0 and lines else None
    except json.JSONDecodeError:
        entry["result"] = None
    if entry["result"] is None:
        entry["error"] = f"exit {done.returncode}; last line: {(lines or [''])[-1][:200]!r}"
    print(json.dumps(entry["result"] if entry["result"] is not None else entry), flush=True)
    return entry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--only", nargs="*", help="module names to run (default: all)")
    args = parser.parse_args(argv)
    require_root("python -m bench")
    chosen = [b for b in BENCHES if not args.only or b[0] in args.only]
    started = datetime.datetime.now(datetime.UTC)
    header = {
        "date": started.isoformat(timespec="seconds"),
        "cores": os.cpu_count(),
        "commit": _commit(),
        "kernel": os.uname().release,
        "loadavg_1m_at_start": round(os.getloadavg()[0], 2),
    }
    entries = [_run_one(b) for b in chosen]
    header["loadavg_1m_at_end"] = round(os.getloadavg()[0], 2)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{started:%Y-%m-%dT%H%MZ}-{os.cpu_count()}cores.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in [header, *entries]))
    print(f"kept in {path}")
    return 1 if any("error" in e for e in entries) else 0


if __name__ == "__main__":
    raise SystemExit(main())
