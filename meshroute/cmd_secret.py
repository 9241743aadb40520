"""``meshroute secret set|delete|list``: BGP passwords kept in etcd under
``<prefix>/secrets/v1/`` for BGPPeers that name them with ``passwordSecret``.
The value is read from a file or stdin, never from the command line (``ps``
shows arguments), and never printed."""

from __future__ import annotations

import argparse
import re
import sys

from datastore.port import KvStore
from ipam.ipam import Ipam
from meshroute.bgp_secrets import SecretStore, password_problem, read_password_file
from meshroute.cli_support import run_with_store
from meshroute.errors import UserError
from meshroute.etcd_options import add_etcd_options
from meshroute.registry import Registry
from meshroute.resources import SECRET_NAME

NAME = re.compile(SECRET_NAME)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("secret", help="BGP passwords in etcd (BGPPeer passwordSecret)")
    verbs = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    s = verbs.add_parser("set", help="create or replace a secret")
    s.add_argument("name")
    s.add_argument(
        "-f", "--from-file", default="-", help="file holding the password (default: stdin)"
    )
    d = verbs.add_parser("delete", help="delete a secret")
    d.add_argument("name")
    ls = verbs.add_parser("list", help="the secrets' names (never their values)")
    for q in (s, d, ls):
        add_etcd_options(q)
    s.set_defaults(func=cmd_set)
    d.set_defaults(func=cmd_delete)
    ls.set_defaults(func=cmd_list)


def _name(name: str) -> str:
    if not NAME.match(name):
        raise UserError(f"secret name {name[:40]!r}: letters, digits, '.', '_', '-'")
    return name


def _value(source: str) -> str:
    if source != "-":
        try:
            return read_password_file(source)
        except ValueError as e:
            raise UserError(str(e).replace("passwordFile", "secret file", 1)) from e
    raw = sys.stdin.buffer.read(4097)
    text = raw.decode("ascii", errors="replace")
    text = text[:-1] if text.endswith("\n") else text
    if why := password_problem(text):
        raise UserError(f"secret from stdin: {why}")
    return text


def cmd_set(args: argparse.Namespace) -> int:
    name, value = _name(args.name), _value(args.from_file)

    async def body(store: KvStore, ipam: Ipam, reg: Registry) -> bool:
        return await SecretStore(store, args.prefix).put(name, value)

    created = run_with_store(args, body)
    print(f"secret/{name} {'created' if created else 'configured'}")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    name = _name(args.name)

    async def body(store: KvStore, ipam: Ipam, reg: Registry) -> bool:
        return await SecretStore(store, args.prefix).delete(name)

    if not run_with_store(args, body):
        raise UserError(f"secret {name} does not exist")
    print(f"secret/{name} deleted")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    async def body(store: KvStore, ipam: Ipam, reg: Registry) -> list[str]:
        return await SecretStore(store, args.prefix).names()

    for name in run_with_store(args, body):
        print(name)
    return 0
