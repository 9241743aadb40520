"""What the reflector reads from etcd: the node registry and the BGP
resources, each BGPPeer checked on its own so a refusal names the resource
and the field (resources written around ``meshroute apply`` included), its
password resolved from its file or secret (``bgp_secrets``)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field

from pydantic import ValidationError

from meshroute.bgp_secrets import SecretStore, resolve_peer_passwords
from meshroute.bgp_store import BgpStore
from meshroute.registry import NodeRecord, Registry
from meshroute.resources import (
    BFDProfileSpec,
    BGPConfigurationSpec,
    BGPPeerSpec,
    bgp_peer_problems,
)


class ResourceRefused(ValueError):
    """Resources in etcd that cannot make a configuration; one line each."""

    def __init__(self, message: str, password_files: frozenset[str] = frozenset()) -> None:
        super().__init__(message)
        self.password_files = password_files  # still watched: fixing one re-applies


@dataclass(frozen=True)
class ReflectorView:
    nodes: Mapping[str, NodeRecord]
    bgp_config: BGPConfigurationSpec
    bgp_peers: Mapping[str, BGPPeerSpec]  # passwords inline
    bfd_profiles: Mapping[str, BFDProfileSpec] = field(default_factory=dict)
    password_files: frozenset[str] = field(default_factory=frozenset)


def _errors(where: str, e: ValidationError) -> list[str]:
    return [
        f"{where}: spec.{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors()
    ]


async def load_reflector_view(
    registry: Registry, bgp: BgpStore, secrets: SecretStore
) -> ReflectorView:
    problems: list[str] = []
    nodes = await registry.nodes()
    try:
        config = await bgp.config()
    except ValidationError as e:
        problems += _errors("BGPConfiguration default", e)
        config = BGPConfigurationSpec()
    peers: dict[str, BGPPeerSpec] = {}
    prefix = bgp.watch_prefix + b"peers/"
    listing = await bgp.store.list(prefix)
    for key, v in sorted(listing.items.items()):
        name = key[len(prefix) :].decode()
        try:
            spec = BGPPeerSpec.model_validate(json.loads(v.value))
        except ValidationError as e:
            problems += _errors(f"BGPPeer {name}", e)
            continue
        except ValueError as e:
            problems.append(f"BGPPeer {name}: not JSON: {e}")
            continue
        problems += [f"BGPPeer {name}: {p}" for p in bgp_peer_problems(spec)]
        peers[name] = spec
    try:
        profiles = await bgp.bfd_profiles()
    except ValidationError as e:
        problems += _errors("BFDProfile", e)
        profiles = {}
    resolved = await resolve_peer_passwords(peers, secrets)
    problems += resolved.problems
    if problems:
        raise ResourceRefused("\n".join(problems), resolved.files)
    return ReflectorView(nodes, config, resolved.peers, profiles, resolved.files)
