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

from ipam.quoting import quote

Labels = Mapping[str, str]
Predicate = Callable[[Labels], bool]
MAX_SELECTOR_CHARS = 4096
MAX_DEPTH = 32  # of parentheses and negations: the parser recurses


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
            raise SelectorError(f"unexpected {quote(text[pos : pos + 10])} at column {pos + 1}")
        out.append(m.group("op") or m.group("str") or m.group("word"))
        pos = m.end()
    return out


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.toks = _tokens(text)
        self.i = 0
        self.depth = 0

    def peek(self) -> str | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self, expected: str | None = None) -> str:
        tok = self.peek()
        if tok is None:
            raise SelectorError(f"selector {quote(self.text)} ends early")
        if expected is not None and tok != expected:
            raise SelectorError(
                f"expected {quote(expected)} but found {quote(tok)} in {quote(self.text)}"
            )
        self.i += 1
        return tok

    def parse(self) -> Predicate:
        if not self.toks:
            raise SelectorError("empty selector (use all())")
        p = self.or_()
        if self.peek() is not None:
            raise SelectorError(f"unexpected {quote(self.peek())} in {quote(self.text)}")
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
        if tok in ("!", "("):
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise SelectorError(f"selector nests deeper than {MAX_DEPTH} levels")
        if tok == "!":
            self.take()
            inner = self.unary()
            self.depth -= 1
            return lambda lb: not inner(lb)
        if tok == "(":
            self.take()
            inner = self.or_()
            self.take(")")
            self.depth -= 1
            return inner
        return self.term()

    def string(self) -> str:
        tok = self.take()
        if len(tok) < 2 or tok[0] not in "'\"" or tok[-1] != tok[0]:
            raise SelectorError(
                f"expected a quoted value, found {quote(tok)} in {quote(self.text)}"
            )
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
            raise SelectorError(f"unknown selector syntax {quote(tok)} in {quote(self.text)}")
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
        raise SelectorError(
            f"unknown operator {quote(op)} after {quote(key)} in {quote(self.text)}"
        )


@functools.lru_cache(maxsize=256)
def parse_selector(text: str) -> Predicate:
    """Compile a selector; raises SelectorError with the reason."""
    if len(text) > MAX_SELECTOR_CHARS:
        raise SelectorError(f"selector is longer than {MAX_SELECTOR_CHARS} characters")
    return _Parser(text).parse()


def matches(selector: str, labels: Labels) -> bool:
    return parse_selector(selector)(labels)
