"""rtnetlink link messages as bytes: create, change, delete, read back.

This module owns the RTM_NEWLINK / RTM_DELLINK / RTM_GETLINK bodies (ifinfomsg
+ attributes) for the kinds of link meshroute makes, a veth pair whose peer
is created in another network namespace (IFLA_NET_NS_FD), VXLAN and IPIP
devices (IFLA_LINKINFO with IFLA_INFO_KIND / IFLA_INFO_DATA), the in-place
changes (up/down, MTU, MAC, ifalias) and the parse of a link as the kernel
reports it, ``LinkDetail``, with the VXLAN settings tunnels compare. Pure
functions, no I/O (``client`` sends them). The short ``WireLink`` the
host reader needs is ``wire``'s.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from rtnetlink import wire as nw
from rtnetlink.attrs import (
    attr,
    attr_be16,
    attr_nested,
    attr_str,
    attr_u8,
    attr_u32,
    ip_bytes,
    ip_text,
    mac_bytes,
    mac_text,
    parse_attrs,
    str_of,
    u32_of,
)

# <linux/rtnetlink.h>, <linux/if_link.h>, <linux/veth.h>
RTM_NEWLINK = 16
RTM_DELLINK = 17
RTM_GETLINK = 18
IFF_UP = 0x1
IFLA_ADDRESS = 1
IFLA_IFNAME = 3
IFLA_MTU = 4
IFLA_LINKINFO = 18
IFLA_IFALIAS = 20
IFLA_NET_NS_FD = 28
IFLA_INFO_KIND = 1
IFLA_INFO_DATA = 2
VETH_INFO_PEER = 1
IFLA_VXLAN_ID = 1
IFLA_VXLAN_LINK = 3
IFLA_VXLAN_LOCAL = 4
IFLA_VXLAN_LEARNING = 7
IFLA_VXLAN_PORT = 15  # big-endian u16
IFLA_VXLAN_LOCAL6 = 17


def _ifinfo(index: int = 0, *, flags: int = 0, change: int = 0) -> bytes:
    return nw.IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, flags, change)


def _linkinfo(kind: str, data: bytes = b"") -> bytes:
    parts = [attr_str(IFLA_INFO_KIND, kind)]
    if data:
        parts.append(attr_nested(IFLA_INFO_DATA, data))
    return attr_nested(IFLA_LINKINFO, *parts)


# ---------------------------------------------------------------- create


def veth_body(
    name: str, peer: str, *, mtu: int, peer_netns_fd: int, address: str | None = None
) -> bytes:
    """RTM_NEWLINK of a veth pair: ``name`` here (with MAC ``address`` if
    given), ``peer`` made directly in the namespace open as ``peer_netns_fd``;
    both ends with ``mtu``."""
    peer_msg = (
        _ifinfo()
        + attr_str(IFLA_IFNAME, peer)
        + attr_u32(IFLA_MTU, mtu)
        + attr_u32(IFLA_NET_NS_FD, peer_netns_fd)
    )
    parts = [attr_str(IFLA_IFNAME, name), attr_u32(IFLA_MTU, mtu)]
    if address is not None:
        parts.append(attr(IFLA_ADDRESS, mac_bytes(address)))
    parts.append(_linkinfo("veth", attr(VETH_INFO_PEER, peer_msg)))
    return _ifinfo() + b"".join(parts)


def vxlan_body(
    name: str, *, vni: int, port: int, local: str, parent_index: int | None, learning: bool
) -> bytes:
    """RTM_NEWLINK of a VXLAN device sourcing from ``local`` (IPv4 or IPv6)."""
    family, packed = ip_bytes(local)
    data = [
        attr_u32(IFLA_VXLAN_ID, vni),
        attr(IFLA_VXLAN_LOCAL if family == socket.AF_INET else IFLA_VXLAN_LOCAL6, packed),
        attr_u8(IFLA_VXLAN_LEARNING, int(learning)),
        attr_be16(IFLA_VXLAN_PORT, port),
    ]
    if parent_index is not None:
        data.append(attr_u32(IFLA_VXLAN_LINK, parent_index))
    return _ifinfo() + attr_str(IFLA_IFNAME, name) + _linkinfo("vxlan", b"".join(data))


def ipip_body(name: str) -> bytes:
    """RTM_NEWLINK of an IPIP device with no endpoints (tunl0's settings)."""
    return _ifinfo() + attr_str(IFLA_IFNAME, name) + _linkinfo("ipip")


# ------------------------------------------------------ change, delete, get


def set_up_body(index: int, up: bool) -> bytes:
    """RTM_NEWLINK (no NLM_F_CREATE) changing only IFF_UP."""
    return _ifinfo(index, flags=IFF_UP if up else 0, change=IFF_UP)


def set_mtu_body(index: int, mtu: int) -> bytes:
    return _ifinfo(index) + attr_u32(IFLA_MTU, mtu)


def set_address_body(index: int, mac: str) -> bytes:
    return _ifinfo(index) + attr(IFLA_ADDRESS, mac_bytes(mac))


def set_alias_body(index: int, alias: str) -> bytes:
    """An empty ``alias`` removes it (the kernel frees an alias of length 0)."""
    return _ifinfo(index) + attr(IFLA_IFALIAS, alias.encode())


def del_body(index: int) -> bytes:
    return _ifinfo(index)


def get_by_name_body(name: str) -> bytes:
    """RTM_GETLINK of one link by name: the reply is its RTM_NEWLINK, or
    ENODEV."""
    return _ifinfo() + attr_str(IFLA_IFNAME, name)


def dump_body() -> bytes:
    return _ifinfo()


# ------------------------------------------------------------------ parse


@dataclass(frozen=True, slots=True)
class LinkDetail:
    """A link as the kernel reports it. ``mac`` is lower-case text; the
    VXLAN fields are set only for ``kind == "vxlan"`` (``parent`` is an
    interface index, ``local`` an address in text)."""

    index: int
    name: str
    up: bool
    mtu: int
    mac: str | None = None
    alias: str | None = None
    kind: str | None = None
    vni: int | None = None
    port: int | None = None
    local: str | None = None
    parent: int | None = None
    learning: bool | None = None


def parse_link_detail(buf: bytes | bytearray | memoryview, start: int, end: int) -> LinkDetail:
    """An RTM_NEWLINK payload."""
    _family, _type, index, flags, _change = nw.IFINFOMSG.unpack_from(buf, start)
    attrs = parse_attrs(buf, start + nw.IFINFOMSG.size, end)
    mac = attrs.get(IFLA_ADDRESS)
    alias = attrs.get(IFLA_IFALIAS)
    mtu = attrs.get(IFLA_MTU)
    kind: str | None = None
    vx: dict[str, object] = {}
    info = attrs.get(IFLA_LINKINFO)
    if info is not None:
        linkinfo = parse_attrs(info, 0, len(info))
        if IFLA_INFO_KIND in linkinfo:
            kind = str_of(linkinfo[IFLA_INFO_KIND])
        data = linkinfo.get(IFLA_INFO_DATA)
        if kind == "vxlan" and data is not None:
            vx = _vxlan_fields(parse_attrs(data, 0, len(data)))
    return LinkDetail(
        index=index,
        name=str_of(attrs.get(IFLA_IFNAME, b"")),
        up=bool(flags & IFF_UP),
        mtu=u32_of(mtu) if mtu is not None else 0,
        mac=mac_text(mac) if mac is not None else None,
        alias=str_of(alias) if alias is not None else None,
        kind=kind,
        **vx,  # type: ignore[arg-type]
    )


def _vxlan_fields(data: dict[int, bytes]) -> dict[str, object]:
    local: str | None = None
    if IFLA_VXLAN_LOCAL in data:
        local = ip_text(socket.AF_INET, data[IFLA_VXLAN_LOCAL])
    elif IFLA_VXLAN_LOCAL6 in data:
        local = ip_text(socket.AF_INET6, data[IFLA_VXLAN_LOCAL6])
    vni = data.get(IFLA_VXLAN_ID)
    port = data.get(IFLA_VXLAN_PORT)
    parent = data.get(IFLA_VXLAN_LINK)
    learning = data.get(IFLA_VXLAN_LEARNING)
    return {
        "vni": u32_of(vni) if vni is not None else None,
        "port": int.from_bytes(port, "big") if port is not None else None,
        "local": local,
        "parent": (u32_of(parent) or None) if parent is not None else None,
        "learning": bool(learning[0]) if learning else False,
    }
