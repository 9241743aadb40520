"""The rules a pool must satisfy, as data: each rule names the field it
checks and says what is wrong. Used when a pool is applied (CLI, YAML) and
again by the datastore shell before it writes one."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ipam.model import EncapMode, Pool
from ipam.quoting import counted, quote
from ipam.selector import SelectorError, parse_selector

# Calico's ranges: a block must fit in the pool and hold at least 1 address;
# blocks larger than /20 (v4) or /116 (v6) make host affinity meaningless.
BLOCK_SIZE_RANGE = {4: (20, 32), 6: (116, 128)}
DEFAULT_BLOCK_SIZE = {4: 26, 6: 122}
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,61}[a-z0-9])?$")


@dataclass(frozen=True)
class Problem:
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


def _name(p: Pool) -> str | None:
    if not _NAME.match(p.name):
        return f"{quote(p.name)} is not a valid name (lower case letters, digits, '-', '.')"
    return None


def _cidr(p: Pool) -> str | None:
    if p.cidr.ip != p.cidr.network:
        return f"{p.cidr} has host bits set (did you mean {p.cidr.cidr}?)"
    return None


def _block_size(p: Pool) -> str | None:
    lo, hi = BLOCK_SIZE_RANGE[p.version]
    if not lo <= p.block_size <= hi:
        return f"{p.block_size} is out of range {lo}..{hi} for IPv{p.version}"
    if p.block_size < p.cidr.prefixlen:
        return f"/{p.block_size} blocks do not fit in {p.cidr}"
    return None


def _encap(p: Pool) -> str | None:
    if p.ipip_mode is not EncapMode.NEVER and p.vxlan_mode is not EncapMode.NEVER:
        return "ipipMode and vxlanMode cannot both be enabled"
    if p.version == 6 and p.ipip_mode is not EncapMode.NEVER:
        return "IPIP carries IPv4 only; use vxlanMode for IPv6 pools"
    return None


def _selector(p: Pool) -> str | None:
    try:
        parse_selector(p.node_selector)
    except SelectorError as e:
        return str(e)
    return None


def _uses(p: Pool) -> str | None:
    if not p.allowed_uses:
        return "at least one of Workload, Tunnel is needed"
    return None


RULES: tuple[tuple[str, Callable[[Pool], str | None]], ...] = (
    ("metadata.name", _name),
    ("spec.cidr", _cidr),
    ("spec.blockSize", _block_size),
    ("spec.ipipMode", _encap),
    ("spec.nodeSelector", _selector),
    ("spec.allowedUses", _uses),
)


def pool_problems(pool: Pool) -> list[Problem]:
    return [Problem(f, msg) for f, rule in RULES if (msg := rule(pool)) is not None]


def overlapping(pool: Pool, others: Iterable[Pool]) -> list[Pool]:
    """Other pools (by name) whose CIDR overlaps this one's."""
    out = []
    for o in others:
        if o.name == pool.name or o.version != pool.version:
            continue
        if pool.cidr.first <= o.cidr.last and o.cidr.first <= pool.cidr.last:
            out.append(o)
    return out


def decide_pool_change(old: Pool | None, new: Pool, blocks_in_use: int) -> Problem | None:
    """Why ``old`` cannot become ``new`` (None: it can): the CIDR and block
    size hold still while blocks are allocated from the pool, since those
    blocks would be orphaned."""
    if old is None or not blocks_in_use:
        return None
    if (old.cidr, old.block_size) == (new.cidr, new.block_size):
        return None
    return Problem(
        "spec.cidr" if old.cidr != new.cidr else "spec.blockSize",
        f"cidr and blockSize cannot change while blocks are allocated from the pool "
        f"({counted(blocks_in_use, 'block')} now); disable it and create another",
    )
