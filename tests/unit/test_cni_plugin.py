"""The CNI plugin on its own: spec error codes for bad input, VERSION, a
clear and fast error when the IPAM service is down or silent, and a start
that imports nothing heavy."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from ipam.cni_install import install_plugin
from ipam.cni_plugin import (
    CniError,
    format_result,
    parse_cni_args,
    plan_request,
)
from tests.harness.cni import cni_env, netconf, run_plugin

MISSING = "/nonexistent/meshroute-test/ipam.sock"


def error_code(run: object) -> int:
    out = run.out  # type: ignore[attr-defined]
    assert run.rc != 0, run  # type: ignore[attr-defined]
    assert out is not None and set(out) >= {"cniVersion", "code", "msg"}, run
    assert isinstance(out["msg"], str) and out["msg"]
    return int(out["code"])


def test_version_lists_supported_versions() -> None:
    r = run_plugin(cni_env("VERSION", None, None, None), b"")
    assert r.rc == 0
    assert r.out == {
        "cniVersion": "1.0.0",
        "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0"],
    }


@pytest.mark.parametrize(
    ("env", "stdin", "code"),
    [
        ({"CNI_COMMAND": None}, netconf(MISSING), 4),
        ({"CNI_COMMAND": "SHRED"}, netconf(MISSING), 4),
        ({"CNI_CONTAINERID": None}, netconf(MISSING), 4),
        ({"CNI_IFNAME": None}, netconf(MISSING), 4),
        ({"CNI_NETNS": None}, netconf(MISSING), 4),
        ({"CNI_ARGS": "K8S_POD_NAME"}, netconf(MISSING), 4),
        ({}, b"{not json", 6),
        ({}, b"[1, 2]", 6),
        ({}, b"", 6),
        ({}, netconf(MISSING, version="0.2.0"), 1),
        ({}, netconf(MISSING, version="9.9.9"), 1),
        ({}, {"cniVersion": "1.0.0", "name": "n"}, 7),
        ({}, {"cniVersion": "1.0.0", "ipam": {"type": "x"}}, 7),
        ({}, {"name": "n", "ipam": {"type": "x"}}, 7),
        ({}, netconf(MISSING, assign_ipv4="maybe"), 7),
        ({}, netconf(MISSING, assign_ipv4=False), 7),
        ({}, netconf(MISSING, ipv4_pools="p"), 7),
        ({}, netconf(MISSING, timeout=-1), 7),
    ],
)
def test_bad_input_gets_the_spec_error_code(env: dict, stdin: object, code: int) -> None:
    e = cni_env("ADD")
    for k, v in env.items():
        if v is None:
            e.pop(k, None)
        else:
            e[k] = v
    r = run_plugin(e, stdin)  # type: ignore[arg-type]
    assert error_code(r) == code, r.out


def test_error_names_the_requested_version() -> None:
    r = run_plugin(cni_env("ADD"), netconf(MISSING, version="0.4.0"))
    assert r.out is not None and r.out["cniVersion"] == "0.4.0"


def test_check_needs_04_and_a_prev_result() -> None:
    r = run_plugin(cni_env("CHECK"), netconf(MISSING, version="0.3.1"))
    assert error_code(r) == 1
    r = run_plugin(cni_env("CHECK"), netconf(MISSING, version="1.0.0"))
    assert error_code(r) == 7
    assert "prevResult" in r.out["msg"]  # type: ignore[index]


@pytest.mark.parametrize("command", ["ADD", "DEL", "CHECK"])
def test_service_down_is_a_clear_fast_error(command: str) -> None:
    conf = netconf(MISSING)
    conf["prevResult"] = {"cniVersion": "1.0.0", "ips": [{"address": "10.244.0.2/26"}]}
    r = run_plugin(cni_env(command), conf, timeout=10)
    assert error_code(r) == 101
    assert MISSING in r.out["msg"]  # type: ignore[index]
    assert "meshroute ipam serve" in r.out["details"]  # type: ignore[index]
    assert r.seconds < 2.0


def test_silent_service_times_out_instead_of_hanging(tmp_path: Path) -> None:
    path = str(tmp_path / "silent.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(path)
        listener.listen(4)  # accepts connections into the backlog, never answers
        r = run_plugin(cni_env("ADD"), netconf(path, timeout=0.5), timeout=10)
    finally:
        listener.close()
    assert error_code(r) == 101
    assert "did not answer" in r.out["msg"]  # type: ignore[index]
    assert r.seconds < 2.0


@pytest.mark.parametrize(
    "reply",
    [b'{"ok": false, "code": "x"}\n', b'{"ok": true, "ips": [{"addr": 1}]}\n', b"[" * 5000 + b"\n"],
)
def test_malformed_service_reply_is_a_cni_error(tmp_path: Path, reply: bytes) -> None:
    """Whatever the socket answers, the runtime gets a CNI error object."""
    path = str(tmp_path / "odd.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)

    def answer() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(reply)

    t = threading.Thread(target=answer)
    t.start()
    try:
        r = run_plugin(cni_env("ADD"), netconf(path), timeout=10)
    finally:
        t.join(10)
        listener.close()
    assert error_code(r) in (101, 110)
    assert b"Traceback" not in r.stderr


def test_stale_socket_file_is_service_unavailable(tmp_path: Path) -> None:
    path = str(tmp_path / "stale.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.close()  # the file stays, nobody listens: ECONNREFUSED
    r = run_plugin(cni_env("ADD"), netconf(path), timeout=10)
    assert error_code(r) == 101
    assert r.seconds < 2.0


def test_plugin_start_imports_no_heavy_module() -> None:
    p = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import ipam.cni_plugin"],
        capture_output=True,
        text=True,
        check=True,
    )
    modules = {line.split("|")[-1].strip() for line in p.stderr.splitlines() if "|" in line}
    assert "ipam.cni_plugin" in modules
    heavy = {"netaddr", "datastore", "ssl", "asyncio", "typing", "dataclasses", "json"}
    ours = {
        m
        for m in modules
        if m.split(".")[0] in ("ipam", "meshroute", "bgpd", "felix_lite", "rtnetlink")
    }
    assert not (modules & heavy), modules & heavy
    assert ours == {"ipam", "ipam.cni_plugin", "ipam.cni_json", "ipam.quoting", "ipam.cni_args"}


# ---- the pure parts ---------------------------------------------------------


def test_cni_args_parse_and_refuse_garbage() -> None:
    assert parse_cni_args("IgnoreUnknown=1;K8S_POD_NAME=web-0;IP=10.0.0.5") == {
        "IgnoreUnknown": "1",
        "K8S_POD_NAME": "web-0",
        "IP": "10.0.0.5",
    }
    assert parse_cni_args("") == {}
    with pytest.raises(CniError) as e:
        parse_cni_args("a=1;junk")
    assert e.value.code == 4


def test_add_request_carries_pod_pools_and_requested_ips() -> None:
    conf = netconf(MISSING, assign_ipv6="true", ipv4_pools=["a"], ips=["10.1.0.5/24"])
    conf["runtimeConfig"] = {"ips": ["10.1.0.6"]}
    conf["args"] = {"cni": {"ips": ["fd00::7"]}}
    env = cni_env(
        "ADD", "cid", "net1", CNI_ARGS="K8S_POD_NAMESPACE=ns;K8S_POD_NAME=web;IP=10.1.0.8,10.1.0.9"
    )
    req = plan_request("ADD", env, conf)
    assert req == {
        "op": "add",
        "containerId": "cid",
        "ifname": "net1",
        "network": "meshroute-test",
        "namespace": "ns",
        "pod": "web",
        "labels": {},
        "ports": [],
        "ipv4": True,
        "ipv6": True,
        "ipv4Pools": ["a"],
        "ipv6Pools": [],
        "ips": ["10.1.0.5", "10.1.0.6", "fd00::7", "10.1.0.8", "10.1.0.9"],
    }


def test_check_request_expects_the_prev_result_addresses() -> None:
    conf = netconf(MISSING)
    conf["prevResult"] = {"ips": [{"address": "10.1.0.5/26"}, {"address": "fd00::5/122"}]}
    req = plan_request("CHECK", cni_env("CHECK"), conf)
    assert req["expect"] == ["10.1.0.5", "fd00::5"]


def test_result_shape_per_version() -> None:
    reply = {
        "ok": True,
        "ips": [
            {"address": "10.1.0.5/26", "gateway": "10.1.0.1"},
            {"address": "fd00::5/128"},
        ],
        "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.0.1"}],
    }
    new = format_result("1.0.0", reply)
    assert new["cniVersion"] == "1.0.0"
    assert new["ips"] == [
        {"address": "10.1.0.5/26", "gateway": "10.1.0.1"},
        {"address": "fd00::5/128"},
    ]
    assert new["routes"] == [{"dst": "0.0.0.0/0", "gw": "10.1.0.1"}]
    old = format_result("0.3.1", reply)
    assert [ip["version"] for ip in old["ips"]] == ["4", "6"]
    json.dumps(old)


def test_installed_launcher_runs_the_plugin_without_site(tmp_path: Path) -> None:
    launcher = install_plugin(tmp_path / "opt-cni-bin")
    assert launcher.name == "meshroute-cni-ipam"
    assert launcher.stat().st_mode & 0o777 == 0o755
    assert launcher.read_text().startswith(f"#!{sys.executable} -IS\n")
    install_plugin(tmp_path / "opt-cni-bin")  # again: replaced in place
    assert [p.name for p in launcher.parent.iterdir()] == ["meshroute-cni-ipam"]

    env = cni_env("VERSION", None, None, None, PYTHONPATH="/nonexistent")
    p = subprocess.run([str(launcher)], input=b"", env=env, capture_output=True, timeout=20)
    assert p.returncode == 0 and json.loads(p.stdout)["supportedVersions"][-1] == "1.0.0"

    p = subprocess.run(
        [sys.executable, "-IS", "-X", "importtime", str(launcher)],
        input=json.dumps(netconf(MISSING)).encode(),
        env=cni_env("ADD"),
        capture_output=True,
        timeout=20,
    )
    assert json.loads(p.stdout)["code"] == 101
    modules = {
        line.split("|")[-1].strip() for line in p.stderr.decode().splitlines() if "|" in line
    }
    assert "ipam.cni_plugin" in modules
    assert not modules & {"re", "json", "enum", "site", "typing"}, modules


@pytest.mark.parametrize("name", ["10-meshroute.conflist", "10-meshroute-bridge.conflist"])
def test_example_network_configs_are_accepted(name: str) -> None:
    """configs/cni/: what a runtime would hand each plugin (the list's
    cniVersion and name, then the plugin's own section)."""
    conflist = json.loads((Path(__file__).parents[2] / "configs" / "cni" / name).read_text())
    [plugin] = conflist["plugins"]
    conf = {"cniVersion": conflist["cniVersion"], "name": conflist["name"], **plugin}
    env = cni_env("ADD", CNI_ARGS="K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0;MESHROUTE_LABELS=a=b")
    req = plan_request("ADD", env, conf)
    assert (req["namespace"], req["pod"], req["labels"]) == ("shop", "web-0", {"a": "b"})
    assert ("attach" in req) == (plugin["type"] == "meshroute-cni")
