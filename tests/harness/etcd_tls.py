"""An etcd member that serves TLS only and demands client certificates
(``--client-cert-auth``), with every certificate generated here: the CA,
the server's, a good client's, an expired client's, and a second CA with a
client of its own (the "wrong CA" cases)."""

from __future__ import annotations

import datetime as dt
import os
import signal
import ssl
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from lab.ports import free_ports

ETCD = "/usr/bin/etcd"
_Key = ec.EllipticCurvePrivateKey


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(path: Path, key: _Key) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


@dataclass(frozen=True)
class Ca:
    key: _Key
    cert: x509.Certificate
    file: Path

    @classmethod
    def create(cls, path: Path, cn: str) -> Ca:
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(_name(cn))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        _write_cert(path, cert)
        return cls(key, cert, path)

    def issue(
        self, directory: Path, name: str, *, server: bool = False, expired: bool = False
    ) -> tuple[Path, Path]:
        """(certificate file, key file) for ``name``, signed by this CA."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        start, end = (
            (now - dt.timedelta(days=10), now - dt.timedelta(days=1))
            if expired
            else (now - dt.timedelta(days=1), now + dt.timedelta(days=30))
        )
        # etcd's JSON gateway reaches etcd's own gRPC server with the server
        # certificate as its client certificate: under --client-cert-auth it
        # must allow both (as kubeadm's etcd server certificates do)
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
        if server:
            usages.insert(0, ExtendedKeyUsageOID.SERVER_AUTH)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(IPv4Address("127.0.0.1"))]
                ),
                critical=False,
            )
        cert = builder.sign(self.key, hashes.SHA256())
        cert_file, key_file = directory / f"{name}.crt", directory / f"{name}.key"
        _write_cert(cert_file, cert)
        _write_key(key_file, key)
        return cert_file, key_file


@dataclass(frozen=True)
class Pki:
    ca: Ca
    other_ca: Ca  # trusted by nobody
    server: tuple[Path, Path]
    client: tuple[Path, Path]
    expired_client: tuple[Path, Path]
    other_client: tuple[Path, Path]  # signed by other_ca

    @classmethod
    def create(cls, directory: Path) -> Pki:
        directory.mkdir(parents=True, exist_ok=True)
        ca = Ca.create(directory / "ca.crt", "meshroute test etcd CA")
        other = Ca.create(directory / "other-ca.crt", "some other CA")
        return cls(
            ca,
            other,
            ca.issue(directory, "etcd-server", server=True),
            ca.issue(directory, "meshroute-node"),
            ca.issue(directory, "meshroute-expired", expired=True),
            other.issue(directory, "meshroute-stranger"),
        )

    def client_env(self) -> dict[str, str]:
        """The ``MESHROUTE_ETCD_*`` variables of the good client."""
        return {
            "MESHROUTE_ETCD_CA_CERT_FILE": str(self.ca.file),
            "MESHROUTE_ETCD_CERT_FILE": str(self.client[0]),
            "MESHROUTE_ETCD_KEY_FILE": str(self.client[1]),
        }


@dataclass
class TlsEtcd:
    pki: Pki
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def endpoint(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def healthy(self) -> bool:
        ctx = ssl.create_default_context(cafile=str(self.pki.ca.file))
        ctx.load_cert_chain(str(self.pki.client[0]), str(self.pki.client[1]))
        try:
            with urllib.request.urlopen(f"{self.endpoint}/health", timeout=0.5, context=ctx) as r:
                return b'"true"' in r.read()
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_tls_etcd(workdir: Path) -> TlsEtcd:
    pki = Pki.create(workdir / "pki")
    port, peer = free_ports(2)
    cert, key = pki.server
    log = workdir / "etcd.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [
                ETCD,
                "--name=tls0",
                f"--data-dir={workdir / 'data'}",
                f"--listen-client-urls=https://127.0.0.1:{port}",
                f"--advertise-client-urls=https://127.0.0.1:{port}",
                f"--listen-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-cluster=tls0=http://127.0.0.1:{peer}",
                f"--initial-cluster-token=meshroute-tls-{os.getpid()}",
                f"--cert-file={cert}",
                f"--key-file={key}",
                f"--trusted-ca-file={pki.ca.file}",
                "--client-cert-auth",
                "--log-level=warn",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = TlsEtcd(pki, port, proc, log)
    deadline = time.monotonic() + 20
    while not server.healthy():
        if proc.poll() is not None or time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"TLS etcd did not start: {log.read_text()[-2000:]}")
        time.sleep(0.05)
    return server
