"""The benchmarks' shared scaffolding: which side goes first, and what is printed."""

from __future__ import annotations

import json

import pytest

from bench.report import alternating, print_result


def test_sides_alternate_round_by_round() -> None:
    orders = [tuple(alternating(i, ("anchor", "ours"))) for i in range(4)]
    assert orders == [("anchor", "ours"), ("ours", "anchor")] * 2


def test_figures_then_one_json_line_without_samples(capsys: pytest.CaptureFixture[str]) -> None:
    result = {"p50_ms": 1.5, "samples": [1, 2], "samples_bfd": [3]}
    print_result(result, json_only=False)
    lines = capsys.readouterr().out.splitlines()
    assert lines[:-1] == ["p50_ms: 1.5"]
    assert json.loads(lines[-1]) == result


def test_json_only_prints_the_json_alone(capsys: pytest.CaptureFixture[str]) -> None:
    print_result({"runs": 2}, json_only=True, width=8)
    assert capsys.readouterr().out == '{"runs": 2}\n'


def test_padded_figures(capsys: pytest.CaptureFixture[str]) -> None:
    print_result({"runs": 2}, json_only=False, width=8)
    assert capsys.readouterr().out.splitlines()[0] == "runs     2"
