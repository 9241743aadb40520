"""The metric families a process computes for one scrape of ``/metrics``
(counters, gauges, summaries: typed and immutable) and their text in the
Prometheus exposition format 0.0.4, with the content type it is served as.

The text is byte for byte what prometheus_client's ``generate_latest`` wrote
for the same families before this module replaced it (importing that
library, and the HTTP, email and WSGI modules it pulls in, cost the node
process 2-3 MB of resident memory; issue 9): a counter's samples and
HELP/TYPE lines are named with ``_total``, labels appear sorted by name, and
values are written the way it writes them (``1.0``, ``+Inf``,
``1.234567e+06``), so what dashboards and alerts scrape does not change.
tests/unit/test_exposition.py holds that library's renderer and parser to
this one."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar, Generic, TypeVar

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


@dataclass(frozen=True)
class Sample:
    """One series of a counter or gauge: its label values, in the order of
    the family's label names, and its value."""

    labels: tuple[str, ...]
    value: float


@dataclass(frozen=True)
class SummarySample:
    """One series of a summary: how many observations, and their sum."""

    labels: tuple[str, ...]
    count: float
    sum: float


S = TypeVar("S", Sample, SummarySample)


@dataclass(frozen=True)
class _Family(Generic[S]):
    name: str
    help: str
    labels: tuple[str, ...] = ()
    samples: tuple[S, ...] = ()
    TYPE: ClassVar[str]

    def __post_init__(self) -> None:
        # What is refused here depends on the code, not on the data: names go
        # out unescaped and unquoted, so one that needed either is a bug. (Two
        # series with the same label values are not refused: they would come
        # from the data, and should not cost the whole scrape.)
        if not _METRIC_NAME.fullmatch(self.name):
            raise ValueError(f"invalid metric name {self.name!r}")
        for label in self.labels:
            if not _LABEL_NAME.fullmatch(label) or label.startswith("__"):
                raise ValueError(f"{self.name}: invalid label name {label!r}")
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(f"{self.name}: label names repeat: {self.labels}")
        if any(len(s.labels) != len(self.labels) for s in self.samples):
            raise ValueError(f"{self.name}: a sample's label values do not match {self.labels}")


@dataclass(frozen=True)
class CounterFamily(_Family[Sample]):
    """Rendered as ``<name>_total``: its name is given without that suffix."""

    TYPE: ClassVar[str] = "counter"

    def __post_init__(self) -> None:
        if self.name.endswith("_total"):
            raise ValueError(f"{self.name}: a counter is named without _total")
        super().__post_init__()


@dataclass(frozen=True)
class GaugeFamily(_Family[Sample]):
    TYPE: ClassVar[str] = "gauge"


@dataclass(frozen=True)
class SummaryFamily(_Family[SummarySample]):
    """Without quantiles: each series is ``<name>_count`` and ``<name>_sum``."""

    TYPE: ClassVar[str] = "summary"

    def __post_init__(self) -> None:
        if "quantile" in self.labels:
            raise ValueError(f"{self.name}: quantile is a summary's own label")
        super().__post_init__()


Family = CounterFamily | GaugeFamily | SummaryFamily


def render(families: Iterable[Family]) -> bytes:
    """Pure: the exposition text of one scrape, families in the order given
    (a family without samples still has its HELP and TYPE lines).

    A string UTF-8 cannot carry (a lone surrogate, as ``json.loads`` makes of
    ``"\\ud800"``) is written with ``?`` in its place: prometheus_client
    failed the whole scrape on it."""
    out: list[str] = []
    for f in families:
        name = f"{f.name}_total" if isinstance(f, CounterFamily) else f.name
        help_text = f.help.replace("\\", r"\\").replace("\n", r"\n")
        out.append(f"# HELP {name} {help_text}\n# TYPE {name} {f.TYPE}\n")
        # labels sorted by name, as prometheus_client wrote them
        order = sorted(range(len(f.labels)), key=f.labels.__getitem__)
        for s in f.samples:
            labels = _label_text([(f.labels[i], s.labels[i]) for i in order])
            if isinstance(s, SummarySample):
                out.append(f"{name}_count{labels} {format_value(s.count)}\n")
                out.append(f"{name}_sum{labels} {format_value(s.sum)}\n")
            else:
                out.append(f"{name}{labels} {format_value(s.value)}\n")
    return "".join(out).encode(errors="replace")


def _label_text(pairs: list[tuple[str, str]]) -> str:
    if not pairs:
        return ""
    escaped = (
        (k, v.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")) for k, v in pairs
    )
    return "{" + ",".join(f'{k}="{v}"' for k, v in escaped) + "}"


def format_value(value: float) -> str:
    """A sample value as prometheus_client wrote it: Python's shortest
    round-tripping form, but the infinities and NaN spelled as in Go, and a
    positive number of 10^6 or more in exponent form, as Go's shortest %g
    writes it (that library matched Go for positive values only: bucket
    bounds and quantiles are positive)."""
    v = float(value)
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if math.isnan(v):
        return "NaN"
    s = repr(v)
    dot = s.find(".")
    if v > 0 and dot > 6:
        mantissa = f"{s[0]}.{s[1:dot]}{s[dot + 1 :]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return s
