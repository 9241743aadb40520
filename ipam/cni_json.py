"""JSON for the CNI plugin without importing ``json``.

``import json`` costs the plugin ~8 ms of CPU per pod (it compiles regular
expressions at import, pulling in ``re`` and ``enum``): half of the whole
process when the interpreter starts without ``site``. The C accelerator
``_json`` that ``json`` itself uses parses and prints without any of that;
this module drives it the way ``json.loads``/``json.dumps`` do (same
scanner, same encoder, same output). Should ``_json`` be missing or change
its interface, it falls back to ``json``.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

_WS = " \t\n\r"


class _ScannerContext:
    # The attributes json.JSONDecoder hands to the C scanner.
    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    memo: dict[str, str]

    def __init__(self) -> None:
        self.memo = {}
        self.parse_constant = _refuse_constant


def _refuse_constant(name: str) -> float:
    # json accepts NaN and Infinity; RFC 8259 (and Go's encoding/json, which
    # runtimes use) does not, and no setting of ours means anything with them.
    raise ValueError(f"{name} is not valid JSON")


def _unsupported(o: object) -> object:
    raise TypeError(f"Object of type {type(o).__name__} is not JSON serializable")


_scan: Callable[[str, int], tuple[object, int]] | None
_encode: Callable[[object, int], list[str] | tuple[str, ...]] | None
try:
    import _json

    _scan = _json.make_scanner(_ScannerContext())  # type: ignore[arg-type]
    _encode = _json.make_encoder(
        None, _unsupported, _json.encode_basestring_ascii, None, ": ", ", ", False, False, False
    )
except (ImportError, AttributeError, TypeError):  # pragma: no cover - other Pythons
    _scan = _encode = None


def loads(data: bytes | str) -> object:
    """Parse one JSON document; ValueError (or UnicodeDecodeError) when it is
    not one, RecursionError when it nests deeper than the interpreter's
    recursion limit. NaN and Infinity are refused."""
    text = data.decode() if isinstance(data, bytes) else data
    if _scan is not None:
        start = len(text) - len(text.lstrip(_WS))
        try:
            value, end = _scan(text, start)
        except RecursionError:
            raise  # json would only recurse as deep again
        except Exception:  # malformed: json below says precisely why
            pass
        else:
            if not text[end:].strip(_WS):
                return value
    # Malformed input (rare) is left to json for its exact error: the C
    # scanner can only raise JSONDecodeError once json.decoder is imported.
    import json

    return json.loads(text, parse_constant=_refuse_constant)


def dumps(obj: object) -> str:
    """Like ``json.dumps(obj)`` with its defaults, but ValueError for NaN and
    infinities (``allow_nan=False``)."""
    if _encode is None:  # pragma: no cover
        import json

        return json.dumps(obj, allow_nan=False)
    return "".join(_encode(obj, 0))
