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

From a container image (``meshroute-entrypoint install-cni``), the host runs
the plugin with its own interpreter: ``--python /usr/bin/python3 --lib
/opt/cni/meshroute`` copies the plugin's few standard-library-only modules
there for the launcher (``--lib-on-host`` when the host sees that directory
elsewhere), and ``--plugins /usr/lib/cni`` copies the image's reference
plugins (bridge, host-local, ...) next to it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

import ipam

PLUGIN_NAME = "meshroute-cni-ipam"
MAIN_PLUGIN_NAME = "meshroute-cni"  # the same module; the netconf's type tells them apart
# what the plugin imports: nothing else of ``ipam``, nothing outside the stdlib
PLUGIN_MODULES = ("__init__.py", "cni_plugin.py", "cni_json.py", "cni_args.py", "quoting.py")
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


def _atomic_copy(src: Path, dest: Path, mode: int) -> None:
    """``dest`` replaced whole: a runtime may be executing the old one."""
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as out, open(src, "rb") as f:
            shutil.copyfileobj(f, out)
        os.chmod(tmp, mode)
        os.replace(tmp, dest)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def copy_plugin_package(lib: str | os.PathLike[str]) -> Path:
    """The modules the plugin runs from, under ``lib/ipam``."""
    here = Path(ipam.__file__).resolve().parent
    dest = Path(lib) / "ipam"
    dest.mkdir(parents=True, exist_ok=True)
    for name in PLUGIN_MODULES:
        _atomic_copy(here / name, dest / name, 0o644)
    return Path(lib)


def copy_reference_plugins(
    src: str | os.PathLike[str], dest_dir: str | os.PathLike[str]
) -> list[str]:
    """Every executable in ``src`` (Debian's /usr/lib/cni) into ``dest_dir``."""
    Path(dest_dir).mkdir(parents=True, exist_ok=True)
    copied = []
    for f in sorted(Path(src).iterdir()):
        if f.is_file() and os.access(f, os.X_OK):
            _atomic_copy(f, Path(dest_dir) / f.name, 0o755)
            copied.append(f.name)
    return copied


def install_plugins(
    dest_dir: str | os.PathLike[str],
    python: str = sys.executable,
    package_root: str | os.PathLike[str] | None = None,
) -> list[Path]:
    """Both plugins: ``meshroute-cni-ipam`` and ``meshroute-cni``."""
    return [
        install_plugin(dest_dir, python, n, package_root) for n in (PLUGIN_NAME, MAIN_PLUGIN_NAME)
    ]


def install_plugin(
    dest_dir: str | os.PathLike[str],
    python: str = sys.executable,
    name: str = PLUGIN_NAME,
    package_root: str | os.PathLike[str] | None = None,
) -> Path:
    """Write the launcher into ``dest_dir`` atomically (a runtime may be
    executing the old one) and return its path."""
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    root = str(package_root or Path(ipam.__file__).resolve().parent.parent)
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
    p = argparse.ArgumentParser(
        prog="meshroute-cni-install",
        usage="meshroute-cni-install DIR [--python PY] [--lib DIR [--lib-on-host DIR]]"
        " [--plugins DIR]",
        description="Install meshroute's CNI IPAM plugin (DIR: e.g. /opt/cni/bin).",
    )
    p.add_argument("dir", help="the runtime's CNI plugin directory, e.g. /opt/cni/bin")
    p.add_argument("--python", default=sys.executable, help="interpreter the launcher runs")
    p.add_argument("--lib", help="copy the plugin's modules here and run them from here")
    p.add_argument(
        "--lib-on-host",
        help="where the host sees --lib, when this runs in a container that mounts it elsewhere",
    )
    p.add_argument("--plugins", help="also copy every plugin in this directory (/usr/lib/cni)")
    args = p.parse_args(argv)
    try:
        root = copy_plugin_package(args.lib) if args.lib else None
        if root is not None and args.lib_on_host:
            root = Path(args.lib_on_host)
        if args.plugins:
            names = copy_reference_plugins(args.plugins, args.dir)
            print(f"{args.dir}: {' '.join(names)}")
        for path in install_plugins(args.dir, args.python, root):
            print(path)
    except (OSError, ValueError) as e:
        print(f"meshroute-cni-install: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
