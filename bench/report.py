"""What every benchmark shares: the root check, the alternation of sides and the printed result.

A benchmark's last line is one JSON object; before it, unless ``--json``, one
line per figure (the raw ``samples`` keys are left to the JSON).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any, TypeVar

T = TypeVar("T")


def require_root(bench: str) -> None:
    """Exit with a message when not root: the benchmarks build network namespaces."""
    if os.geteuid() != 0:
        raise SystemExit(f"{bench} needs root (network namespaces)")


def alternating(i: int, sides: Sequence[T]) -> Sequence[T]:
    """The sides in round ``i``'s order: as given on even rounds, reversed on odd ones."""
    return sides if i % 2 == 0 else sides[::-1]


def print_result(result: dict[str, Any], json_only: bool, *, width: int | None = None) -> None:
    """Print the figures one a line (``key: value``, or padded to ``width``), then the JSON."""
    if not json_only:
        for k, v in result.items():
            if not k.startswith("samples"):
                print(f"{k}: {v}" if width is None else f"{k:{width}} {v}")
    print(json.dumps(result))
