"""The validity window of PEM certificates, read with the standard library
alone: just enough DER to reach ``tbsCertificate.validity`` (RFC 5280 4.1).
The images ship without a general X.509 library; OpenSSL (through ``ssl``)
checks everything else about the files."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import re
from dataclasses import dataclass

_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----\r?\n(.*?)-----END CERTIFICATE-----", re.S)


class NotACertificate(ValueError):
    pass


@dataclass(frozen=True)
class Validity:
    not_before: dt.datetime
    not_after: dt.datetime


def _tlv(der: bytes, i: int) -> tuple[int, int, int]:
    """(tag, start of content, end of content) of the element at ``i``."""
    if i + 2 > len(der):
        raise NotACertificate("truncated DER")
    tag, length = der[i], der[i + 1]
    i += 2
    if length & 0x80:
        n = length & 0x7F
        if not 0 < n <= 4 or i + n > len(der):
            raise NotACertificate("bad DER length")
        length = int.from_bytes(der[i : i + n], "big")
        i += n
    if i + length > len(der):
        raise NotACertificate("truncated DER")
    return tag, i, i + length


def _time(tag: int, raw: bytes) -> dt.datetime:
    text = raw.decode("ascii", errors="replace")
    try:
        if tag == 0x17:  # UTCTime YYMMDDHHMMSSZ: 50..99 are 19xx (RFC 5280)
            t = dt.datetime.strptime(text, "%y%m%d%H%M%SZ")
            if t.year >= 2050:
                t = t.replace(year=t.year - 100)
        elif tag == 0x18:  # GeneralizedTime YYYYMMDDHHMMSSZ
            t = dt.datetime.strptime(text, "%Y%m%d%H%M%SZ")
        else:
            raise NotACertificate("validity is not a time")
    except ValueError as e:
        raise NotACertificate("bad validity time") from e
    return t.replace(tzinfo=dt.UTC)


def validity_of_der(der: bytes) -> Validity:
    tag, start, _ = _tlv(der, 0)  # Certificate
    if tag != 0x30:
        raise NotACertificate("not a DER sequence")
    tag, i, _ = _tlv(der, start)  # tbsCertificate
    if tag != 0x30:
        raise NotACertificate("no tbsCertificate")
    tag, _, end = _tlv(der, i)
    if tag == 0xA0:  # [0] version
        i = end
    for _ in range(3):  # serialNumber, signature, issuer
        _, _, i = _tlv(der, i)
    tag, i, _ = _tlv(der, i)  # validity
    if tag != 0x30:
        raise NotACertificate("no validity")
    t1, s1, e1 = _tlv(der, i)
    t2, s2, e2 = _tlv(der, e1)
    return Validity(_time(t1, der[s1:e1]), _time(t2, der[s2:e2]))


def validity_of_pem(pem: bytes) -> list[Validity]:
    """Each certificate's window, in file order; ``NotACertificate`` when
    there is none or one is damaged."""
    blocks = _PEM.findall(pem)
    if not blocks:
        raise NotACertificate("no PEM certificate")
    out = []
    for b in blocks:
        try:
            der = base64.b64decode(b"".join(b.split()), validate=True)
        except binascii.Error as e:
            raise NotACertificate("bad base64") from e
        out.append(validity_of_der(der))
    return out
