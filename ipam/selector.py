"""Label selectors in Calico's syntax (the subset meshroute supports), parsed
into a small expression tree and evaluated against a host's labels.

Grammar::

    expr    := or
    or      := and ("||" and)*
    and     := unary ("&&" unary)*
    unary   := "!" unary | "(" expr ")" | term
    term    := "all()" | "has(" KEY ")" | KEY ("==" | "!=") STRING
             | KEY ("in" | "not in") "{" STRING ("," STRING)* "}"
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping

Labels = Mapping[str, str]
Predicate = Callable[[Labels], bool]


class SelectorError(ValueError):
    pass


_TOKEN = re.compile(
    r"""\s*(?:
        (?P<op>&&|\|\||==|!=|[!(){},])
      | (?P<str>'[^']*'|"[^"]*")
      | (?P<word>[A-Za-z0-9_./-]+(?:\(\))?)
    )""",
    re.VERBOSE,
)


def _tokens(text: str) -> list[str]:
    out: list[str] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise SelectorError(f"unexpected {text[pos : pos + 10]!r} at column {pos + 1}")
        out.append(m.group("op") or m.group("str") or m.group("word"))
        pos = m.end()
    return out


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.toks = _tokens(text)
        self.i = 0

    def peek(self) -> str | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self, expected: str | None = None) -> str:
        tok = self.peek()
        if tok is None:
            raise SelectorError(f"selector {self.text!r} ends early")
        if expected is not None and tok != expected:
            raise SelectorError(f"expected {expected!r} but found {tok!r} in {self.text!r}")
        self.i += 1
        return tok

    def parse(self) -> Predicate:
        if not self.toks:
            raise SelectorError("empty selector (use all())")
        p = self.or_()
        if self.peek() is not None:
            raise SelectorError(f"unexpected {self.peek()!r} in {self.text!r}")
        return p

    def or_(self) -> Predicate:
        parts = [self.and_()]
        while self.peek() == "||":
            self.take()
            parts.append(self.and_())
        return parts[0] if len(parts) == 1 else (lambda lb: any(p(lb) for p in parts))

    def and_(self) -> Predicate:
        parts = [self.unary()]
        while self.peek() == "&&":
            self.take()
            parts.append(self.unary())
        return parts[0] if len(parts) == 1 else (lambda lb: all(p(lb) for p in parts))

    def unary(self) -> Predicate:
        tok = self.peek()
        if tok == "!":
            self.take()
            inner = self.unary()
            return lambda lb: not inner(lb)
        if tok == "(":
            self.take()
            inner = self.or_()
            self.take(")")
            return inner
        return self.term()

    def string(self) -> str:
        tok = self.take()
        if len(tok) < 2 or tok[0] not in "'\"" or tok[-1] != tok[0]:
            raise SelectorError(f"expected a quoted value, found {tok!r} in {self.text!r}")
        return tok[1:-1]

    def term(self) -> Predicate:
        tok = self.take()
        if tok == "all()":
            return lambda lb: True
        if tok == "has":
            self.take("(")
            key = self.take()
            self.take(")")
            return lambda lb: key in lb
        if not re.fullmatch(r"[A-Za-z0-9_./-]+", tok):
            raise SelectorError(f"unknown selector syntax {tok!r} in {self.text!r}")
        key = tok
        op = self.take()
        if op in ("==", "!="):
            value = self.string()
            if op == "==":
                return lambda lb: lb.get(key) == value
            return lambda lb: lb.get(key) != value
        negate = False
        if op == "not":
            negate = True
            op = self.take()
        if op == "in":
            self.take("{")
            values = {self.string()}
            while self.peek() == ",":
                self.take()
                values.add(self.string())
            self.take("}")
            if negate:
                return lambda lb: lb.get(key) not in values
            return lambda lb: lb.get(key) in values
        raise SelectorError(f"unknown operator {op!r} after {key!r} in {self.text!r}")


@functools.lru_cache(maxsize=256)
def parse_selector(text: str) -> Predicate:
    """Compile a selector; raises SelectorError with the reason."""
    return _Parser(text).parse()


def matches(selector: str, labels: Labels) -> bool:
    return parse_selector(selector)(labels)
