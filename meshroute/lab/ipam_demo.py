"""The IPAM demo (``make demo`` until the node lab replaces it): a real etcd
on loopback, pools applied from ``configs/pools.yaml``, the host's IPAM
service, and pods created by Debian's CNI ``bridge`` plugin with
``meshroute-cni-ipam`` inside a host network namespace; then a ping matrix,
``ipam show``, ``ipam check``, and every pod deleted again."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ipam.cni_install import install_plugin
from meshroute.lab.etcd import start_etcd
from meshroute.lab.netns import Netns, NetnsFactory

BRIDGE_PLUGIN = "/usr/lib/cni/bridge"
LAB_PREFIX = "mrlab"
REPO = Path(__file__).resolve().parents[2]


def _say(msg: str) -> None:
    print(f"==> {msg}", flush=True)


def _meshroute(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshroute.cli", *args], env=env, capture_output=True, text=True
    )


def _cni(
    host: Netns, command: str, pod: Netns, cid: str, conf: dict[str, Any], cni_path: str
) -> dict[str, Any]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": cid,
        "CNI_NETNS": f"/var/run/netns/{pod.name}",
        "CNI_IFNAME": "eth0",
        "CNI_PATH": cni_path,
        "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE=demo;K8S_POD_NAME={cid}",
    }
    p = subprocess.run(
        ["ip", "netns", "exec", host.name, BRIDGE_PLUGIN],
        input=json.dumps(conf),
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    if p.returncode != 0:
        raise RuntimeError(f"CNI {command} for {cid} failed: {p.stdout.strip()} {p.stderr.strip()}")
    return json.loads(p.stdout) if p.stdout.strip() else {}


def run_demo(pods: int = 3, say: Callable[[str], None] = _say) -> int:
    """Run the demo; return 0 when every pod reached every other pod and
    IPAM was consistent before and after."""
    failures = 0
    work = Path(tempfile.mkdtemp(prefix="meshroute-demo-"))
    nsf = NetnsFactory(prefix=LAB_PREFIX)
    etcd = None
    service: subprocess.Popen[str] | None = None
    try:
        say("starting etcd on loopback")
        etcd = start_etcd(work / "etcd")
        env = {**os.environ, "MESHROUTE_ETCD": etcd.endpoint, "MESHROUTE_PREFIX": "/demo"}
        say(f"etcd {etcd.endpoint} is healthy; applying configs/pools.yaml")
        applied = _meshroute("apply", "-f", str(REPO / "configs" / "pools.yaml"), env=env)
        print(applied.stdout + applied.stderr, end="")
        if applied.returncode:
            return 1
        print(_meshroute("get", "pools", env=env).stdout)

        sock = str(work / "ipam.sock")
        say("starting the IPAM service for host demo-node1 (L2 segment mode, for the bridge)")
        service = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "meshroute.cli",
                "ipam",
                "serve",
                "--host",
                "demo-node1",
                "--labels",
                "rack=r1",
                "--socket",
                sock,
                "--l2-segment",
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert service.stdout is not None
        line = service.stdout.readline()
        if "ready" not in line:
            print(line + service.stdout.read(), end="")
            return 1
        print("   " + line.strip())

        cni_dir = work / "cni-bin"
        install_plugin(cni_dir)
        cni_path = f"{cni_dir}:{os.path.dirname(BRIDGE_PLUGIN)}"
        conf = {
            "cniVersion": "1.0.0",
            "name": "meshroute-demo",
            "type": "bridge",
            "bridge": "cni0",
            "isGateway": True,
            "ipam": {"type": "meshroute-cni-ipam", "socket": sock},
        }
        host = nsf.new("node1")
        say(f"host namespace {host.name}; creating {pods} pods through the bridge plugin")
        made: list[tuple[Netns, str, str]] = []
        for i in range(pods):
            pod = nsf.new(f"pod{i}")
            cid = f"demo-pod-{i}"
            res = _cni(host, "ADD", pod, cid, conf, cni_path)
            ip = res["ips"][0]["address"]
            made.append((pod, cid, ip.split("/")[0]))
            print(f"   {cid}: {ip} gateway {res['ips'][0].get('gateway')}")

        say("ping matrix (from row to column)")
        names = [cid for _, cid, _ in made]
        print("   " + " ".join(f"{n:>12}" for n in ["", *names]))
        for src, scid, _ in made:
            cells = []
            for _, _, dip in made:
                ok = src.sh(f"ping -c1 -W2 {dip} >/dev/null 2>&1; echo $?", check=False).strip()
                cells.append("ok" if ok == "0" else "FAIL")
                failures += ok != "0"
            print("   " + " ".join(f"{c:>12}" for c in [scid, *cells]))

        say("meshroute ipam show")
        print(_meshroute("ipam", "show", env=env).stdout)
        check = _meshroute("ipam", "check", env=env)
        say(f"meshroute ipam check: {check.stdout.strip()}")
        failures += check.returncode != 0

        say("deleting the pods (CNI DEL releases their addresses)")
        for pod, cid, _ in made:
            _cni(host, "DEL", pod, cid, conf, cni_path)
        show = json.loads(_meshroute("ipam", "show", "--json", env=env).stdout)
        left = sum(p["allocated"] for p in show["pools"].values())
        say(f"addresses still allocated after DEL: {left}")
        failures += left != 0
    finally:
        say("cleaning up namespaces and processes")
        if service is not None and service.poll() is None:
            service.terminate()
            try:
                service.wait(10)
            except subprocess.TimeoutExpired:
                service.kill()
        nsf.cleanup()
        if etcd is not None:
            etcd.stop()
    say("demo passed" if not failures else f"demo FAILED ({failures} problems)")
    return 0 if not failures else 1


def wait_for(pred: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return False
