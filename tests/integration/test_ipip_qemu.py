"""Real IPIP, pod to pod across subnets, in a QEMU guest with Debian's stock kernel.

The host kernel has no ipip module, so both checks run in one guest boot
(tests/harness/qemu_guest.py):

- ipip_guest_check.py: felix_lite plans and programs tunl0 and the routes on
  two hosts on different subnets, a pod pings the pod on the other host
  through tunl0;
- mesh_guest_check.py: the lab's mesh topology (``--encap auto``, which
  must pick IPIP there) with two real ``meshroute node`` processes; the
  routes the nodes install go over tunl0 and a pod ping crosses it.

The test skips only when QEMU cannot start at all; anything going wrong
inside the guest fails it.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from typing import Any

import pytest

from tests.harness import qemu_guest

# Under TCG the mesh lab alone takes minutes to come up (etcd, BIRD, two
# nodes importing everything, ExaBGP); the guest's own deadline comes first.
BOOT_TIMEOUT_S = 900.0
pytestmark = [pytest.mark.qemu, pytest.mark.slow, pytest.mark.timeout(BOOT_TIMEOUT_S + 120)]

# etcd, three BIRDs and two nodes (each with ExaBGP and a BFD daemon)
GUEST_MEMORY_MB = 2048


@pytest.fixture(scope="module")
def qemu_ready() -> None:
    try:
        qemu_guest.probe_qemu()
    except qemu_guest.QemuUnavailable:
        # The test installs what it needs, like CI on a fresh machine.
        if os.geteuid() == 0:
            subprocess.run([str(qemu_guest.REPO / "scripts" / "bootstrap")], check=False)
        try:
            qemu_guest.probe_qemu()
        except qemu_guest.QemuUnavailable as e:
            pytest.skip(f"QEMU cannot start here: {e}")


def test_pod_to_pod_over_ipip_in_guest(qemu_ready: None) -> None:
    py = shlex.quote(sys.executable)
    # One boot, both checks; the guest's exit code is non-zero if either failed.
    r = qemu_guest.run_in_guest(
        f"{py} -m tests.integration.ipip_guest_check; a=$?\n"
        f"{py} -m tests.integration.mesh_guest_check; b=$?\n"
        '[ "$a" = 0 ] && [ "$b" = 0 ]',
        timeout=BOOT_TIMEOUT_S,
        memory_mb=GUEST_MEMORY_MB,
    )
    print(f"qemu boot-to-verdict {r.verdict_s}s, QEMU total {r.total_s}s, guest marks {r.marks}")
    print(r.output)
    assert not r.timed_out, f"guest gave no verdict within {BOOT_TIMEOUT_S}s\n{r.describe()}"
    assert r.exit_code == 0, r.describe()
    _assert_ipip_check(_result_line(r, "IPIP-CHECK"))
    _assert_mesh_check(_result_line(r, "MESH-CHECK"))


def _result_line(r: qemu_guest.GuestResult, tag: str) -> dict[str, Any]:
    lines = [ln for ln in r.output.splitlines() if ln.startswith(f"{tag} ")]
    assert len(lines) == 1, r.describe()
    result: dict[str, Any] = json.loads(lines[0].removeprefix(f"{tag} "))
    return result


def _assert_ipip_check(result: dict[str, Any]) -> None:
    assert result["failures"] == []
    assert result["programmer"] == "felix"
    assert (
        "10.244.2.0/26 ipip 198.51.100.10@tunl0/onlink mtu=1480" in result["felix_a"]["read_back"]
    )
    assert "10.244.1.0/26 ipip 192.0.2.10@tunl0/onlink mtu=1480" in result["felix_b"]["read_back"]
    for node, peer_ip in (("a", "198.51.100.10"), ("b", "192.0.2.10")):
        route = result[f"route_{node}"]
        assert (route["dev"], route["gateway"], "onlink" in route["flags"]) == (
            "tunl0",
            peer_ip,
            True,
        )
        grew = (
            result["tunl0_after"][node]["tx_packets"] - result["tunl0_before"][node]["tx_packets"]
        )
        assert grew >= 7


def _assert_mesh_check(result: dict[str, Any]) -> None:
    assert result["failures"] == []
    assert result["encap"] == "ipip"
    assert result["matrix_failures"] == []
    routes = result["routes"]
    # the two racks' nodes, each the other's IPIP peer on another subnet
    assert {name: route["peer"] for name, route in routes.items()} == {
        "rack1-node1": "192.0.2.74",
        "rack2-node1": "192.0.2.10",
    }
    for route in routes.values():
        assert (route["dev"], route["gateway"], "onlink" in route["flags"]) == (
            "tunl0",
            route["peer"],
            True,
        )
        assert route["dst"].endswith("/26")  # the peer's block, not a default route
    for node in routes:
        for counter in ("tx_packets", "rx_packets"):
            grew = result["tunl0_after"][node][counter] - result["tunl0_before"][node][counter]
            assert grew >= result["pings"]
