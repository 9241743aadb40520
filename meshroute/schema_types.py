"""Field types shared by every YAML schema meshroute loads (resources,
node.yaml, reflector.yaml): addresses, prefixes and communities that parse
with a message naming the bad value and serialise back to plain text."""

from __future__ import annotations

from typing import Annotated, Any

from netaddr import AddrFormatError, IPAddress, IPNetwork
from pydantic import BaseModel, BeforeValidator, ConfigDict, PlainSerializer

from ipam.quoting import quote


def _network(v: Any, shape: str) -> IPNetwork:
    if isinstance(v, IPNetwork):
        return v
    if not isinstance(v, str) or "/" not in v:
        raise ValueError(f"{quote(v)} is not {shape}")
    try:
        return IPNetwork(v)
    except (AddrFormatError, ValueError, TypeError) as e:
        raise ValueError(
            f"{quote(v)} is not a valid {shape.split(' (')[0].removeprefix('a ')}"
        ) from e


def _cidr(v: Any) -> IPNetwork:
    return _network(v, "a CIDR (address/prefix length)")


def _interface_address(v: Any) -> IPNetwork:
    return _network(v, "an address with prefix length, e.g. 192.0.2.10/24")


def _address(v: Any) -> IPAddress:
    if isinstance(v, IPAddress):
        return v
    try:
        return IPAddress(str(v))
    except (AddrFormatError, ValueError, TypeError) as e:
        raise ValueError(f"{quote(v)} is not an IP address") from e


def _community(v: Any) -> tuple[int, int]:
    if isinstance(v, tuple | list) and len(v) == 2:
        v = f"{v[0]}:{v[1]}"
    parts = str(v).split(":")
    if len(parts) != 2 or not all(p.isdigit() and int(p) <= 65535 for p in parts):
        raise ValueError(f"{quote(v)} is not a community ASN:VALUE with both in 0..65535")
    return int(parts[0]), int(parts[1])


Cidr = Annotated[IPNetwork, BeforeValidator(_cidr), PlainSerializer(str)]
InterfaceAddress = Annotated[IPNetwork, BeforeValidator(_interface_address), PlainSerializer(str)]
Address = Annotated[IPAddress, BeforeValidator(_address), PlainSerializer(str)]
Community = Annotated[
    tuple[int, int], BeforeValidator(_community), PlainSerializer(lambda c: f"{c[0]}:{c[1]}")
]


class StrictModel(BaseModel):
    """Every resource schema's base: unknown fields, NaN and infinity refused;
    values frozen; fields by name or by alias."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        arbitrary_types_allowed=True,
        populate_by_name=True,
        allow_inf_nan=False,
    )


def field_path(loc: tuple[int | str, ...]) -> str:
    """A pydantic error location as the dotted field path users write (a
    long or odd key, which came from the file, quoted by a short prefix)."""
    parts = (
        str(p) if isinstance(p, int) or (len(p) <= 64 and p.isprintable()) else quote(p)
        for p in loc
    )
    return ".".join(parts) or "(document)"
