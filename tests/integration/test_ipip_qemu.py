"""Real IPIP, pod to pod across subnets, in a QEMU guest with Debian's stock kernel.

The host kernel has no ipip module, so the whole check (ipip_guest_check.py:
felix_lite plans and programs tunl0 and the routes on two hosts on different
subnets, a pod pings the pod on the other host through tunl0) runs in one
guest boot (tests/harness/qemu_guest.py). The test skips only
when QEMU cannot start at all; anything going wrong inside the guest fails it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.harness import qemu_guest

pytestmark = [pytest.mark.qemu, pytest.mark.slow]

BOOT_TIMEOUT_S = 180.0


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
    r = qemu_guest.run_in_guest(
        [sys.executable, "-m", "tests.integration.ipip_guest_check"], timeout=BOOT_TIMEOUT_S
    )
    print(f"qemu boot-to-verdict {r.verdict_s}s, QEMU total {r.total_s}s, guest marks {r.marks}")
    print(r.output)
    assert not r.timed_out, f"guest gave no verdict within {BOOT_TIMEOUT_S}s\n{r.describe()}"
    assert r.exit_code == 0, r.describe()
    lines = [ln for ln in r.output.splitlines() if ln.startswith("IPIP-CHECK ")]
    assert len(lines) == 1, r.describe()
    result = json.loads(lines[0].removeprefix("IPIP-CHECK "))
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
