"""The CNI installer as an image runs it for a host: the plugin's modules
copied to a library directory and run from there by another interpreter
(isolated: nothing of this checkout or venv), the reference plugins copied
beside the launcher."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from ipam.cni_install import main

HOST_PYTHON = "/usr/bin/python3"  # not the venv's: what a host has


def test_install_for_the_host(tmp_path: Path) -> None:
    plugins = tmp_path / "usr-lib-cni"
    plugins.mkdir()
    (plugins / "bridge").write_text("#!/bin/sh\necho bridge\n")
    (plugins / "bridge").chmod(0o755)
    (plugins / "README").write_text("not a plugin")
    bin_dir, lib = tmp_path / "opt-cni" / "bin", tmp_path / "opt-cni" / "meshroute"
    args = [str(bin_dir), "--python", HOST_PYTHON, "--lib", str(lib), "--plugins", str(plugins)]
    assert main(args) == 0
    assert sorted(os.listdir(bin_dir)) == ["bridge", "meshroute-cni", "meshroute-cni-ipam"]
    assert sorted(os.listdir(lib / "ipam")) == [
        "__init__.py",
        "cni_args.py",
        "cni_json.py",
        "cni_plugin.py",
        "quoting.py",
    ]
    for plugin in ("meshroute-cni-ipam", "meshroute-cni"):
        p = subprocess.run(
            [str(bin_dir / plugin)],
            input="{}",
            env={"CNI_COMMAND": "VERSION", "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert p.returncode == 0, p.stderr
        assert "1.0.0" in json.loads(p.stdout)["supportedVersions"]
    assert main([str(bin_dir), "--plugins", str(tmp_path / "missing")]) == 1
    # in a container the host sees the library elsewhere
    main([str(bin_dir), "--lib", str(lib), "--lib-on-host", "/opt/cni/meshroute"])
    assert (
        "sys.path.insert(0, '/opt/cni/meshroute')" in (bin_dir / "meshroute-cni-ipam").read_text()
    )
