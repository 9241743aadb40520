"""Where IPAM records live in the datastore."""

from __future__ import annotations

from netaddr import IPNetwork


class Keys:
    def __init__(self, prefix: str = "/meshroute") -> None:
        self.root = prefix.rstrip("/") + "/ipam/v1"

    @staticmethod
    def _cidr(cidr: IPNetwork) -> str:
        return str(cidr.cidr).replace("/", "-")

    @staticmethod
    def cidr_from_key(key: bytes) -> IPNetwork:
        last = key.decode().rsplit("/", 1)[-1]
        addr, _, plen = last.rpartition("-")
        return IPNetwork(f"{addr}/{plen}")

    @property
    def pools(self) -> bytes:
        return f"{self.root}/pools/".encode()

    def pool(self, name: str) -> bytes:
        return f"{self.root}/pools/{name}".encode()

    @property
    def blocks(self) -> bytes:
        return f"{self.root}/blocks/".encode()

    def block(self, cidr: IPNetwork) -> bytes:
        return f"{self.root}/blocks/{self._cidr(cidr)}".encode()

    @property
    def affinities(self) -> bytes:
        return f"{self.root}/affinity/".encode()

    def host_affinities(self, host: str) -> bytes:
        return f"{self.root}/affinity/{host}/".encode()

    def affinity(self, host: str, cidr: IPNetwork) -> bytes:
        return f"{self.root}/affinity/{host}/{self._cidr(cidr)}".encode()

    @property
    def handles(self) -> bytes:
        return f"{self.root}/handles/".encode()

    def handle(self, handle: str) -> bytes:
        return f"{self.root}/handles/{handle}".encode()

    @property
    def endpoints(self) -> bytes:
        return f"{self.root}/endpoints/".encode()

    def endpoint(self, node: str, handle: str) -> bytes:
        return f"{self.root}/endpoints/{node}/{handle}".encode()

    @property
    def settings(self) -> bytes:
        return f"{self.root}/settings".encode()
