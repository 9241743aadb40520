"""Where etcd settings come from (file, environment, precedence) and what
the TLS layer refuses before any connection."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from datastore.etcd_tls import EtcdSecurity, explain, load_credentials, parse_endpoints
from datastore.port import StoreError
from meshroute.etcd_options import security_of, with_environment
from meshroute.reflector.config import ReflectorConfig
from meshroute.runtime.config import EtcdSection, load_config
from tests.harness.etcd_tls import Pki

REPO = Path(__file__).resolve().parents[2]


def test_the_shipped_reflector_example_loads_with_tls() -> None:
    c = load_config(str(REPO / "configs" / "reflector.yaml"), ReflectorConfig)
    tls, endpoints = parse_endpoints(c.etcd.endpoints, security_of(c.etcd, {}))
    assert tls and len(endpoints) == 3 and c.etcd.cert_file


def test_the_environment_overrides_the_file() -> None:
    section = EtcdSection.model_validate({"endpoints": ["a:1"], "caFile": "/file/ca"})
    env = {
        "MESHROUTE_ETCD_ENDPOINTS": "https://b:2, https://c:3",
        "MESHROUTE_ETCD_CERT_FILE": "/env/c",
        "MESHROUTE_ETCD_KEY_FILE": "",  # empty: not set
    }
    got = with_environment(section, env)
    assert got.endpoints == ["https://b:2", "https://c:3"]
    assert (got.ca_file, got.cert_file, got.key_file) == ("/file/ca", "/env/c", None)
    assert with_environment(section, {"MESHROUTE_ETCD": "d:4"}).endpoints == ["d:4"]
    assert with_environment(section, {}) is section


def test_the_password_comes_from_its_file_else_the_environment(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("from-file\n")
    s = EtcdSection.model_validate({"username": "u", "passwordFile": str(pw)})
    assert security_of(s, {"MESHROUTE_ETCD_PASSWORD": "env"}).password == "from-file"
    assert security_of(EtcdSection(), {"MESHROUTE_ETCD_PASSWORD": "env"}).password == "env"
    assert "from-file" not in repr(security_of(s, {}))
    pw.write_bytes(b"x" * 100_000)
    with pytest.raises(StoreError, match=f"passwordFile {pw}: larger than"):
        security_of(s, {})


@pytest.mark.parametrize(
    ("endpoints", "security", "error"),
    [
        (["http://a:1", "https://b:1"], EtcdSecurity(), "mix http:// and https://"),
        (["ftp://a:1"], EtcdSecurity(), "scheme must be http:// or https://"),
        (["a"], EtcdSecurity(), "is not [http[s]://]host:port"),
        (["a:99999"], EtcdSecurity(), "is not [http[s]://]host:port"),
        (["x" * 100_000], EtcdSecurity(), "is not"),
        ([], EtcdSecurity(), "at least one"),
        (["http://a:1"], EtcdSecurity(ca_file="/ca"), "use https://"),
        (["a:1"], EtcdSecurity(username="u"), "username and password go together"),
    ],
)
def test_endpoints_refused(endpoints: list[str], security: EtcdSecurity, error: str) -> None:
    with pytest.raises(StoreError, match=error.replace("[", r"\[").replace("]", r"\]")) as e:
        parse_endpoints(endpoints, security)
    assert len(str(e.value)) < 300


def test_the_scheme_or_the_files_decide_tls() -> None:
    assert parse_endpoints(["https://a:1"], EtcdSecurity())[0]
    assert parse_endpoints(["a:1"], EtcdSecurity(ca_file="/ca"))[0]
    assert not parse_endpoints(["a:1", "http://b:2"], EtcdSecurity())[0]
    v6 = parse_endpoints(["https://[fd00::1]:2379/"], EtcdSecurity())[1][0]
    assert str(v6) == "[fd00::1]:2379"


def test_tls_files_checked_before_connecting(tmp_path: Path) -> None:
    pki = Pki.create(tmp_path)
    cert, key = pki.client
    ok = EtcdSecurity(str(pki.ca.file), str(cert), str(key))
    load_credentials(ok)
    huge = tmp_path / "huge.pem"
    huge.write_bytes(b"A" * 10_000_000)
    cases = {
        EtcdSecurity(str(huge)): f"caFile {huge}: larger than",
        EtcdSecurity(str(pki.ca.file), str(cert)): "certFile and keyFile go together",
        EtcdSecurity(str(pki.ca.file), str(key), str(key)): f"certFile {key}: not a PEM cert",
        EtcdSecurity(str(pki.ca.file), str(cert), str(cert)): f"keyFile {cert}: not a PEM private",
    }
    for security, error in cases.items():
        with pytest.raises(StoreError, match=error):
            load_credentials(security)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=400)
    with pytest.raises(StoreError, match=f"caFile {pki.ca.file}: certificate expired on"):
        load_credentials(ok, now=later)
    earlier = dt.datetime.now(dt.UTC) - dt.timedelta(days=400)
    with pytest.raises(StoreError, match="is not valid before"):
        load_credentials(ok, now=earlier)


def test_a_gateway_shut_out_by_etcd_names_the_server_certificate() -> None:
    """etcd's JSON gateway presents etcd's own server certificate to etcd's
    gRPC server; under --client-cert-auth a certificate without clientAuth
    is refused, and all the gateway says is "connection closed"."""
    words = explain("connection closed", True, EtcdSecurity(ca_file="/ca"))
    assert "--cert-file" in words and "clientAuth" in words
    assert explain("connection closed", False, EtcdSecurity()) == "connection closed"


def test_an_etcd_without_the_v3_gateway_is_named() -> None:
    words = explain("HTTP 404: 404 page not found", False, EtcdSecurity())
    assert words.startswith("HTTP 404: 404 page not found") and "etcd 3.4 or later" in words
