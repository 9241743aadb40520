"""``meshroute ipam serve``: run the host's local IPAM service (the unix
socket the ``meshroute-cni-ipam`` and ``meshroute-cni`` plugins talk to)
until SIGTERM/SIGINT.
``meshroute.cmd_ipam`` adds it with ``add_serve_parser``; ``python -m
meshroute.cmd_ipam_serve`` runs it alone. Prints one ``ready`` line on
stdout once the socket accepts requests."""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import sys
from collections.abc import Sequence

from datastore.port import StoreError
from ipam.allocator import IpamError
from ipam.cni_plugin import DEFAULT_SOCKET
from ipam.ipam import Ipam
from ipam.quoting import quote
from meshroute.errors import UserError
from meshroute.etcd_options import add_etcd_options, etcd_defaults, store_from_args
from meshroute.registry import NodeRecord, Registry


class ServeError(Exception):
    """The service cannot start; the message says why."""


def parse_labels(raw: str) -> dict[str, str]:
    """``k=v,k2=v2`` to a dict."""
    out: dict[str, str] = {}
    for pair in raw.split(","):
        pair = pair.strip()
        if not pair:
            continue
        k, sep, v = pair.partition("=")
        if not sep or not k.strip():
            raise argparse.ArgumentTypeError(f"label {quote(pair)} is not key=value")
        out[k.strip()] = v.strip()
    return out


def add_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--host",
        default=socket.gethostname(),
        help="this host's name in IPAM (default: the hostname)",
    )
    p.add_argument(
        "--labels",
        type=parse_labels,
        default={},
        help="this host's labels for pool nodeSelectors, k=v,k2=v2",
    )
    p.add_argument(
        "--socket",
        default=DEFAULT_SOCKET,
        help=f"unix socket to serve the CNI plugin on (default {DEFAULT_SOCKET})",
    )
    p.add_argument(
        "--l2-segment",
        action="store_true",
        help="pods share a bridge with their block as subnet: reserve the network, gateway "
        "and broadcast addresses of each block and hand out the gateway and a default route",
    )
    p.add_argument(
        "--netns",
        help="network namespace (name or path) for the host ends of routed pods' veths "
        "(default: this process's own; the lab and tests name the node's)",
    )
    add_etcd_options(p)
    p.set_defaults(func=run_serve)


def add_serve_parser(ipam_subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    add_options(ipam_subparsers.add_parser("serve", help="run the local IPAM service for CNI"))


async def _serve(args: argparse.Namespace) -> None:
    # Loaded only to serve: the command line does not need the service (nor
    # the netlink code it makes routed pods' veths with).
    from ipam.cni_service import HostIdentity, serve

    try:
        store = store_from_args(args)
    except StoreError as e:
        raise ServeError(f"cannot start: {e}") from e
    ipam = Ipam(store, prefix=args.prefix, l2_segment=args.l2_segment)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def ready() -> None:
        print(
            f"meshroute ipam serve: ready on {args.socket} for host {args.host}"
            f" ({'l2 segment' if args.l2_segment else 'routed'})",
            flush=True,
        )

    try:
        # The host exists for IPAM check/gc from now on, until it is deleted.
        await Registry(store, args.prefix).upsert(NodeRecord(args.host, args.labels))
        await serve(
            ipam,
            HostIdentity(args.host, args.labels),
            args.socket,
            stop=stop,
            ready=ready,
            host_netns=args.netns,
        )
    except StoreError as e:
        raise ServeError(f"cannot start: {e}") from e
    except IpamError as e:
        raise ServeError(f"cannot start: {e}") from e
    finally:
        await store.close()


def run_serve(args: argparse.Namespace) -> int:
    try:
        asyncio.run(_serve(args))
    except ServeError as e:
        raise UserError(str(e)) from e
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    import logging

    parser = argparse.ArgumentParser(
        prog="meshroute ipam serve", description="Run the local IPAM service for CNI."
    )
    add_options(parser)
    parser.set_defaults(**etcd_defaults())
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        asyncio.run(_serve(args))
    except (ServeError, UserError) as e:
        print(f"meshroute: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
