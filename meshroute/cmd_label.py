"""``meshroute label pod NS/NAME k=v k2-``: change a pod's labels in the
WorkloadEndpoint records of all its interfaces, with compare-and-swap
writes, as ``kubectl label`` does (``k-`` removes ``k``; a key already set
is overwritten)."""

from __future__ import annotations

import argparse

from datastore.port import KvStore
from ipam import cni_args
from ipam.endpoint import WorkloadEndpoint
from ipam.ipam import Ipam
from ipam.quoting import quote
from meshroute.cli_support import run_with_store
from meshroute.errors import UserError
from meshroute.etcd_options import add_etcd_options
from meshroute.registry import Registry


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("label", help="change the labels of a pod's endpoints")
    kinds = p.add_subparsers(dest="label_kind", required=True, metavar="KIND")
    pod = kinds.add_parser("pod", help="label a pod: meshroute label pod NS/NAME k=v k2-")
    pod.add_argument("pod", metavar="NS/NAME")
    pod.add_argument("changes", nargs="+", metavar="KEY=VALUE|KEY-")
    add_etcd_options(pod)
    pod.set_defaults(func=cmd_label_pod)


def plan_changes(changes: list[str]) -> tuple[dict[str, str], list[str]]:
    """``k=v`` and ``k-`` arguments to (labels to set, keys to remove);
    refuses malformed ones and a key both set and removed."""
    set_: dict[str, str] = {}
    remove: list[str] = []
    try:
        for c in changes:
            k, sep, v = c.partition("=")
            if sep:
                set_[cni_args.label_key(k, "label")] = cni_args.label_value(v, f"label {k}")
            elif c.endswith("-") and len(c) > 1:
                remove.append(cni_args.label_key(c[:-1], "label"))
            else:
                raise UserError(f"{quote(c)} is neither KEY=VALUE nor KEY-")
    except cni_args.Invalid as e:
        raise UserError(str(e)) from e
    both = set(set_) & set(remove)
    if both:
        raise UserError(f"label {', '.join(sorted(both))} is both set and removed")
    return set_, remove


def cmd_label_pod(args: argparse.Namespace) -> int:
    ns, slash, name = args.pod.partition("/")
    if not slash:
        raise UserError(f"{quote(args.pod)} is not NS/NAME")
    try:
        cni_args.namespace(ns, "namespace")
        cni_args.pod_name(name, "pod name")
    except cni_args.Invalid as e:
        raise UserError(str(e)) from e
    set_, remove = plan_changes(args.changes)

    async def body(store: KvStore, ipam: Ipam, reg: Registry) -> list[WorkloadEndpoint]:
        try:
            return await ipam.relabel_pod(ns, name, set_, remove)
        except cni_args.Invalid as e:  # e.g. too many labels in all
            raise UserError(f"pod {ns}/{name}: {e}") from e

    for ep in run_with_store(args, body):
        shown = ",".join(f"{k}={v}" for k, v in sorted(ep.labels.items())) or "(none)"
        print(f"pod {ns}/{name} ({ep.node} {ep.ifname}) labelled: {shown}")
    return 0
