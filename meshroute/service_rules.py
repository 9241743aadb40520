"""Rules across ServiceAddresses and the pools (pure): checked by ``apply``
against the resources of the apply and those already stored."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from netaddr import IPAddress, IPNetwork


def service_conflicts(
    new: Sequence[tuple[str, str, IPAddress]],
    existing: Mapping[str, IPAddress],
    pools: Mapping[str, IPNetwork],
) -> list[str]:
    """``new``: (where, name, address) of the applied ServiceAddresses;
    ``existing``: stored addresses by name (one being replaced by its new
    version does not count); ``pools``: pool CIDRs by name."""
    replaced = {name for _, name, _ in new}
    taken = {a: f"existing serviceaddress {n}" for n, a in existing.items() if n not in replaced}
    out = []
    for where, name, address in new:
        if address in taken:
            out.append(f"{where}: spec.address: {address} is already {taken[address]}'s")
        else:
            taken[address] = f"serviceaddress {name}"
        for pool, cidr in sorted(pools.items()):
            if address in cidr:
                out.append(
                    f"{where}: spec.address: {address} is in IP pool {pool} ({cidr}); "
                    "service addresses lie outside the pools"
                )
    return out
