"""How the etcd client reaches etcd safely: endpoints with their scheme, the
TLS files and etcd's username/password. Every file is checked before the
first connection, so a missing, unreadable, expired or mismatched one is
named at start; a refused handshake is explained in words that name the file
to look at. aetcd 1.0 only opens plaintext channels, so ``SecureClient`` opens
the gRPC channel itself."""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aetcd
import aetcd.exceptions
import grpc
from aetcd import rpc, watcher

from datastore.port import StoreError
from datastore.x509_validity import NotACertificate, Validity, validity_of_pem

MAX_PEM_BYTES = 1 << 20  # a CA bundle is ~200 KB; more is not a PEM file


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
        """gRPC's target: an IPv6 address in brackets."""
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


def _check_pair(cert_file: str, key_file: str, key_pem: bytes) -> None:
    """OpenSSL's word on the key: PEM, unencrypted, the certificate's."""
    if b"ENCRYPTED" in key_pem:
        raise StoreError(f"etcd keyFile {key_file}: encrypted keys are not supported")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
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


def load_credentials(
    security: EtcdSecurity, now: dt.datetime | None = None
) -> grpc.ChannelCredentials:
    """gRPC channel credentials from the TLS files, each checked first."""
    now = now or dt.datetime.now(dt.UTC)
    root = None
    if security.ca_file:
        root = _read_pem("caFile", security.ca_file)
        windows = _windows("caFile", security.ca_file, root)
        # a bundle may hold a stale CA next to the current one
        if all(w.not_after < now for w in windows):
            _check_validity("caFile", security.ca_file, windows[0], now)
    if bool(security.cert_file) != bool(security.key_file):
        raise StoreError("etcd certFile and keyFile go together: set both or neither")
    if not (security.cert_file and security.key_file):
        return grpc.ssl_channel_credentials(root_certificates=root)
    chain = _read_pem("certFile", security.cert_file)
    leaf = _windows("certFile", security.cert_file, chain)[0]
    _check_validity("certFile", security.cert_file, leaf, now)
    key_pem = _read_pem("keyFile", security.key_file)
    _check_pair(security.cert_file, security.key_file, key_pem)
    return grpc.ssl_channel_credentials(
        root_certificates=root, private_key=key_pem, certificate_chain=chain
    )


def explain(details: str, tls: bool, security: EtcdSecurity) -> str:
    """A failed connection's gRPC details in an operator's words, naming the
    file to look at; the raw reason follows for the rest."""
    if "CERTIFICATE_VERIFY_FAILED" in details:
        reason = details.rpartition("CERTIFICATE_VERIFY_FAILED:")[2].strip(" :OK")[:120]
        ca = f"caFile {security.ca_file}" if security.ca_file else "the system's CAs (no caFile)"
        return (
            f"etcd's server certificate is not trusted by {ca} ({reason}); caFile must hold"
            " the CA that signed etcd's --cert-file, for the host name in the endpoint"
        )
    if tls and ("TSI_DATA_CORRUPTED" in details or "BAD_CERTIFICATE" in details):
        if not security.cert_file:
            return (
                "etcd demands a client certificate (--client-cert-auth): set certFile and keyFile"
            )
        return (
            f"etcd refused the client certificate certFile {security.cert_file}: it is not"
            " signed by a CA in etcd's --trusted-ca-file"
        )
    if tls and ("WRONG_VERSION_NUMBER" in details or "Handshake read failed" in details):
        return (
            "etcd closed the TLS handshake: if it serves plain http there, use an http://"
            " endpoint without TLS files"
        )
    if not tls and "Socket closed" in details:
        return (
            "etcd closed the connection at once: if it serves TLS, use an https:// endpoint"
            " with caFile (and certFile/keyFile if it demands client certificates)"
        )
    return details


class SecureClient(aetcd.Client):
    """aetcd's client on a channel we open: TLS credentials when given. The
    body follows aetcd 1.0.0's ``connect`` (pinned in setup.cfg), whose
    channel is hard-wired to plaintext."""

    def __init__(
        self, endpoint: Endpoint, credentials: grpc.ChannelCredentials | None, **kw: object
    ) -> None:
        super().__init__(host=endpoint.host, port=endpoint.port, **kw)
        self._target = str(endpoint)
        self._credentials = credentials

    async def connect(self) -> None:
        if self._connected.is_set():
            return
        if self._is_connecting:  # type: ignore[has-type]  # set by aetcd's __init__
            async with asyncio.timeout(self._connect_wait_timeout):
                await self._connected.wait()
            return
        try:
            self._is_connecting = True
            options = list(self._options.items())
            self.channel = (
                grpc.aio.secure_channel(self._target, self._credentials, options=options)
                if self._credentials is not None
                else grpc.aio.insecure_channel(self._target, options=options)
            )
            if self._username is not None and self._password is not None:
                self.auth_stub = rpc.AuthStub(self.channel)
                request = rpc.AuthenticateRequest(name=self._username, password=self._password)
                resp = await self.auth_stub.Authenticate(request, timeout=self._timeout)
                self.metadata = (("token", resp.token),)
            self.kvstub = rpc.KVStub(self.channel)
            self.clusterstub = rpc.ClusterStub(self.channel)
            self.leasestub = rpc.LeaseStub(self.channel)
            self.maintenancestub = rpc.MaintenanceStub(self.channel)
            self._watcher = watcher.Watcher(
                rpc.WatchStub(self.channel), timeout=self._timeout, metadata=self.metadata
            )
            self._connected.set()
        except grpc.aio.AioRpcError as e:
            aetcd.exceptions._handle_exception(e)
        finally:
            self._is_connecting = False
