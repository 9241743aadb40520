"""How commands and processes reach etcd: the command-line options every
command that reaches etcd shares (``--etcd``, ``--prefix``, the TLS files,
etcd's user), the ``MESHROUTE_ETCD_*`` environment variables (calicoctl's
``ETCD_*`` family), and the store they name, which fails fast with a clear
message when etcd cannot be reached or a TLS file is wrong. Precedence: flag,
then environment, then the configuration file (node, reflector), then the
default."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping

from datastore.etcd import EtcdStore
from datastore.etcd_tls import EtcdSecurity
from datastore.port import StoreError
from meshroute.runtime.config import EtcdSection

DEFAULT_ENDPOINTS = "127.0.0.1:2379"
DEFAULT_PREFIX = "/meshroute"
MAX_PASSWORD_FILE = 4096

# EtcdSection field -> environment variable
ENV = {
    "endpoints": "MESHROUTE_ETCD_ENDPOINTS",
    "prefix": "MESHROUTE_PREFIX",
    "ca_file": "MESHROUTE_ETCD_CA_CERT_FILE",
    "cert_file": "MESHROUTE_ETCD_CERT_FILE",
    "key_file": "MESHROUTE_ETCD_KEY_FILE",
    "username": "MESHROUTE_ETCD_USERNAME",
    "password_file": "MESHROUTE_ETCD_PASSWORD_FILE",
}
PASSWORD_ENV = "MESHROUTE_ETCD_PASSWORD"
LEGACY_ENDPOINTS_ENV = "MESHROUTE_ETCD"
# field -> (flag, what it is); the password itself is never a flag (``ps``)
TLS_FLAGS = {
    "ca_file": ("--etcd-ca-cert-file", "CA certificates (PEM) that signed etcd's certificate"),
    "cert_file": ("--etcd-cert-file", "client certificate (PEM) for etcd"),
    "key_file": ("--etcd-key-file", "the client certificate's private key (PEM)"),
    "username": ("--etcd-username", "etcd user (etcd authentication)"),
    "password_file": ("--etcd-password-file", f"that user's password (or env {PASSWORD_ENV})"),
}


def split_endpoints(text: str) -> list[str]:
    """A comma-separated endpoint list (``--etcd``, ``MESHROUTE_ETCD_*``)."""
    return [e.strip() for e in text.split(",") if e.strip()]


def _env(environ: Mapping[str, str], field: str) -> str | None:
    value = environ.get(ENV[field])
    if value is None and field == "endpoints":
        value = environ.get(LEGACY_ENDPOINTS_ENV)
    return value or None


def etcd_defaults() -> dict[str, str | None]:
    return {
        "etcd": _env(os.environ, "endpoints") or DEFAULT_ENDPOINTS,
        "prefix": _env(os.environ, "prefix") or DEFAULT_PREFIX,
        **{f"etcd_{field}": _env(os.environ, field) for field in TLS_FLAGS},
    }


def add_etcd_options(p: argparse.ArgumentParser, *, with_defaults: bool = False) -> None:
    """``--etcd``, ``--prefix`` and the TLS and user options. On a subcommand
    they default to nothing, so the same options given before the subcommand
    (on the top parser, ``with_defaults``) are not overwritten: ``meshroute
    --etcd X ipam show`` and ``meshroute ipam show --etcd X`` both work."""
    defaults = etcd_defaults()

    def default(key: str) -> object:
        return defaults[key] if with_defaults else argparse.SUPPRESS

    p.add_argument(
        "--etcd",
        "--etcd-endpoints",
        dest="etcd",
        default=default("etcd"),
        help="comma-separated etcd endpoints [http[s]://]host:port (env "
        f"{ENV['endpoints']} or {LEGACY_ENDPOINTS_ENV}; default {DEFAULT_ENDPOINTS}; "
        "node and reflector read theirs from their config)",
    )
    p.add_argument(
        "--prefix",
        default=default("prefix"),
        help=f"key prefix of this cluster in etcd (env {ENV['prefix']}; default {DEFAULT_PREFIX})",
    )
    for field, (flag, what) in TLS_FLAGS.items():
        key = f"etcd_{field}"
        p.add_argument(flag, dest=key, default=default(key), help=f"{what} (env {ENV[field]})")


def with_environment(section: EtcdSection, environ: Mapping[str, str]) -> EtcdSection:
    """A configuration file's etcd section with the environment's overrides
    (applied when the file is loaded, so that the prefix a process uses is
    the one it connects with)."""
    update: dict[str, object] = {}
    for field in ENV:
        value = _env(environ, field)
        if value is not None:
            update[field] = split_endpoints(value) if field == "endpoints" else value
    return section.model_copy(update=update) if update else section


def read_password_file(path: str) -> str:
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_PASSWORD_FILE + 1)
    except OSError as e:
        raise StoreError(f"etcd passwordFile {path}: cannot read: {e.strerror}") from e
    if len(raw) > MAX_PASSWORD_FILE:
        raise StoreError(f"etcd passwordFile {path}: larger than {MAX_PASSWORD_FILE} bytes")
    try:
        password = raw.decode().rstrip("\r\n")
    except UnicodeDecodeError as e:
        raise StoreError(f"etcd passwordFile {path}: not UTF-8") from e
    if not password:
        raise StoreError(f"etcd passwordFile {path}: empty")
    return password


def _password(password_file: str | None, environ: Mapping[str, str]) -> str | None:
    if password_file:
        return read_password_file(password_file)
    return environ.get(PASSWORD_ENV) or None


def security_of(section: EtcdSection, environ: Mapping[str, str]) -> EtcdSecurity:
    return EtcdSecurity(
        ca_file=section.ca_file,
        cert_file=section.cert_file,
        key_file=section.key_file,
        username=section.username,
        password=_password(section.password_file, environ),
    )


def open_store(section: EtcdSection, environ: Mapping[str, str] | None = None) -> EtcdStore:
    """The store a process's etcd section names. Raises ``StoreError``
    naming the endpoint or file at fault."""
    environ = os.environ if environ is None else environ
    return EtcdStore(
        section.endpoints,
        timeout=section.timeout_seconds,
        security=security_of(section, environ),
    )


def store_from_args(args: argparse.Namespace, timeout: float = 5.0) -> EtcdStore:
    """Raises ``StoreError`` naming the endpoint or file at fault."""
    security = EtcdSecurity(
        ca_file=args.etcd_ca_file or None,
        cert_file=args.etcd_cert_file or None,
        key_file=args.etcd_key_file or None,
        username=args.etcd_username or None,
        password=_password(args.etcd_password_file, os.environ),
    )
    return EtcdStore(split_endpoints(args.etcd), timeout=timeout, security=security)
