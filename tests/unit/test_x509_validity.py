"""The standard-library validity reader agrees with ``cryptography`` on
generated certificates (UTCTime and GeneralizedTime, bundles), and refuses
damaged input with ``NotACertificate``, never another exception."""

from __future__ import annotations

import base64
import contextlib
import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st

from datastore.x509_validity import NotACertificate, validity_of_pem

KEY = ec.generate_private_key(ec.SECP256R1())
NAME = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "t")])


def cert(start: dt.datetime, end: dt.datetime) -> bytes:
    c = (
        x509.CertificateBuilder()
        .subject_name(NAME)
        .issuer_name(NAME)
        .public_key(KEY.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .sign(KEY, hashes.SHA256())
    )
    return c.public_bytes(serialization.Encoding.PEM)


def wrap(der: bytes) -> bytes:
    return (
        b"-----BEGIN CERTIFICATE-----\n" + base64.b64encode(der) + b"\n-----END CERTIFICATE-----\n"
    )


def utc(*a: int) -> dt.datetime:
    return dt.datetime(*a, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("start", "end"),
    [
        (utc(2024, 1, 2, 3, 4, 5), utc(2026, 12, 31, 23, 59, 59)),  # UTCTime
        (utc(1999, 1, 1), utc(2049, 12, 31)),  # UTCTime on both sides of 2000
        (utc(2025, 6, 1), utc(2060, 1, 1)),  # GeneralizedTime from 2050 on
    ],
)
def test_agrees_with_cryptography(start: dt.datetime, end: dt.datetime) -> None:
    pem = cert(start, end)
    [v] = validity_of_pem(pem)
    c = x509.load_pem_x509_certificate(pem)
    assert (v.not_before, v.not_after) == (c.not_valid_before_utc, c.not_valid_after_utc)


def test_a_bundle_in_file_order() -> None:
    a, b = utc(2020, 1, 1), utc(2030, 1, 1)
    got = validity_of_pem(cert(a, b) + b"junk between\n" + cert(b, utc(2031, 1, 1)))
    assert [v.not_before for v in got] == [a, b]


@pytest.mark.parametrize(
    "pem",
    [
        b"",
        b"not pem at all",
        b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        b"-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n",
        b"-----BEGIN CERTIFICATE-----\nMIQAAAAA\n-----END CERTIFICATE-----\n",
    ],
)
def test_damaged_input_is_refused(pem: bytes) -> None:
    with pytest.raises(NotACertificate):
        validity_of_pem(pem)


@given(st.binary(max_size=300))
def test_random_der_never_raises_anything_else(der: bytes) -> None:
    with contextlib.suppress(NotACertificate):
        validity_of_pem(wrap(der))


def test_truncations_of_a_real_certificate() -> None:
    pem = cert(utc(2024, 1, 1), utc(2025, 1, 1))
    der = base64.b64decode(b"".join(pem.split(b"\n")[1:-2]))
    for n in range(0, len(der), 7):
        with pytest.raises(NotACertificate):
            validity_of_pem(wrap(der[:n]))
