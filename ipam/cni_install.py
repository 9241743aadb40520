"""Install the CNI plugins (``meshroute-cni-ipam`` and ``meshroute-cni``)
where a container runtime looks for plugins (``/opt/cni/bin`` usually), as
small launchers for this Python.

Why not copy or link the ``meshroute-cni-ipam`` console script: the runtime
starts the plugin once per pod, and a venv interpreter with ``site`` spends
most of its start processing ``.pth`` files (an editable install's import
finder alone costs ~10 ms of CPU here). The launcher runs the interpreter
with ``-I -S`` (isolated, no ``site``): the plugin needs only the standard
library and the ``ipam`` package directory, which the launcher puts on the
path itself. Isolated mode also keeps the runtime's environment
(``PYTHONPATH`` and friends) from changing what runs.

``meshroute-cni-install /opt/cni/bin`` (a console script, so any Python
works: it installs a launcher for the interpreter it runs under).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import ipam

PLUGIN_NAME = "meshroute-cni-ipam"
MAIN_PLUGIN_NAME = "meshroute-cni"  # the same module; the netconf's type tells them apart
MAX_SHEBANG = 127  # the kernel's limit before Linux 5.1


def render_launcher(python: str, package_root: str, name: str = PLUGIN_NAME) -> str:
    shebang = f"#!{python} -IS"
    if any(c.isspace() for c in python) or len(shebang) > MAX_SHEBANG:
        raise ValueError(f"interpreter path {python!r} cannot be used in a #! line")
    return (
        f"{shebang}\n"
        f"# {name}: written by 'python -m ipam.cni_install'; see ipam/cni_install.py\n"
        "import sys\n"
        f"sys.path.insert(0, {package_root!r})\n"
        "from ipam.cni_plugin import main\n"
        "sys.exit(main())\n"
    )


def install_plugins(dest_dir: str | os.PathLike[str], python: str = sys.executable) -> list[Path]:
    """Both plugins: ``meshroute-cni-ipam`` and ``meshroute-cni``."""
    return [install_plugin(dest_dir, python, n) for n in (PLUGIN_NAME, MAIN_PLUGIN_NAME)]


def install_plugin(
    dest_dir: str | os.PathLike[str], python: str = sys.executable, name: str = PLUGIN_NAME
) -> Path:
    """Write the launcher into ``dest_dir`` atomically (a runtime may be
    executing the old one) and return its path."""
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    root = str(Path(ipam.__file__).resolve().parent.parent)
    text = render_launcher(python, root, name)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=dest)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o755)
        target = dest / name
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return target


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: meshroute-cni-install DIR   (e.g. /opt/cni/bin)", file=sys.stderr)
        return 2
    for path in install_plugins(args[0]):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
