"""plan_tunnel_changes: the pure decision behind tunnel device management."""

from __future__ import annotations

from dataclasses import replace

import pytest
from netaddr import IPAddress, IPNetwork

from felix_lite.model import IpipDevice, VxlanDevice
from felix_lite.tunnels import (
    OWNER_ALIAS,
    AddAddress,
    CreateIpip,
    CreateVxlan,
    DelAddress,
    DeleteLink,
    ObservedLink,
    SetAlias,
    SetMac,
    SetMtu,
    SetUp,
    TunnelError,
    plan_tunnel_changes,
)

VX = VxlanDevice(
    name="vxlan.mesh",
    vni=4096,
    port=4789,
    local=IPAddress("192.0.2.1"),
    parent=None,
    address=IPAddress("10.244.0.0"),
    mac="66:00:00:00:00:01",
    mtu=1450,
)
IPIP = IpipDevice(address=IPAddress("10.244.0.1"), mtu=1480)


def _vx_link(**kw: object) -> ObservedLink:
    base: dict[str, object] = {
        "name": "vxlan.mesh",
        "kind": "vxlan",
        "up": True,
        "mtu": 1450,
        "alias": OWNER_ALIAS,
        "mac": "66:00:00:00:00:01",
        "addresses": (IPNetwork("10.244.0.0/32"), IPNetwork("fe80::6400:ff:fe00:1/64")),
        "vni": 4096,
        "port": 4789,
        "local": IPAddress("192.0.2.1"),
        "parent": None,
        "learning": False,
    }
    base.update(kw)
    return ObservedLink(**base)  # type: ignore[arg-type]


def _tunl0(**kw: object) -> ObservedLink:
    base: dict[str, object] = {
        "name": "tunl0",
        "kind": "ipip",
        "up": True,
        "mtu": 1480,
        "alias": OWNER_ALIAS,
        "addresses": (IPNetwork("10.244.0.1/32"),),
    }
    base.update(kw)
    return ObservedLink(**base)  # type: ignore[arg-type]


def test_vxlan_missing_is_created_and_fully_configured() -> None:
    assert plan_tunnel_changes(VX, [], kind="vxlan") == (
        CreateVxlan(VX),
        SetAlias("vxlan.mesh", OWNER_ALIAS),
        SetMtu("vxlan.mesh", 1450),
        SetMac("vxlan.mesh", "66:00:00:00:00:01"),
        AddAddress("vxlan.mesh", IPNetwork("10.244.0.0/32")),
        SetUp("vxlan.mesh", True),
    )


def test_vxlan_as_desired_needs_nothing_and_link_local_is_left_alone() -> None:
    assert plan_tunnel_changes(VX, [_vx_link()], kind="vxlan") == ()


def test_vxlan_live_settings_change_in_place() -> None:
    link = _vx_link(
        mtu=1500, mac="66:00:00:00:00:09", up=False, addresses=(IPNetwork("10.244.9.0/32"),)
    )
    assert plan_tunnel_changes(VX, [link], kind="vxlan") == (
        SetMtu("vxlan.mesh", 1450),
        SetMac("vxlan.mesh", "66:00:00:00:00:01"),
        DelAddress("vxlan.mesh", IPNetwork("10.244.9.0/32")),
        AddAddress("vxlan.mesh", IPNetwork("10.244.0.0/32")),
        SetUp("vxlan.mesh", True),
    )


@pytest.mark.parametrize(
    ("field", "value", "why"),
    [
        ("vni", 1, "VNI"),
        ("port", 8472, "port"),
        ("local", IPAddress("192.0.2.9"), "local address"),
        ("parent", "eth1", "parent"),
        ("learning", True, "learning"),
    ],
)
def test_vxlan_fixed_settings_force_a_recreate(field: str, value: object, why: str) -> None:
    steps = plan_tunnel_changes(VX, [_vx_link(**{field: value})], kind="vxlan")
    assert isinstance(steps[0], DeleteLink) and why in steps[0].reason
    assert steps[1] == CreateVxlan(VX)


def test_vxlan_of_calico_is_adopted_by_setting_our_alias() -> None:
    assert plan_tunnel_changes(VX, [_vx_link(alias=None)], kind="vxlan") == (
        SetAlias("vxlan.mesh", OWNER_ALIAS),
    )


def test_vxlan_off_deletes_only_our_devices() -> None:
    ours_renamed = _vx_link(name="vxlan.old")
    foreign = _vx_link(name="vxlan.other", alias=None)
    assert plan_tunnel_changes(None, [_vx_link(), ours_renamed, foreign], kind="vxlan") == (
        DeleteLink("vxlan.mesh", "vxlan mode off or device renamed"),
        DeleteLink("vxlan.old", "vxlan mode off or device renamed"),
    )
    # a renamed device is removed while the new one is created
    steps = plan_tunnel_changes(VX, [ours_renamed, foreign], kind="vxlan")
    assert steps[:2] == (
        DeleteLink("vxlan.old", "vxlan mode off or device renamed"),
        CreateVxlan(VX),
    )


def test_a_device_of_our_name_but_another_kind_is_a_conflict() -> None:
    with pytest.raises(TunnelError, match="not vxlan"):
        plan_tunnel_changes(VX, [_vx_link(kind="veth")], kind="vxlan")
    with pytest.raises(TunnelError, match="not ipip"):
        plan_tunnel_changes(IPIP, [_tunl0(kind=None)], kind="ipip")


def test_ipip_missing_asks_for_tunl0_then_configures_it() -> None:
    assert plan_tunnel_changes(IPIP, [], kind="ipip") == (
        CreateIpip("tunl0"),
        SetAlias("tunl0", OWNER_ALIAS),
        SetMtu("tunl0", 1480),
        AddAddress("tunl0", IPNetwork("10.244.0.1/32")),
        SetUp("tunl0", True),
    )


def test_ipip_fallback_device_found_down_is_configured_in_place() -> None:
    fresh = _tunl0(alias=None, up=False, mtu=1480, addresses=())
    assert plan_tunnel_changes(IPIP, [fresh], kind="ipip") == (
        SetAlias("tunl0", OWNER_ALIAS),
        AddAddress("tunl0", IPNetwork("10.244.0.1/32")),
        SetUp("tunl0", True),
    )
    assert plan_tunnel_changes(IPIP, [_tunl0()], kind="ipip") == ()


def test_ipip_off_strips_our_tunl0_and_leaves_a_foreign_one() -> None:
    assert plan_tunnel_changes(None, [_tunl0()], kind="ipip") == (
        DelAddress("tunl0", IPNetwork("10.244.0.1/32")),
        SetUp("tunl0", False),
        SetAlias("tunl0", ""),
    )
    assert plan_tunnel_changes(None, [_tunl0(alias=None)], kind="ipip") == ()
    assert plan_tunnel_changes(None, [], kind="ipip") == ()


def test_ipip_without_address_removes_a_stale_one() -> None:
    no_addr = IpipDevice(address=None, mtu=1480)
    assert plan_tunnel_changes(no_addr, [_tunl0()], kind="ipip") == (
        DelAddress("tunl0", IPNetwork("10.244.0.1/32")),
    )


def test_kind_and_desired_type_must_agree() -> None:
    with pytest.raises(TypeError):
        plan_tunnel_changes(VX, [], kind="ipip")
    with pytest.raises(ValueError, match="unknown"):
        plan_tunnel_changes(None, [], kind="gre")


def test_each_underlay_family_has_its_own_vxlan_device() -> None:
    """vxlanModeV6: the IPv6 device is planned apart; turning one family off
    leaves the other family's device alone."""
    vx6 = replace(VX, name="vxlan-v6.mesh", local=IPAddress("2001:db8::1"), mtu=1430)
    link6 = _vx_link(name="vxlan-v6.mesh", local=IPAddress("2001:db8::1"), mtu=1430)
    both = [_vx_link(), link6]
    assert plan_tunnel_changes(VX, both, kind="vxlan") == ()
    assert plan_tunnel_changes(vx6, both, kind="vxlan6") == ()
    assert plan_tunnel_changes(None, both, kind="vxlan") == (
        DeleteLink("vxlan.mesh", "vxlan mode off or device renamed"),
    )
    assert plan_tunnel_changes(None, both, kind="vxlan6") == (
        DeleteLink("vxlan-v6.mesh", "vxlan mode off or device renamed"),
    )
    with pytest.raises(TunnelError, match="not IPv6"):
        plan_tunnel_changes(VX, [], kind="vxlan6")
