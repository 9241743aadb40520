"""meshroute.runtime.exposition against prometheus_client, which the product
no longer imports but the tests keep as the reference: for any families,
the text is byte for byte what its ``generate_latest`` wrote, and its parser
reads the text back to the same families and samples, hostile label values
included. And the renderer's own rules, and that the processes' import path
is free of that library."""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Iterator, Sequence

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from meshroute.runtime.exposition import (
    CounterFamily,
    Family,
    GaugeFamily,
    Sample,
    SummaryFamily,
    SummarySample,
    format_value,
    render,
)

HOSTILE = [
    'say "hi"',
    "back\\slash",
    "\\n is not a newline",
    "two\nlines",
    "\\",
    '\\"',
    "",
    "{a=\"b\",c='d'} # not a comment",
    "grüße, 東京, 🚀",
    "\t tabs and\rreturns ",
    "x" * 100_000,
]


def theirs(families: Sequence[Family]) -> bytes:
    """What prometheus_client's own families and ``generate_latest`` write."""
    made: list[Metric] = []
    for f in families:
        m: CounterMetricFamily | GaugeMetricFamily | SummaryMetricFamily
        if isinstance(f, SummaryFamily):
            m = SummaryMetricFamily(f.name, f.help, labels=f.labels)
            for s in f.samples:
                m.add_metric(s.labels, s.count, s.sum)
        else:
            m = (CounterMetricFamily if isinstance(f, CounterFamily) else GaugeMetricFamily)(
                f.name, f.help, labels=f.labels
            )
            for g in f.samples:
                m.add_metric(g.labels, g.value)
        made.append(m)

    class Fixed(Collector):
        def collect(self) -> Iterator[Metric]:
            return iter(made)

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Fixed())
    return generate_latest(registry)


def exposed_name(f: Family) -> str:
    return f"{f.name}_total" if isinstance(f, CounterFamily) else f.name


label_names = st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,12}", fullmatch=True).filter(
    lambda n: not n.startswith("__") and n != "quantile"
)
# any character UTF-8 can carry (a lone surrogate has its own test)
chars = st.characters(codec="utf-8")
label_values = st.text(st.sampled_from('\\"\n{}=,# \t\r') | chars, max_size=40)
values = (
    st.floats()
    | st.integers(-(2**70), 2**70)
    | st.sampled_from([0, 1e6, 999_999.0, 1_234_567.5, 1e16, 1e-5, -1e7, 2**53 + 1])
)


@st.composite
def families(draw: st.DrawFn) -> Family:
    kind = draw(st.sampled_from([CounterFamily, GaugeFamily, SummaryFamily]))
    name = draw(
        st.from_regex(r"[a-zA-Z_:][a-zA-Z0-9_:]{0,20}", fullmatch=True).filter(
            lambda n: not n.endswith("_total")
        )
    )
    labels = tuple(draw(st.lists(label_names, max_size=4, unique=True)))
    series = draw(
        st.lists(st.tuples(*[label_values] * len(labels)), max_size=5, unique=True)
        if labels
        else st.lists(st.just(()), max_size=1)
    )
    # blanks around a help text do not survive the format (the Go parser drops
    # the leading ones, prometheus_client's both); meshroute's have none
    help_text = draw(st.text(st.sampled_from("\\\n\"' ab") | chars, max_size=60)).strip()
    if kind is SummaryFamily:
        return SummaryFamily(
            name,
            help_text,
            labels,
            tuple(SummarySample(s, draw(values), draw(values)) for s in series),
        )
    return kind(name, help_text, labels, tuple(Sample(s, draw(values)) for s in series))


scrapes = st.lists(families(), max_size=6, unique_by=exposed_name)


def hostile_scrape() -> list[Family]:
    return [
        GaugeFamily(
            "g",
            'a "help" with \\ and\nlines, ümlauts',
            ("peer", "a_first"),
            tuple(Sample((v, str(i)), i) for i, v in enumerate(HOSTILE)),
        ),
        CounterFamily("c", "", ("reason",), tuple(Sample((v,), 2**64) for v in HOSTILE)),
        SummaryFamily("s", "s", ("kind",), tuple(SummarySample((v,), 3, 0.25) for v in HOSTILE)),
    ]


@given(scrapes)
@example(hostile_scrape())
def test_the_text_is_byte_for_byte_what_prometheus_client_wrote(scrape: list[Family]) -> None:
    assert render(scrape) == theirs(scrape)


def same_value(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


@given(scrapes)
@example(hostile_scrape())
def test_prometheus_clients_parser_reads_back_the_same_samples(scrape: list[Family]) -> None:
    parsed = list(text_string_to_metric_families(render(scrape).decode()))
    assert [(m.name, m.type) for m in parsed] == [(f.name, f.TYPE) for f in scrape]
    for f, m in zip(scrape, parsed, strict=True):
        assert m.documentation == f.help, f
        want: list[tuple[str, dict[str, str], float]] = []
        for s in f.samples:
            labels = dict(zip(f.labels, s.labels, strict=True))
            if isinstance(s, SummarySample):
                want += [(f"{f.name}_count", labels, s.count), (f"{f.name}_sum", labels, s.sum)]
            else:
                want.append((exposed_name(f), labels, s.value))
        got = [(s.name, s.labels, s.value) for s in m.samples]
        assert [(n, lv) for n, lv, _ in got] == [(n, lv) for n, lv, _ in want]
        assert all(same_value(float(g[2]), float(w[2])) for g, w in zip(got, want, strict=True))


def test_the_text_of_a_scrape() -> None:
    """Families like the node's, and the odd cases, with the bytes expected
    written out: what prometheus_client 0.26's collector families and
    generate_latest (the product's renderer before this module) write for
    them, as the last line checks."""
    scrape: list[Family] = [
        GaugeFamily(
            "meshroute_bgp_peers",
            "BGP peers by session state",
            ("state",),
            (Sample(("idle",), 0), Sample(("established",), 1)),
        ),
        CounterFamily(
            "meshroute_bgp_prefixes_rejected",
            "prefixes refused by import policy",
            ("peer", "reason"),
            (Sample(("192.0.2.12", "martian"), 3),),
        ),
        CounterFamily("meshroute_bgp_malformed_lines", "lines from ExaBGP", (), (Sample((), 0),)),
        GaugeFamily("meshroute_bfd_session_up", "1 when Up", ("peer",)),
        SummaryFamily(
            "meshroute_reconcile_seconds",
            "time spent in reconcile passes",
            ("pass",),
            (SummarySample(("full",), 2, 0.5002308200000698),),
        ),
        GaugeFamily(
            "meshroute_ipam_blocks",
            'a \\ and a "quote" and a\nnewline',
            ("pool", "kind"),
            (Sample(('we"ird\\\npool', "ä"), 1_234_567),),
        ),
        GaugeFamily(
            "special",
            "",
            ("v",),
            (
                Sample(("inf",), math.inf),
                Sample(("-inf",), -math.inf),
                Sample(("nan",), math.nan),
                Sample(("neg",), -1_234_567),
                Sample(("big",), 10**16),
                Sample(("small",), 0.00001),
            ),
        ),
    ]
    assert render(scrape) == (
        b"# HELP meshroute_bgp_peers BGP peers by session state\n"
        b"# TYPE meshroute_bgp_peers gauge\n"
        b'meshroute_bgp_peers{state="idle"} 0.0\n'
        b'meshroute_bgp_peers{state="established"} 1.0\n'
        b"# HELP meshroute_bgp_prefixes_rejected_total prefixes refused by import policy\n"
        b"# TYPE meshroute_bgp_prefixes_rejected_total counter\n"
        b'meshroute_bgp_prefixes_rejected_total{peer="192.0.2.12",reason="martian"} 3.0\n'
        b"# HELP meshroute_bgp_malformed_lines_total lines from ExaBGP\n"
        b"# TYPE meshroute_bgp_malformed_lines_total counter\n"
        b"meshroute_bgp_malformed_lines_total 0.0\n"
        b"# HELP meshroute_bfd_session_up 1 when Up\n"
        b"# TYPE meshroute_bfd_session_up gauge\n"
        b"# HELP meshroute_reconcile_seconds time spent in reconcile passes\n"
        b"# TYPE meshroute_reconcile_seconds summary\n"
        b'meshroute_reconcile_seconds_count{pass="full"} 2.0\n'
        b'meshroute_reconcile_seconds_sum{pass="full"} 0.5002308200000698\n'
        b'# HELP meshroute_ipam_blocks a \\\\ and a "quote" and a\\nnewline\n'
        b"# TYPE meshroute_ipam_blocks gauge\n"
        b'meshroute_ipam_blocks{kind="\xc3\xa4",pool="we\\"ird\\\\\\npool"} 1.234567e+06\n'
        b"# HELP special \n"
        b"# TYPE special gauge\n"
        b'special{v="inf"} +Inf\n'
        b'special{v="-inf"} -Inf\n'
        b'special{v="nan"} NaN\n'
        b'special{v="neg"} -1234567.0\n'
        b'special{v="big"} 1e+16\n'
        b'special{v="small"} 1e-05\n'
    )
    assert render(scrape) == theirs(scrape)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0, "0.0"),
        (-0.0, "-0.0"),
        (3, "3.0"),
        (0.1, "0.1"),
        (999_999, "999999.0"),
        (1_000_000, "1e+06"),
        (1_234_567.5, "1.2345675e+06"),
        (-1_234_567.5, "-1234567.5"),
        (2**53 + 1, "9.007199254740992e+15"),
        (1e16, "1e+16"),
        (1.5e-7, "1.5e-07"),
        (math.inf, "+Inf"),
        (-math.inf, "-Inf"),
        (math.nan, "NaN"),
    ],
)
def test_values(value: float, text: str) -> None:
    assert format_value(value) == text


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (lambda: GaugeFamily("1st", ""), "invalid metric name"),
        (lambda: GaugeFamily("a-b", ""), "invalid metric name"),
        (lambda: GaugeFamily("g", "", ("pe er",)), "invalid label name"),
        (lambda: GaugeFamily("g", "", ("__name__",)), "invalid label name"),
        (lambda: GaugeFamily("g", "", ("a", "a")), "repeat"),
        (lambda: GaugeFamily("g", "", ("a",), (Sample((), 1),)), "do not match"),
        (lambda: GaugeFamily("g", "", (), (Sample(("x",), 1),)), "do not match"),
        (lambda: CounterFamily("c_total", ""), "without _total"),
        (lambda: SummaryFamily("s", "", ("quantile",)), "summary's own label"),
    ],
)
def test_families_that_would_render_wrong_text_are_refused(make: object, why: str) -> None:
    assert callable(make)
    with pytest.raises(ValueError, match=why):
        make()


def test_a_family_keeps_the_order_it_was_given() -> None:
    """Series in the order given, labels sorted by name within each."""
    g = GaugeFamily("g", "h", ("z", "a"), (Sample(("2", "b"), 1), Sample(("1", "a"), 2)))
    assert render([g]).splitlines()[2:] == [b'g{a="b",z="2"} 1.0', b'g{a="a",z="1"} 2.0']


def test_a_lone_surrogate_costs_one_character_not_the_scrape() -> None:
    g = GaugeFamily("g", "h\ud800", ("pool",), (Sample(("a\udcffb",), 1),))
    assert render([g]) == b'# HELP g h?\n# TYPE g gauge\ng{pool="a?b"} 1.0\n'


def test_the_processes_import_path_is_free_of_prometheus_client() -> None:
    code = (
        "import sys, meshroute.cli, meshroute.node.process, meshroute.reflector.process\n"
        "print('prometheus_client' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout == "False\n"
