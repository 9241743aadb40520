"""The lab's routers use the BIRD renderer the reflector role owns
(``bgpd.bird_config``); this name stays for the lab's modules and tests."""

from __future__ import annotations

from bgpd.bird_config import (
    BgpNeighbor,
    BirdConfig,
    BirdConfigError,
    PrefixFilter,
    PrefixRange,
    render_bird,
)

__all__ = [
    "BgpNeighbor",
    "BirdConfig",
    "BirdConfigError",
    "PrefixFilter",
    "PrefixRange",
    "render_bird",
]
