"""What the kernel under the lab can do, read without changing it: whether
it has the ipip module (loaded, built in, or loadable). Loading it would add
``tunl0`` to every namespace, the root one included, so this only looks."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path


def _modprobe_dry_run(module: str) -> bool:
    try:
        p = subprocess.run(["modprobe", "-n", "-q", module], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return p.returncode == 0


def kernel_has_module(
    module: str,
    sys_module: Path = Path("/sys/module"),
    loadable: Callable[[str], bool] = _modprobe_dry_run,
) -> bool:
    """Loaded or built in (``/sys/module/NAME``), or found by modprobe."""
    return (sys_module / module).exists() or loadable(module)
