"""The plugin's JSON (the ``_json`` accelerator driven directly) agrees with
``json`` on every document, valid or not, except that it refuses NaN and
Infinity as RFC 8259 does."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ipam import cni_json

values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(values)
def test_round_trips_like_json(v: object) -> None:
    text = cni_json.dumps(v)
    assert text == json.dumps(v)
    assert cni_json.loads(text) == json.loads(text)
    assert cni_json.loads(f" \n{text}\t ".encode()) == v


def _no_constants(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


@given(st.text(max_size=30))
def test_any_text_parses_or_fails_as_json_does(text: str) -> None:
    try:
        expected = json.loads(text, parse_constant=_no_constants)
    except ValueError as e:
        with pytest.raises(ValueError) as got:
            cni_json.loads(text)
        assert str(got.value) == str(e)
    else:
        assert repr(cni_json.loads(text)) == repr(expected)


@pytest.mark.parametrize("bad", [b'{"a": "x', b"{} x", b"", b"[1,]", b"\xff"])
def test_malformed_documents_raise_value_error(bad: bytes) -> None:
    with pytest.raises(ValueError):
        cni_json.loads(bad)


def test_unsupported_types_are_refused() -> None:
    with pytest.raises(TypeError):
        cni_json.dumps({"a": object()})


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_refused_both_ways(constant: str) -> None:
    with pytest.raises(ValueError, match=f"{constant} is not valid JSON"):
        cni_json.loads(f'{{"timeout": {constant}}}')
    with pytest.raises(ValueError):
        cni_json.dumps(json.loads(constant))


def test_deep_nesting_is_a_recursion_error_not_a_crash() -> None:
    with pytest.raises(RecursionError):
        cni_json.loads("[" * 100_000 + "]" * 100_000)
