"""Wording of messages. Quoting what we were given: every error that shows
hostile input shows it through ``quote``, so a 10 MB name or a 100 KB
container id comes back as a short prefix and its length, never whole.
Counting: ``counted`` says "1 address", "2 addresses".

Imports nothing: the CNI plugin uses it and must start fast. ``meshroute``
uses it too (it may import ``ipam``; the other subsystems never quote
operator input).
"""

from __future__ import annotations

PREFIX_CHARS = 32


def counted(n: int, noun: str) -> str:
    """``1 address``, ``2 addresses``: a count with its noun in the right number."""
    if n == 1:
        return f"1 {noun}"
    plural = noun + "es" if noun.endswith(("s", "x", "ch", "sh")) else noun + "s"
    return f"{n} {plural}"


def quote(value: object, limit: int = PREFIX_CHARS) -> str:
    """A short, printable stand-in for ``value``: the repr of a string's (or
    bytes') first ``limit`` characters plus its length when it was longer;
    small numbers as themselves; anything else by its type."""
    if isinstance(value, bytes | bytearray):
        head = repr(bytes(value[:limit]))
        return head if len(value) <= limit else f"{head}... ({len(value)} bytes)"
    if isinstance(value, str):
        head = repr(value[:limit])
        return head if len(value) <= limit else f"{head}... ({len(value)} characters)"
    if value is None or isinstance(value, bool | float):
        return repr(value)
    if isinstance(value, int):
        bits = value.bit_length()
        return repr(value) if bits <= 64 else f"an integer of {bits} bits"
    return f"a {type(value).__name__}"
