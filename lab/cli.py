"""The lab's command line, ``python -m lab up|down|status|demo`` (also
``meshroute lab up|down|status`` and ``meshroute demo``, which hand their
arguments here):

- ``up|down|status``: ``up`` builds a lab, prints the summary and, unless
  ``--keep``, takes it down again; its exit status says whether every pod
  reached every pod. ``down`` removes a lab, also after a crash. The lab is
  dual stack unless ``--ipv4-only`` (the dual-homed topology is IPv4 only):
  both families everywhere, and an IPv6 ping matrix (``ping -6``) beside the
  IPv4 one.
- ``demo`` (what ``make demo`` runs): the lab in three of its topologies in
  turn, full mesh, ToR eBGP and route reflectors (``--topology dual-homed``
  adds the fourth), each built, checked with its
  pod-to-pod ping matrices and taken down again; in the first, a policy step
  (``lab.policy``): default-deny plus one allow rule, the matrix with the
  denied pairs marked, the policy removed, the full matrix again.

Mistakes the operator can fix end with exit 1 and one line."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lab.topology import Encap

DEFAULT_RUN_DIR = "/run/meshroute-lab"
# as in lab.topology, which the parser does not import (it pulls in bgpd)
TOPOLOGIES = ("mesh", "tor", "rr", "dual-homed")
# the fabric carries these topologies' pod routes: no tunnel to choose
FABRIC_ROUTED = ("tor", "dual-homed")
# what ``demo`` runs unless told: dual-homed (FRR beside BIRD, BFD) takes
# several times as long to converge
DEMO_TOPOLOGIES = ("mesh", "tor", "rr")
POD_MODES = ("routed", "bridge")
ENCAP_CHOICES = ("auto", "ipip", "vxlan")
IPV6_TRANSPORTS = ("IPv6Peers", "MultiProtocol")
# topologies the lab builds on IPv4 only, whatever --dual-stack says
IPV4_ONLY = ("dual-homed",)


class UserError(Exception):
    """A mistake the operator can fix; ends the command with exit 1."""


def build_parser(prog: str = "python -m lab") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="A meshroute cluster in network namespaces on this machine."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at debug level")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _register_lab(sub)
    _register_demo(sub)
    return parser


def main(argv: Sequence[str] | None = None, prog: str = "python -m lab") -> int:
    args = build_parser(prog).parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args))
    except UserError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _register_lab(lsub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    up = lsub.add_parser("up", help="build the lab, show the summary and the ping matrix")
    up.add_argument("--topology", choices=TOPOLOGIES, default="mesh")
    up.add_argument("--racks", type=int, default=2)
    up.add_argument("--nodes-per-rack", type=int, default=2)
    up.add_argument("--pods-per-node", type=int, default=2)
    up.add_argument("--password", help="TCP-MD5 password on the sessions with the nodes")
    up.add_argument(
        "--placement",
        choices=("root", "netns"),
        default="root",
        help="node processes in the root namespace (default) or inside their namespace",
    )
    up.add_argument(
        "--pod-mode",
        choices=POD_MODES,
        default="routed",
        help="routed pods by meshroute-cni (default), or Debian's bridge plugin with "
        "meshroute-cni-ipam on an L2 segment (one block per node)",
    )
    up.add_argument(
        "--encap",
        choices=ENCAP_CHOICES,
        default="auto",
        help="how pods cross racks in mesh and rr: auto (IPIP where the kernel has it, "
        "else VXLAN), ipip or vxlan (all CrossSubnet)",
    )
    _add_family_switch(up)
    up.add_argument("--keep", action="store_true", help="leave the lab running")
    up.add_argument("--converge-seconds", type=float, default=30.0)
    up.set_defaults(func=cmd_up)

    down = lsub.add_parser("down", help="remove the lab (also after a crash)")
    down.set_defaults(func=cmd_down)

    status = lsub.add_parser("status", help="sessions, node routes, IPAM use, ping matrix")
    status.add_argument("--no-ping", action="store_true")
    status.set_defaults(func=cmd_status)

    for p in (up, down, status):
        p.add_argument("--run-dir", default=DEFAULT_RUN_DIR, help=f"default {DEFAULT_RUN_DIR}")
        p.add_argument("--prefix", default="mrlab", help=argparse.SUPPRESS)


def _add_family_switch(p: argparse.ArgumentParser) -> None:
    families = p.add_mutually_exclusive_group()
    families.add_argument(
        "--dual-stack",
        dest="dual_stack",
        action="store_true",
        default=True,
        help="IPv4 and IPv6 on every node, pod and router, two ping matrices (default)",
    )
    families.add_argument(
        "--ipv4-only",
        "--single-stack",
        dest="dual_stack",
        action="store_false",
        help="IPv4 only",
    )
    p.add_argument(
        "--ipv6-transport",
        choices=IPV6_TRANSPORTS,
        default="IPv6Peers",
        help="how IPv6 routes reach and leave the nodes (BGPConfiguration ipv6Transport): "
        "sessions on the IPv6 addresses too (default), or IPv6 on the IPv4 sessions",
    )


def _need_root() -> None:
    if os.geteuid() != 0:
        raise UserError("the lab creates network namespaces: run it as root")


def cmd_up(args: argparse.Namespace) -> int:
    _need_root()
    from lab.build import start_meshroute_node
    from lab.kernel import kernel_has_module
    from lab.status import summary
    from lab.topology import LabParams, decide_encap
    from lab.up import lab_down, lab_up

    encap: Encap = "vxlan"
    if args.topology not in FABRIC_ROUTED:
        has_ipip = args.encap != "vxlan" and kernel_has_module("ipip")
        try:
            encap, note = decide_encap(args.encap, has_ipip)
        except ValueError as e:
            raise UserError(str(e)) from e
        print(f"==> {note or f'{encap.upper()} CrossSubnet across racks'}", flush=True)
    dual_stack = args.dual_stack and args.topology not in IPV4_ONLY
    if args.dual_stack and not dual_stack:
        print(f"==> the {args.topology} topology is IPv4 only", flush=True)
    params = LabParams(
        topology=args.topology,
        racks=args.racks,
        nodes_per_rack=args.nodes_per_rack,
        pods_per_node=args.pods_per_node,
        run_dir=args.run_dir,
        bgp_password=args.password,
        node_placement=args.placement,
        pod_mode=args.pod_mode,
        encap=encap,
        dual_stack=dual_stack,
        ipv6_transport=args.ipv6_transport,
    )
    bad = params.problems()
    if bad:
        raise UserError("; ".join(bad))
    try:
        res = lab_up(
            params,
            start_meshroute_node,
            prefix=args.prefix,
            converge_timeout=args.converge_seconds,
        )
    except RuntimeError as e:
        raise UserError(f"lab up failed: {e}") from e
    ok = res.all_ok
    try:
        print(summary(res.lab, res.matrix, matrix6=res.matrix6), flush=True)
        if getattr(args, "policy_step", False):
            from lab.policy import policy_step

            print("==> policy step", flush=True)
            try:
                ok = policy_step(res.lab, lambda m: print(f"==> {m}", flush=True)) and ok
            except RuntimeError as e:
                print(f"==> policy step failed: {e}", flush=True)
                ok = False
    finally:
        if not args.keep:
            lab_down(args.run_dir, args.prefix)
    families = " on IPv4 and IPv6" if res.matrix6 is not None else ""
    print(f"==> {'every pod reached every pod' + families if ok else 'some pods did not answer'}")
    if args.keep:
        print(f"==> the lab keeps running; remove it: meshroute lab down --run-dir {args.run_dir}")
    return 0 if ok else 1


def cmd_down(args: argparse.Namespace) -> int:
    _need_root()
    from lab.up import lab_down

    lab_down(args.run_dir, args.prefix)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    _need_root()
    from lab.build import load_lab
    from lab.pods import ping_matrix, pod_endpoints
    from lab.status import summary

    lab = load_lab(args.run_dir)
    if lab is None:
        raise UserError(f"no lab in {args.run_dir}")
    ping = not args.no_ping and bool(lab.state.pods)
    matrix = ping_matrix(pod_endpoints(lab)) if ping else None
    matrix6 = ping_matrix(pod_endpoints(lab, 6)) if ping and lab.plan.params.dual_stack else None
    print(summary(lab, matrix, matrix6=matrix6))
    return 0 if all(m is None or m.all_ok for m in (matrix, matrix6)) else 1


def _register_demo(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("demo", help="the lab in every topology: build, ping matrix, down (root)")
    p.add_argument(
        "--topology",
        choices=TOPOLOGIES,
        action="append",
        help="only these topologies (repeatable; default: mesh, tor and rr)",
    )
    p.add_argument(
        "--keep",
        action="store_true",
        help="leave the (last) lab running; remove it with 'meshroute lab down'",
    )
    p.add_argument("--pod-mode", choices=POD_MODES, default="routed")
    p.add_argument(
        "--encap", choices=ENCAP_CHOICES, default="auto", help="as for 'lab up' (default auto)"
    )
    _add_family_switch(p)
    p.add_argument("--run-dir", default=DEFAULT_RUN_DIR)
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    topologies = args.topology or list(DEMO_TOPOLOGIES)
    results = {}
    for i, topology in enumerate(topologies):
        print(f"\n######## lab topology: {topology} ########", flush=True)
        up = argparse.Namespace(
            topology=topology,
            racks=2,
            nodes_per_rack=2,
            pods_per_node=2,
            password=None,
            placement="root",
            pod_mode=args.pod_mode,
            encap=args.encap,
            dual_stack=args.dual_stack,
            ipv6_transport=args.ipv6_transport,
            keep=args.keep and i == len(topologies) - 1,
            converge_seconds=60.0 if topology == "dual-homed" else 30.0,
            run_dir=args.run_dir,
            prefix="mrlab",
            policy_step=i == 0,  # once is enough: policy does not depend on the topology
        )
        results[topology] = cmd_up(up)
    print("\n######## demo ########")
    for topology, rc in results.items():
        both = args.dual_stack and topology not in IPV4_ONLY
        families = " on IPv4 and IPv6" if both else ""
        print(f"{topology:>5}: {'every pod reached every pod' + families if rc == 0 else 'FAILED'}")
    return 0 if all(rc == 0 for rc in results.values()) else 1
