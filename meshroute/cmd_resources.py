"""``meshroute apply -f``, ``get`` and ``delete``: cluster resources (IP
pools, IPAM configuration, nodes) managed from YAML, kubectl-style."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import yaml

from datastore.port import KvStore
from ipam.ipam import Ipam
from ipam.quoting import quote
from meshroute.apply_txn import apply_all
from meshroute.bgp_secrets import REDACTED
from meshroute.bgp_store import BgpStore
from meshroute.cli_support import print_json, print_table, run_with_store
from meshroute.errors import UserError
from meshroute.etcd_options import add_etcd_options
from meshroute.policy_store import PolicyStore, to_document
from meshroute.registry import Registry
from meshroute.resources import (
    API_VERSION,
    BGPPeerResource,
    BGPPeerSpec,
    ResourceError,
    load_files,
    overlap_problems,
    pool_to_resource,
)
from meshroute.service_store import ServiceStore

POOL_COLUMNS = ["NAME", "CIDR", "BLOCK", "IPIP", "VXLAN", "NAT", "DISABLED", "SELECTOR", "USES"]
NODE_COLUMNS = ["NAME", "IPV4", "ASN", "ALIVE", "LABELS"]
PEER_COLUMNS = ["NAME", "NODES", "PEER", "ASN", "PASSWORD", "PASSIVE", "BFD"]
BFD_COLUMNS = ["NAME", "RX_MS", "TX_MS", "MULTIPLIER", "PASSIVE", "MIN_TTL"]
Rows = tuple[list[str], list[list[Any]]] | None

GET_KINDS = {
    "pools": "pools",
    "pool": "pools",
    "ippools": "pools",
    "ippool": "pools",
    "ipamconfig": "ipamconfig",
    "ipamconfiguration": "ipamconfig",
    "nodes": "nodes",
    "node": "nodes",
    "bgpconfig": "bgpconfig",
    "bgpconfiguration": "bgpconfig",
    "bgppeers": "bgppeers",
    "bgppeer": "bgppeers",
    "networkpolicies": "networkpolicies",
    "networkpolicy": "networkpolicies",
    "netpol": "networkpolicies",
    "globalnetworkpolicies": "globalnetworkpolicies",
    "globalnetworkpolicy": "globalnetworkpolicies",
    "gnp": "globalnetworkpolicies",
    "namespaces": "namespaces",
    "namespace": "namespaces",
    "ns": "namespaces",
    "bfdprofiles": "bfdprofiles",
    "bfdprofile": "bfdprofiles",
    "serviceaddresses": "serviceaddresses",
    "serviceaddress": "serviceaddresses",
    "svcaddr": "serviceaddresses",
}
SINGULAR = {
    "networkpolicies": "networkpolicy",
    "globalnetworkpolicies": "globalnetworkpolicy",
    "namespaces": "namespace",
}
DELETE_KINDS = {
    "pool": "pools",
    "ippool": "pools",
    "node": "nodes",
    "bgppeer": "bgppeers",
    "networkpolicy": "networkpolicies",
    "netpol": "networkpolicies",
    "globalnetworkpolicy": "globalnetworkpolicies",
    "gnp": "globalnetworkpolicies",
    "namespace": "namespaces",
    "ns": "namespaces",
    "bfdprofile": "bfdprofiles",
    "serviceaddress": "serviceaddresses",
    "svcaddr": "serviceaddresses",
}
SERVICE_COLUMNS = ["NAME", "ADDRESS", "PORTS", "ENDPOINTS"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("apply", help="create or update resources from YAML files")
    p.add_argument(
        "-f",
        "--filename",
        action="append",
        required=True,
        help="a YAML file with one or more resources ('-' for stdin); repeatable",
    )
    add_etcd_options(p)
    p.set_defaults(func=cmd_apply)

    g = sub.add_parser("get", help="list resources")
    g.add_argument("kind", choices=sorted(GET_KINDS), help="what to list")
    g.add_argument("-o", "--output", choices=("table", "yaml", "json"), default="table")
    add_etcd_options(g)
    g.set_defaults(func=cmd_get)

    d = sub.add_parser("delete", help="delete a resource")
    d.add_argument("kind", choices=sorted(DELETE_KINDS))
    d.add_argument("name", help="the name (a NetworkPolicy: NAMESPACE/NAME)")
    add_etcd_options(d)
    d.set_defaults(func=cmd_delete)


def cmd_apply(args: argparse.Namespace) -> int:
    try:
        loaded = load_files(args.filename, sys.stdin.buffer)
    except ResourceError as e:
        raise UserError(f"nothing applied:\n{e}") from e
    if problems := overlap_problems(loaded, []):
        raise UserError("nothing applied:\n" + "\n".join(problems))
    for item in loaded:
        if isinstance(item.resource, BGPPeerResource) and item.resource.spec.password:
            print(
                f"meshroute: warning: {item.source}: spec.password is stored in etcd in the"
                " clear, readable by every etcd user of the cluster prefix; prefer passwordFile"
                " or passwordSecret",
                file=sys.stderr,
            )

    async def body(store: KvStore, ipam: Ipam, reg: Registry) -> list[str]:
        return await apply_all(store, args.prefix, loaded)

    for line in run_with_store(args, body):
        print(line)
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    kind = GET_KINDS[args.kind]

    async def body(store: KvStore, ipam: Ipam, reg: Registry) -> tuple[list[dict[str, Any]], Rows]:
        if kind == "pools":
            pools = sorted(await ipam.pools(), key=lambda p: p.name)
            rows = [
                [
                    p.name,
                    p.cidr,
                    p.block_size,
                    p.ipip_mode.value,
                    p.vxlan_mode.value,
                    p.nat_outgoing,
                    p.disabled,
                    p.node_selector,
                    ",".join(u.value for u in p.allowed_uses),
                ]
                for p in pools
            ]
            return [pool_to_resource(p) for p in pools], (POOL_COLUMNS, rows)
        if kind in ("networkpolicies", "globalnetworkpolicies", "namespaces"):
            return await _policy_docs(PolicyStore(store, args.prefix), kind)
        if kind in ("bgpconfig", "bgppeers", "bfdprofiles"):
            return await _bgp_docs(BgpStore(store, args.prefix), kind)
        if kind == "serviceaddresses":
            return await _service_docs(ServiceStore(store, args.prefix))
        if kind == "ipamconfig":
            s = await ipam.settings()
            doc = {
                "apiVersion": API_VERSION,
                "kind": "IPAMConfiguration",
                "metadata": {"name": "default"},
                "spec": s.to_dict(),
            }
            return [doc], None
        alive = await reg.alive()
        nodes = sorted((await reg.nodes()).values(), key=lambda n: n.name)
        docs = [
            {
                "apiVersion": API_VERSION,
                "kind": "Node",
                "metadata": {"name": n.name},
                "spec": n.to_dict(),
                "status": {"alive": n.name in alive},
            }
            for n in nodes
        ]
        rows = [
            [
                n.name,
                n.ipv4,
                n.asn,
                n.name in alive,
                ",".join(f"{k}={v}" for k, v in sorted(n.labels.items())),
            ]
            for n in nodes
        ]
        return docs, (NODE_COLUMNS, rows)

    docs, table = run_with_store(args, body)
    if args.output == "json":
        print_json(docs)
    elif args.output == "yaml" or table is None:
        print(yaml.safe_dump_all(docs, sort_keys=False), end="")
    else:
        print_table(*table)
    return 0


async def _bgp_docs(bgp: BgpStore, kind: str) -> tuple[list[dict[str, Any]], Rows]:
    if kind == "bgpconfig":
        spec = (await bgp.config()).model_dump(mode="json", by_alias=True)
        return [_doc("BGPConfiguration", "default", spec)], None
    if kind == "bfdprofiles":
        profiles = sorted((await bgp.bfd_profiles()).items())
        docs = [
            _doc("BFDProfile", n, p.model_dump(mode="json", by_alias=True)) for n, p in profiles
        ]
        rows = [
            [
                n,
                p.receive_interval,
                p.transmit_interval,
                p.detect_multiplier,
                p.passive_mode,
                p.minimum_ttl,
            ]
            for n, p in profiles
        ]
        return docs, (BFD_COLUMNS, rows)
    peers = await bgp.peers()
    docs = [_doc("BGPPeer", name, _redacted(spec)) for name, spec in sorted(peers.items())]
    rows = [
        [
            name,
            p.node or p.node_selector or "(all)",
            p.peer_ip or p.peer_selector,
            p.as_number,
            _password_column(p),
            p.passive,
            p.bfd_profile or "",
        ]
        for name, p in sorted(peers.items())
    ]
    return docs, (PEER_COLUMNS, rows)


async def _service_docs(services: ServiceStore) -> tuple[list[dict[str, Any]], Rows]:
    state = await services.load()
    for problem in state.problems:
        print(f"meshroute: warning: {problem}", file=sys.stderr)
    items = sorted(state.addresses.items())
    docs = [
        _doc("ServiceAddress", n, s.model_dump(mode="json", by_alias=True, exclude_none=True))
        for n, s in items
    ]
    rows = [
        [
            n,
            s.address,
            ",".join(f"{p.port}/{p.protocol}" for p in s.ports),
            len(s.endpoints),
        ]
        for n, s in items
    ]
    return docs, (SERVICE_COLUMNS, rows)


async def _policy_docs(ps: PolicyStore, kind: str) -> tuple[list[dict[str, Any]], Rows]:
    state = await ps.load()
    if kind == "networkpolicies":
        nps = state.network_policies
        rows = [
            [
                r.metadata.namespace,
                r.metadata.name,
                ",".join(r.spec.policy_types or []) or "(default)",
            ]
            for r in nps
        ]
        return [to_document(r) for r in nps], (["NAMESPACE", "NAME", "TYPES"], rows)
    if kind == "globalnetworkpolicies":
        gnps = sorted(
            state.global_policies,
            key=lambda r: (r.spec.order is None, r.spec.order or 0.0, r.metadata.name),
        )
        rows = [
            [r.metadata.name, "" if r.spec.order is None else f"{r.spec.order:g}", r.spec.selector]
            for r in gnps
        ]
        return [to_document(r) for r in gnps], (["NAME", "ORDER", "SELECTOR"], rows)
    nss = state.namespaces
    rows = [
        [
            r.metadata.name,
            ",".join(f"{k}={v}" for k, v in sorted((r.metadata.labels or {}).items())),
        ]
        for r in nss
    ]
    return [to_document(r) for r in nss], (["NAME", "LABELS"], rows)


def _redacted(spec: BGPPeerSpec) -> dict[str, Any]:
    doc = spec.model_dump(mode="json", by_alias=True, exclude_none=True)
    if "password" in doc:
        doc["password"] = REDACTED
    return doc


def _password_column(p: BGPPeerSpec) -> str:
    if p.password_file:
        return f"file {p.password_file}"
    if p.password_secret:
        return f"secret {p.password_secret}"
    return REDACTED if p.password else ""


def _doc(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": kind, "metadata": {"name": name}, "spec": spec}


def cmd_delete(args: argparse.Namespace) -> int:
    kind = DELETE_KINDS[args.kind]
    if kind == "networkpolicies" and args.name.count("/") != 1:
        raise UserError(f"networkpolicy: give NAMESPACE/NAME, not {quote(args.name)}")

    async def body(store: KvStore, ipam: Ipam, reg: Registry) -> str:
        if kind in ("networkpolicies", "globalnetworkpolicies", "namespaces"):
            if not await PolicyStore(store, args.prefix).delete(kind, args.name):
                raise UserError(f"{args.kind} {quote(args.name)} does not exist")
            return f"{SINGULAR[kind]}/{args.name} deleted"
        if kind == "pools":
            await ipam.delete_pool(args.name)
            return f"ippool/{args.name} deleted"
        if kind == "bgppeers":
            if not await BgpStore(store, args.prefix).delete_peer(args.name):
                raise UserError(f"bgppeer {quote(args.name)} does not exist")
            return f"bgppeer/{args.name} deleted"
        if kind == "bfdprofiles":
            return await _delete_bfd_profile(BgpStore(store, args.prefix), args.name)
        if kind == "serviceaddresses":
            if not await ServiceStore(store, args.prefix).delete(args.name):
                raise UserError(f"serviceaddress {quote(args.name)} does not exist")
            return f"serviceaddress/{args.name} deleted"
        if not await reg.delete(args.name):
            raise UserError(f"node {quote(args.name)} does not exist")
        return (
            f"node/{args.name} deleted; 'meshroute ipam check' now lists its blocks "
            f"and 'meshroute ipam gc' releases them"
        )

    print(run_with_store(args, body))
    return 0


async def _delete_bfd_profile(bgp: BgpStore, name: str) -> str:
    """Refused while a BGPPeer or the mesh still names the profile: their
    sessions would silently lose BFD."""
    peers = sorted((await bgp.peers()).items())
    users = [f"bgppeer/{n}" for n, p in peers if p.bfd_profile == name]
    if (await bgp.config()).node_to_node_mesh_bfd_profile == name:
        users.append("bgpconfiguration/default (nodeToNodeMeshBFDProfile)")
    if users:
        raise UserError(f"bfdprofile {name} is in use by {', '.join(users)}; change those first")
    if not await bgp.delete_bfd_profile(name):
        raise UserError(f"bfdprofile {name} does not exist")
    return f"bfdprofile/{name} deleted"
