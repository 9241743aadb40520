"""The CLI against an etcd that serves TLS only and demands client
certificates: it works with the certificates given by flags or by the
``MESHROUTE_ETCD_*`` environment, and every wrong setting fails at once with
one line naming the problem and the file (no hang, no traceback). Also etcd's
own username/password authentication, on a member with auth enabled."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from datastore.etcd import EtcdStore
from datastore.etcd_tls import EtcdSecurity
from datastore.port import Put, StoreError
from lab.etcd import EtcdCluster, start_etcd
from tests.harness.cli import REPO
from tests.harness.etcd_tls import TlsEtcd

pytestmark = [pytest.mark.etcd]
POOL = """
apiVersion: meshroute.io/v1
kind: IPPool
metadata: {name: pods}
spec: {cidr: 10.244.0.0/16, blockSize: 26}
"""
FAIL_FAST_S = 8  # the default 5 s timeout would be a hang; these fail in well under 1 s


def meshroute(
    env: dict[str, str], *args: str, stdin: str | None = None
) -> tuple[subprocess.CompletedProcess[str], float]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("MESHROUTE_")}
    t = time.monotonic()
    p = subprocess.run(
        [sys.executable, "-m", "meshroute.cli", *args],
        input=stdin,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    return p, time.monotonic() - t


def tls_env(tls: TlsEtcd, prefix: str, **override: str) -> dict[str, str]:
    return {
        "MESHROUTE_ETCD_ENDPOINTS": tls.endpoint,
        "MESHROUTE_PREFIX": prefix,
        **tls.pki.client_env(),
        **override,
    }


def test_cli_over_mtls_from_environment(tls_etcd: TlsEtcd, etcd_prefix: str) -> None:
    env = tls_env(tls_etcd, etcd_prefix)
    p, _ = meshroute(env, "apply", "-f", "-", stdin=POOL)
    assert p.returncode == 0, p.stderr
    p, _ = meshroute(env, "get", "ippools", "-o", "yaml")
    assert p.returncode == 0, p.stderr
    assert "10.244.0.0/16" in p.stdout


def test_cli_over_mtls_from_flags(tls_etcd: TlsEtcd, etcd_prefix: str) -> None:
    cert, key = tls_etcd.pki.client
    flags = [
        f"--etcd-endpoints={tls_etcd.endpoint}",
        f"--prefix={etcd_prefix}",
        f"--etcd-ca-cert-file={tls_etcd.pki.ca.file}",
        f"--etcd-cert-file={cert}",
        f"--etcd-key-file={key}",
    ]
    p, _ = meshroute({}, "apply", "-f", "-", *flags, stdin=POOL)
    assert p.returncode == 0, p.stderr
    p, _ = meshroute({}, "get", "ippools", *flags)
    assert p.returncode == 0, p.stderr
    assert "pods" in p.stdout


def refusal_cases(tls: TlsEtcd, tmp: Path) -> dict[str, tuple[dict[str, str], list[str]]]:
    """name -> (environment overrides, words the one-line error must hold)."""
    pki = tls.pki
    missing = str(tmp / "nowhere.crt")
    exp_cert, exp_key = pki.expired_client
    other_cert, other_key = pki.other_client
    garbage = tmp / "garbage.pem"
    garbage.write_bytes(b"\xff\xfe not a certificate " * 1000)
    return {
        "missing certificate": (
            {"MESHROUTE_ETCD_CERT_FILE": missing},
            ["certFile", missing, "cannot read", "No such file"],
        ),
        "wrong CA": (
            {"MESHROUTE_ETCD_CA_CERT_FILE": str(pki.other_ca.file)},
            ["not trusted by caFile", str(pki.other_ca.file)],
        ),
        "expired certificate": (
            {"MESHROUTE_ETCD_CERT_FILE": str(exp_cert), "MESHROUTE_ETCD_KEY_FILE": str(exp_key)},
            ["certFile", str(exp_cert), "expired on"],
        ),
        "certificate of another CA": (
            {
                "MESHROUTE_ETCD_CERT_FILE": str(other_cert),
                "MESHROUTE_ETCD_KEY_FILE": str(other_key),
            },
            ["refused the client certificate", str(other_cert)],
        ),
        "key of another certificate": (
            {"MESHROUTE_ETCD_KEY_FILE": str(other_key)},
            ["keyFile", str(other_key), "is not the key of certFile"],
        ),
        "no client certificate": (
            {"MESHROUTE_ETCD_CERT_FILE": "", "MESHROUTE_ETCD_KEY_FILE": ""},
            ["demands a client certificate", "certFile"],
        ),
        "not a certificate": (
            {"MESHROUTE_ETCD_CA_CERT_FILE": str(garbage)},
            ["caFile", str(garbage), "not a PEM certificate"],
        ),
        "plain http against TLS": (
            {
                "MESHROUTE_ETCD_ENDPOINTS": f"http://127.0.0.1:{tls.port}",
                "MESHROUTE_ETCD_CA_CERT_FILE": "",
                "MESHROUTE_ETCD_CERT_FILE": "",
                "MESHROUTE_ETCD_KEY_FILE": "",
            },
            ["closed the connection", "use an https:// endpoint"],
        ),
        "http with TLS files": (
            {"MESHROUTE_ETCD_ENDPOINTS": f"http://127.0.0.1:{tls.port}"},
            ["endpoints are http://", "use https://"],
        ),
    }


CASES = [
    "missing certificate",
    "wrong CA",
    "expired certificate",
    "certificate of another CA",
    "key of another certificate",
    "no client certificate",
    "not a certificate",
    "plain http against TLS",
    "http with TLS files",
]


@pytest.mark.parametrize("case", CASES)
def test_a_wrong_tls_setting_fails_fast_naming_the_file(
    tls_etcd: TlsEtcd, etcd_prefix: str, tmp_path: Path, case: str
) -> None:
    override, words = refusal_cases(tls_etcd, tmp_path)[case]
    p, took = meshroute(tls_env(tls_etcd, etcd_prefix, **override), "get", "ippools")
    assert p.returncode == 1, p.stdout + p.stderr
    assert took < FAIL_FAST_S, (took, p.stderr)
    assert p.stdout == ""
    assert "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    for w in words:
        assert w in p.stderr, (w, p.stderr)


def test_https_against_a_plain_etcd_fails_fast(
    tls_etcd: TlsEtcd, etcd_server: EtcdCluster, etcd_prefix: str
) -> None:
    env = tls_env(tls_etcd, etcd_prefix, MESHROUTE_ETCD_ENDPOINTS=f"https://{etcd_server.endpoint}")
    p, took = meshroute(env, "get", "ippools")
    assert p.returncode == 1 and took < FAIL_FAST_S, p.stderr
    assert "closed the TLS handshake" in p.stderr and "use an http://" in p.stderr
    assert "Traceback" not in p.stderr


@pytest.fixture
def auth_etcd(tmp_path: Path) -> Iterator[EtcdCluster]:
    """A member with etcd authentication on: root / s3cret."""
    c = start_etcd(tmp_path / "etcd-auth")
    try:
        ctl = ["etcdctl", f"--endpoints={c.endpoint}"]
        for cmd in (["user", "add", "root:s3cret"], ["auth", "enable"]):
            subprocess.run([*ctl, *cmd], check=True, capture_output=True, timeout=30)
        yield c
    finally:
        c.stop()


def test_username_and_password(auth_etcd: EtcdCluster, tmp_path: Path) -> None:
    async def put_get(password: str) -> bytes | None:
        store = EtcdStore(
            [auth_etcd.endpoint], security=EtcdSecurity(username="root", password=password)
        )
        try:
            await store.txn([], [Put(b"/auth/k", b"v")])
            got = await store.get(b"/auth/k")
            return None if got is None else got.value
        finally:
            await store.close()

    assert asyncio.run(put_get("s3cret")) == b"v"
    with pytest.raises(StoreError, match="authentication failed"):
        asyncio.run(put_get("wrong"))

    # the CLI: the password from a file, never from a flag (ps shows flags)
    secret = tmp_path / "etcd-password"
    secret.write_text("s3cret\n")
    env = {
        "MESHROUTE_ETCD_ENDPOINTS": auth_etcd.endpoint,
        "MESHROUTE_PREFIX": "/auth",
        "MESHROUTE_ETCD_USERNAME": "root",
        "MESHROUTE_ETCD_PASSWORD_FILE": str(secret),
    }
    p, _ = meshroute(env, "apply", "-f", "-", stdin=POOL)
    assert p.returncode == 0, p.stderr
    secret.write_text("wrong\n")
    p, took = meshroute(env, "get", "ippools")
    assert p.returncode == 1 and "authentication failed" in p.stderr, p.stderr
    assert "wrong" not in p.stderr and took < FAIL_FAST_S


def test_a_refused_token_is_replaced_by_logging_in_again(auth_etcd: EtcdCluster) -> None:
    """etcd forgets simple tokens after 5 idle minutes: a call, and a watch,
    refused for the token log in again. The stand-in for an expired token is
    one etcd never issued, at an index it has reached (a later index makes
    etcd wait for it instead of refusing)."""

    async def main() -> None:
        store = EtcdStore(
            [auth_etcd.endpoint], security=EtcdSecurity(username="root", password="s3cret")
        )
        try:
            start = await store.txn([], [Put(b"/auth/t", b"1")])
            issued = store._token
            assert issued is not None
            expired = "x" * len(issued.partition(".")[0]) + "." + issued.partition(".")[2]
            store._token = expired
            got = await store.get(b"/auth/t")
            assert got is not None and got.value == b"1"
            assert store._token not in (None, expired)

            store._token = expired
            stream = store.changes(b"/auth/", start)
            nxt = asyncio.ensure_future(anext(stream))
            await asyncio.sleep(0.5)
            rev = await store.txn([], [Put(b"/auth/t", b"2")])
            seen = await asyncio.wait_for(nxt, 15)
            while seen < rev:  # the resume tick comes first; the change follows
                seen = await asyncio.wait_for(anext(stream), 15)
            await stream.aclose()  # type: ignore[attr-defined]
        finally:
            await store.close()

    asyncio.run(main())


def test_ipam_serve_over_mtls_and_refused_without_a_certificate(
    tls_etcd: TlsEtcd, etcd_prefix: str, tmp_path: Path
) -> None:
    """The CNI path's etcd client: ``meshroute ipam serve`` (the plugin
    itself only talks to it over its socket)."""
    sock = tmp_path / "ipam.sock"
    args = ["ipam", "serve", "--host", "n1", "--socket", str(sock)]
    base = {k: v for k, v in os.environ.items() if not k.startswith("MESHROUTE_")}
    with subprocess.Popen(
        [sys.executable, "-m", "meshroute.cli", *args],
        env={**base, **tls_env(tls_etcd, etcd_prefix)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    ) as p:
        try:
            assert p.stdout is not None
            assert "ready on" in p.stdout.readline()
            assert sock.exists()
        finally:
            p.terminate()
            p.wait(20)
    bad = tls_env(tls_etcd, etcd_prefix, MESHROUTE_ETCD_CERT_FILE="", MESHROUTE_ETCD_KEY_FILE="")
    r, took = meshroute(bad, *args)
    assert r.returncode == 1 and took < FAIL_FAST_S
    assert (
        r.stderr.startswith("meshroute: cannot start: ")
        and "demands a client certificate" in r.stderr
    )


def test_renewed_certificates_are_read_on_reconnection(tls_etcd: TlsEtcd, tmp_path: Path) -> None:
    """The files are read again whenever the client reconnects: a renewed
    certificate is taken up without a restart, and a broken renewal keeps
    the files read before (logged), rather than losing etcd."""
    pki = tls_etcd.pki
    cert, key = tmp_path / "client.crt", tmp_path / "client.key"

    def install(pair: tuple[Path, Path]) -> None:
        cert.write_bytes(pair[0].read_bytes())
        key.write_bytes(pair[1].read_bytes())

    async def main() -> None:
        install(pki.client)
        store = EtcdStore(
            [tls_etcd.endpoint], security=EtcdSecurity(str(pki.ca.file), str(cert), str(key))
        )
        try:
            await store.txn([], [Put(b"/renew/k", b"1")])
            install(pki.other_client)  # valid, but signed by a CA etcd does not trust
            await store.close()  # the next call reconnects
            with pytest.raises(StoreError, match="refused the client certificate"):
                await store.get(b"/renew/k")
            install(pki.client)
            await store.close()
            assert await store.get(b"/renew/k") is not None
            key.write_text("not a key")  # a broken renewal: keep what was read
            await store.close()
            assert await store.get(b"/renew/k") is not None
        finally:
            await store.close()

    asyncio.run(main())
