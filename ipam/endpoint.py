"""The WorkloadEndpoint record: one per pod interface, written by CNI ADD in
the transaction that writes the pod's IPAM handle and deleted with the
handle's last address. Key: ``<prefix>/ipam/v1/endpoints/<node>/<handle>``,
where the handle is ``<containerId>.<ifname>``. The policy dataplane reads
them; ``meshroute label pod`` changes their labels."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from netaddr import IPAddress

from ipam import cni_args


@dataclass(frozen=True)
class NamedPort:
    name: str
    protocol: str
    port: int

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "protocol": self.protocol, "port": self.port}


@dataclass(frozen=True)
class WorkloadEndpoint:
    node: str
    namespace: str
    pod: str
    container_id: str
    ifname: str
    host_iface: str = ""  # "" when the pod's host side is not ours (a bridge plugin's veth)
    ips: tuple[str, ...] = ()  # host prefixes: "10.244.0.5/32", "fd00::5/128"
    labels: Mapping[str, str] = field(default_factory=dict)
    ports: tuple[NamedPort, ...] = ()

    @property
    def handle(self) -> str:
        return f"{self.container_id}.{self.ifname}"

    def with_ips(self, ips: Iterable[IPAddress]) -> WorkloadEndpoint:
        """The endpoint holding ``ips`` besides the ones it has, sorted."""
        have = {IPAddress(s.split("/")[0]) for s in self.ips} | set(ips)
        ordered = sorted(have, key=lambda ip: (ip.version, int(ip)))
        return replace(self, ips=tuple(f"{ip}/{32 if ip.version == 4 else 128}" for ip in ordered))

    def to_dict(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "namespace": self.namespace,
            "pod": self.pod,
            "containerId": self.container_id,
            "ifname": self.ifname,
            "hostIface": self.host_iface,
            "ips": list(self.ips),
            "labels": dict(sorted(self.labels.items())),
            "ports": [p.to_dict() for p in self.ports],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> WorkloadEndpoint:
        return cls(
            node=d["node"],
            namespace=d["namespace"],
            pod=d["pod"],
            container_id=d["containerId"],
            ifname=d["ifname"],
            host_iface=d.get("hostIface", ""),
            ips=tuple(d.get("ips", ())),
            labels=dict(d.get("labels", {})),
            ports=tuple(
                NamedPort(p["name"], p["protocol"], int(p["port"])) for p in d.get("ports", ())
            ),
        )


def plan_relabel(
    labels: Mapping[str, str], set_: Mapping[str, str], remove: Iterable[str]
) -> dict[str, str]:
    """Labels after ``k=v`` (set) and ``k-`` (remove) changes, validated."""
    out = {k: v for k, v in labels.items() if k not in set(remove)}
    out.update(set_)
    return cni_args.labels(out, "labels")
