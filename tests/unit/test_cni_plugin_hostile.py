"""Hostile input to the real plugin process: whatever arrives on stdin or in
``CNI_*``, the answer is a CNI error object on stdout, a non-zero exit, no
traceback, and an error that quotes at most a short prefix of the input."""

from __future__ import annotations

import pytest

from ipam.cni_plugin import CniError, check_container_id, check_ifname
from tests.harness.cni import cni_env, netconf, run_plugin

MISSING = "/nonexistent/meshroute-test/ipam.sock"
SHORT = 200  # no error is longer than this much of what it was given


def refused(run: object, code: int) -> dict:
    out = run.out  # type: ignore[attr-defined]
    assert run.rc == 1, run  # type: ignore[attr-defined]
    assert b"Traceback" not in run.stderr, run.stderr.decode()  # type: ignore[attr-defined]
    assert out is not None and set(out) >= {"cniVersion", "code", "msg"}, run
    assert out["code"] == code, out
    assert len(run.raw) < 1000, run.raw[:300]  # type: ignore[attr-defined]
    return out


def _conf_text(ipam_tail: str) -> bytes:
    return (
        '{"cniVersion": "1.0.0", "name": "n", "ipam": {"type": "meshroute-cni-ipam", '
        f'"socket": "{MISSING}"{ipam_tail}}}}}'
    ).encode()


@pytest.mark.parametrize(
    ("stdin", "code", "says"),
    [
        (b"[" * 100_000 + b"]" * 100_000, 6, "nested"),
        (b'{"a":' * 50_000 + b"1" + b"}" * 50_000, 6, "nested"),
        (_conf_text(', "timeout": 1e999'), 7, "ipam.timeout"),
        (_conf_text(', "timeout": NaN'), 6, "NaN"),
        (_conf_text(', "timeout": -Infinity'), 6, "Infinity"),
        (_conf_text(', "timeout": 1e9'), 7, "ipam.timeout"),
        (b'{"cniVersion": "1.0.0", "name": "\xff\xfe"}', 6, "UTF-8"),
        (b'{"cniVersion": "1.0.0", "name": "' + b"x" * 10_000_000 + b'"', 6, "decode"),
        (
            b'{"cniVersion": "' + b"9" * 100_000 + b'", "name": "n", "ipam": {}}',
            1,
            "cniVersion",
        ),
    ],
    ids=[
        "deep-list",
        "deep-object",
        "timeout-1e999",
        "timeout-nan",
        "timeout-minus-inf",
        "timeout-huge",
        "invalid-utf8",
        "10MB-unterminated",
        "100KB-version",
    ],
)
def test_hostile_netconf_gets_a_cni_error(stdin: bytes, code: int, says: str) -> None:
    out = refused(run_plugin(cni_env("ADD"), stdin, timeout=30), code)
    assert says in out["msg"] + out.get("details", ""), out


def test_a_long_value_is_quoted_by_a_short_prefix() -> None:
    conf = netconf(MISSING)
    conf["cniVersion"] = "x" * 1_000_000
    out = refused(run_plugin(cni_env("ADD"), conf, timeout=30), 1)
    assert "'xxxxxxxx" in out["msg"] and "(1000000 characters)" in out["msg"]
    assert len(out["msg"]) < SHORT


def test_a_10mb_config_is_refused_by_its_size() -> None:
    conf = netconf(MISSING)
    conf["name"] = "x" * 10_000_000
    out = refused(run_plugin(cni_env("ADD"), conf, timeout=30), 6)
    assert "larger than 4 MiB" in out["msg"]


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("CNI_CONTAINERID", b"abc\xff\xfe"),
        ("CNI_CONTAINERID", b"a" * 100_000),
        ("CNI_CONTAINERID", b"-leading-dash"),
        ("CNI_CONTAINERID", b"has space"),
        ("CNI_CONTAINERID", b"semi;colon"),
        ("CNI_CONTAINERID", "caf\u00e9".encode()),
        ("CNI_IFNAME", b"eth0123456789abc"),  # 16 bytes: one more than IFNAMSIZ allows
        ("CNI_IFNAME", b"a/b"),
        ("CNI_IFNAME", b"a:b"),
        ("CNI_IFNAME", b"a b"),
        ("CNI_IFNAME", b"a\tb"),
        ("CNI_IFNAME", b"."),
        ("CNI_IFNAME", b".."),
        ("CNI_IFNAME", b"\xff"),
        ("CNI_ARGS", b"K8S_POD_NAME=\xff\xfe"),
        ("CNI_ARGS", b"K8S_POD_NAME=" + b"p" * 100_000),
        ("CNI_ARGS", b"K8S_POD_NAMESPACE=" + b"n" * 100_000),
        ("CNI_ARGS", b"IP=" + b"1" * 100_000),
    ],
)
@pytest.mark.parametrize("command", ["ADD", "DEL"])
def test_bad_ids_and_names_are_refused_with_code_4(command: str, var: str, value: bytes) -> None:
    env: dict = cni_env(command)
    env[var] = value
    out = refused(run_plugin(env, netconf(MISSING), timeout=30), 4)
    assert var in out["msg"], out
    assert len(out["msg"]) + len(out.get("details", "")) < SHORT, out


@pytest.mark.parametrize(
    "good",
    ["c1", "0123abcdef" * 6 + "0123", "k8s_POD.web-0_ns", "a" * 128],
)
def test_valid_container_ids(good: str) -> None:
    assert check_container_id(good) == good


@pytest.mark.parametrize("good", ["eth0", "net1", "a" * 15, "veth-x_y.9", "é" * 7])
def test_valid_interface_names(good: str) -> None:
    assert check_ifname(good) == good


@pytest.mark.parametrize("bad", ["é" * 8, "", "a\x00b", "a\nb"])
def test_interface_names_count_bytes_and_refuse_control_characters(bad: str) -> None:
    with pytest.raises(CniError) as e:
        check_ifname(bad)
    assert e.value.code == 4
