"""The soak's plot: node RSS, open fds, kernel routes and live pods over
time, faults shaded (matplotlib, from the ``[soak]`` extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.soak.core import FaultRecord


def plot(samples: list[dict[str, Any]], faults: list[FaultRecord], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ts = [s["t"] / 60 for s in samples]
    names = sorted({n for s in samples for n in s["nodes"]})
    fig, axes = plt.subplots(4, 1, figsize=(10, 11), sharex=True)
    for name in names:
        pts = [(s["t"] / 60, s["nodes"][name]) for s in samples if name in s["nodes"]]
        axes[0].plot([t for t, _ in pts], [v["rss_kib"] / 1024 for _, v in pts], label=name)
        axes[1].plot([t for t, _ in pts], [v["fds"] for _, v in pts], label=name)
    axes[2].plot(ts, [s["routes"] or 0 for s in samples], color="tab:green")
    axes[3].plot(ts, [s["pods"] for s in samples], color="tab:purple")
    for ax, label in zip(
        axes, ("node RSS (MiB)", "node open fds", "kernel routes", "live pods"), strict=True
    ):
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        for f in faults:
            end = f.end_s if f.end_s is not None else f.start_s
            ax.axvspan(f.start_s / 60, end / 60, color="tab:red", alpha=0.12)
    axes[0].legend(fontsize=7, loc="lower right")
    axes[-1].set_xlabel("minutes (red: a fault in progress)")
    fig.suptitle("meshroute soak: 4 nodes, ToR topology, routed pods")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
