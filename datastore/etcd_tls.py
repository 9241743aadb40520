"""How the etcd client reaches etcd safely: endpoints with their scheme, the
TLS files and etcd's username/password. Every file is checked before the
first connection, so a missing, unreadable, expired or mismatched one is
named at start; a refused handshake is explained in words that name the file
to look at."""

from __future__ import annotations

import datetime as dt
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from datastore.port import StoreError
from datastore.x509_validity import NotACertificate, Validity, validity_of_pem

MAX_PEM_BYTES = 1 << 20  # a CA bundle is ~200 KB; more is not a PEM file
# OpenSSL's alerts when etcd (--client-cert-auth) refuses our certificate or its absence
_CLIENT_CERTIFICATE_REFUSED = ("CERTIFICATE_REQUIRED", "BAD_CERTIFICATE", "UNKNOWN_CA")
# what etcd's gateway answers when etcd refuses its own server certificate as a
# client certificate (the gateway presents it to etcd's gRPC server)
_GATEWAY_SHUT_OUT = "connection closed"
# what a TLS handshake meets when the port speaks plain HTTP
_NOT_TLS = ("WRONG_VERSION_NUMBER", "closed the connection during the TLS handshake")


@dataclass(frozen=True)
class EtcdSecurity:
    """TLS files (PEM) and etcd's own user; all optional."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @property
    def wants_tls(self) -> bool:
        return any((self.ca_file, self.cert_file, self.key_file))


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    def __str__(self) -> str:
        """host:port, an IPv6 address in brackets."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_endpoints(
    endpoints: Sequence[str], security: EtcdSecurity
) -> tuple[bool, list[Endpoint]]:
    """(use TLS, endpoints). ``https://`` means TLS, ``http://`` plaintext; a
    bare ``host:port`` follows the TLS files (TLS when any is given). One
    cluster speaks one way: mixed schemes are refused."""
    if not endpoints:
        raise StoreError("at least one etcd endpoint is needed")
    schemes: set[str] = set()
    parsed = []
    for e in endpoints:
        scheme, sep, rest = e.partition("://")
        if not sep:
            scheme, rest = "", e
        elif scheme not in ("http", "https"):
            raise StoreError(f"etcd endpoint {e[:80]!r}: scheme must be http:// or https://")
        schemes.add(scheme)
        host, _, port = rest.rstrip("/").rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise StoreError(f"etcd endpoint {e[:80]!r} is not [http[s]://]host:port")
        parsed.append(Endpoint(host.strip("[]"), int(port)))
    if {"http", "https"} <= schemes:
        raise StoreError("etcd endpoints mix http:// and https://; one cluster speaks one way")
    tls = "https" in schemes or ("http" not in schemes and security.wants_tls)
    if "http" in schemes and security.wants_tls:
        raise StoreError(
            "etcd endpoints are http:// but TLS files (caFile/certFile/keyFile) are set:"
            " use https:// endpoints"
        )
    if bool(security.username) != bool(security.password):
        raise StoreError("etcd username and password go together: set both or neither")
    return tls, parsed


def _read_pem(what: str, path: str) -> bytes:
    p = Path(path)
    try:
        with p.open("rb") as f:
            data = f.read(MAX_PEM_BYTES + 1)
    except OSError as e:
        raise StoreError(f"etcd {what} {path}: cannot read: {e.strerror}") from e
    if len(data) > MAX_PEM_BYTES:
        raise StoreError(f"etcd {what} {path}: larger than {MAX_PEM_BYTES} bytes; not a PEM file")
    return data


def _windows(what: str, path: str, data: bytes) -> list[Validity]:
    try:
        return validity_of_pem(data)
    except NotACertificate as e:
        raise StoreError(f"etcd {what} {path}: not a PEM certificate ({e})") from e


def _check_validity(what: str, path: str, v: Validity, now: dt.datetime) -> None:
    if v.not_after < now:
        raise StoreError(
            f"etcd {what} {path}: certificate expired on {v.not_after:%Y-%m-%d %H:%M} UTC"
        )
    if v.not_before > now:
        raise StoreError(
            f"etcd {what} {path}: certificate is not valid before {v.not_before:%Y-%m-%d %H:%M} UTC"
        )


def _load_pair(ctx: ssl.SSLContext, cert_file: str, key_file: str, key_pem: bytes) -> None:
    """OpenSSL's word on the key: PEM, unencrypted, the certificate's."""
    if b"ENCRYPTED" in key_pem:
        raise StoreError(f"etcd keyFile {key_file}: encrypted keys are not supported")
    try:
        # a password callback, so that OpenSSL never prompts on a terminal
        ctx.load_cert_chain(cert_file, key_file, password=lambda: b"")
    except ssl.SSLError as e:
        if "KEY_VALUES_MISMATCH" in str(e):
            raise StoreError(
                f"etcd keyFile {key_file} is not the key of certFile {cert_file}"
            ) from e
        raise StoreError(f"etcd keyFile {key_file}: not a PEM private key") from e
    except OSError as e:
        raise StoreError(f"etcd keyFile {key_file}: cannot read: {e.strerror}") from e


def load_credentials(security: EtcdSecurity, now: dt.datetime | None = None) -> ssl.SSLContext:
    """The TLS context for etcd from the files, each checked first: the
    server is verified against caFile (the system's CAs without one), for
    the host in the endpoint; the client certificate is shown when given."""
    now = now or dt.datetime.now(dt.UTC)
    cadata = None
    if security.ca_file:
        root = _read_pem("caFile", security.ca_file)
        windows = _windows("caFile", security.ca_file, root)
        # a bundle may hold a stale CA next to the current one
        if all(w.not_after < now for w in windows):
            _check_validity("caFile", security.ca_file, windows[0], now)
        cadata = root.decode("latin-1")
    try:
        # the bytes checked above, not the file again (it may be mid-renewal)
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=cadata)
    except ssl.SSLError as e:
        raise StoreError(f"etcd caFile {security.ca_file}: OpenSSL refuses it ({e.reason})") from e
    ctx.set_alpn_protocols(["http/1.1"])
    if bool(security.cert_file) != bool(security.key_file):
        raise StoreError("etcd certFile and keyFile go together: set both or neither")
    if not (security.cert_file and security.key_file):
        return ctx
    chain = _read_pem("certFile", security.cert_file)
    leaf = _windows("certFile", security.cert_file, chain)[0]
    _check_validity("certFile", security.cert_file, leaf, now)
    key_pem = _read_pem("keyFile", security.key_file)
    _load_pair(ctx, security.cert_file, security.key_file, key_pem)
    return ctx


def explain(details: str, tls: bool, security: EtcdSecurity) -> str:
    """A failed exchange's reason (OpenSSL's, the socket's, etcd's) in an
    operator's words, naming the file to look at; the raw reason follows for
    the rest."""
    if "CERTIFICATE_VERIFY_FAILED" in details:
        reason = details.partition("certificate verify failed:")[2].partition("(_ssl")[0]
        ca = f"caFile {security.ca_file}" if security.ca_file else "the system's CAs (no caFile)"
        return (
            f"etcd's server certificate is not trusted by {ca} ({reason.strip()[:120]}); caFile"
            " must hold the CA that signed etcd's --cert-file, for the host name in the endpoint"
        )
    if tls and any(a in details for a in _CLIENT_CERTIFICATE_REFUSED):
        if not security.cert_file:
            return (
                "etcd demands a client certificate (--client-cert-auth): set certFile and keyFile"
            )
        return (
            f"etcd refused the client certificate certFile {security.cert_file}: it is not"
            " signed by a CA in etcd's --trusted-ca-file"
        )
    if tls and any(a in details for a in _NOT_TLS):
        return (
            "etcd closed the TLS handshake: if it serves plain http there, use an http://"
            " endpoint without TLS files"
        )
    if tls and details == _GATEWAY_SHUT_OUT:
        return (
            "etcd's JSON gateway could not reach etcd's own gRPC server (connection closed):"
            " under --client-cert-auth, etcd's --cert-file must also allow client"
            " authentication (extendedKeyUsage clientAuth next to serverAuth)"
        )
    if details.startswith("HTTP 404"):
        return (
            f"{details}: this is not etcd 3.4 or later (whose client port serves the"
            " /v3 JSON gateway the client speaks)"
        )
    if not tls and "closed the connection without answering" in details:
        return (
            "etcd closed the connection at once: if it serves TLS, use an https:// endpoint"
            " with caFile (and certFile/keyFile if it demands client certificates)"
        )
    return details
