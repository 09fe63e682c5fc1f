"""A small, safe expression language for decisions, fan-out lists and subflow inputs.

Expressions are parsed once (at workflow load) into a tree of frozen nodes and evaluated
against a plain context mapping; nothing is ever handed to ``eval``, ``exec`` or Python's
``ast``. The grammar, loosest binding first::

    expr    := and ("or" and)*
    and     := not ("and" not)*
    not     := "not" not | compare
    compare := postfix (("==" | "!=" | "<" | "<=" | ">" | ">=" | "in" | "not" "in") postfix)?
    postfix := atom ("." NAME | "[" expr "]")*
    atom    := NUMBER | STRING | "true" | "false" | "null" | "[" (expr ("," expr)*)? "]"
             | "len" "(" expr ")" | "(" expr ")" | "-" NUMBER | ROOT
    ROOT    := "inputs" | "steps" | "item"

Semantics are strict, so a workflow author learns about a mistake instead of getting a
quiet ``false``: ``and``/``or``/``not`` and a decision's ``when`` need booleans; ordering
compares two numbers or two strings; equality never confuses ``true`` with ``1``. A field
missing from a mapping reads as ``null``; indexing past a list's end, reading a field of a
non-mapping and every other type mistake raise :class:`ExpressionError`, which is the only
exception :func:`evaluate` raises.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from tamma_actors._codec import INT_RANGE
from tamma_actors._errors import ExpressionError
from tamma_actors._expr_eval import evaluate, kind_of
from tamma_actors._expr_tree import (
    BoolOp,
    Compare,
    Expression,
    Field,
    Index,
    Len,
    ListOf,
    Literal,
    Not,
    Root,
    depth,
    referenced_steps,
    roots,
    to_source,
)

__all__ = [
    "ROOTS",
    "Expression",
    "Literal",
    "evaluate",
    "parse",
    "referenced_steps",
    "roots",
    "to_source",
]

ROOTS = frozenset({"inputs", "steps", "item"})
MAX_LENGTH = 4096
MAX_DEPTH = 64
_COMPARISONS = frozenset({"==", "!=", "<", "<=", ">", ">=", "in", "not in"})


# -- tokens ---------------------------------------------------------------------------------

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<number>[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op>==|!=|<=|>=|<|>|\(|\)|\[|\]|\.|,|-)
    """,
    re.VERBOSE,
)
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", "'": "'", '"': '"'}


@dataclass(frozen=True)
class _Token:
    kind: str  # number | string | name | op | end
    text: str
    pos: int


def _tokens(source: str) -> list[_Token]:
    out: list[_Token] = []
    pos = 0
    while pos < len(source):
        match = _TOKEN.match(source, pos)
        if match is None:
            raise ExpressionError(f"unexpected character {source[pos]!r} at column {pos + 1}")
        kind = match.lastgroup or ""
        if kind != "space":
            out.append(_Token(kind, match.group(), pos))
        pos = match.end()
    out.append(_Token("end", "", len(source)))
    return out


def _unquote(text: str, pos: int) -> str:
    body, out, i = text[1:-1], [], 0
    while i < len(body):
        ch = body[i]
        if ch == "\\":
            nxt = body[i + 1]  # the token pattern guarantees a character follows
            if nxt not in _ESCAPES:
                raise ExpressionError(f"unknown escape \\{nxt} in the string at column {pos + 1}")
            out.append(_ESCAPES[nxt])
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


# -- parsing --------------------------------------------------------------------------------


class _Parser:
    def __init__(self, source: str) -> None:
        self.tokens = _tokens(source)
        self.i = 0
        self.depth = 0

    @property
    def tok(self) -> _Token:
        return self.tokens[self.i]

    def fail(self, what: str) -> ExpressionError:
        tok = self.tok
        found = "the end" if tok.kind == "end" else repr(tok.text)
        return ExpressionError(f"{what}, found {found} at column {tok.pos + 1}")

    def at(self, text: str) -> bool:
        return self.tok.kind in ("op", "name") and self.tok.text == text

    def take(self, text: str) -> bool:
        if self.at(text):
            self.i += 1
            return True
        return False

    def expect(self, text: str) -> None:
        if not self.take(text):
            raise self.fail(f"expected {text!r}")

    def parse(self) -> Expression:
        node = self.expr()
        if self.tok.kind != "end":
            raise self.fail("expected the end of the expression")
        return node

    def expr(self) -> Expression:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise ExpressionError(f"expression nests deeper than {MAX_DEPTH} levels")
        node = self.conjunction()
        while self.take("or"):
            node = BoolOp("or", node, self.conjunction())
        self.depth -= 1
        return node

    def conjunction(self) -> Expression:
        node = self.negation()
        while self.take("and"):
            node = BoolOp("and", node, self.negation())
        return node

    def negation(self) -> Expression:
        if self.at("not") and not self._not_in():
            self.i += 1
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise ExpressionError(f"expression nests deeper than {MAX_DEPTH} levels")
            node = Not(self.negation())
            self.depth -= 1
            return node
        return self.comparison()

    def _not_in(self) -> bool:
        nxt = self.tokens[self.i + 1]
        return nxt.kind == "name" and nxt.text == "in"

    def comparison(self) -> Expression:
        left = self.postfix()
        op = self._comparison_op()
        if op is None:
            return left
        node = Compare(op, left, self.postfix())
        if self._comparison_op() is not None:
            raise self.fail("comparisons do not chain; use 'and'")
        return node

    def _comparison_op(self) -> str | None:
        tok = self.tok
        if tok.kind == "op" and tok.text in _COMPARISONS:
            self.i += 1
            return tok.text
        if self.take("in"):
            return "in"
        if self.at("not") and self._not_in():
            self.i += 2
            return "not in"
        return None

    def postfix(self) -> Expression:
        node = self.atom()
        while True:
            if self.take("."):
                if self.tok.kind != "name":
                    raise self.fail("expected a field name after '.'")
                node = Field(node, self.tok.text)
                self.i += 1
            elif self.take("["):
                node = Index(node, self.expr())
                self.expect("]")
            else:
                return node

    def atom(self) -> Expression:
        tok = self.tok
        if tok.kind == "number" or (tok.text == "-" and self.tokens[self.i + 1].kind == "number"):
            return self._number()
        if tok.kind == "string":
            self.i += 1
            return Literal(_unquote(tok.text, tok.pos))
        if self.take("("):
            node = self.expr()
            self.expect(")")
            return node
        if self.take("["):
            return self._list()
        if tok.kind == "name":
            return self._name(tok)
        raise self.fail("expected a value")

    def _number(self) -> Literal:
        column = self.tok.pos + 1
        sign = -1 if self.take("-") else 1
        text = self.tok.text
        self.i += 1
        value: float = sign * (float(text) if any(c in text for c in ".eE") else int(text))
        if isinstance(value, float) and not math.isfinite(value):
            raise ExpressionError(f"number {text} at column {column} is too large")
        if isinstance(value, int) and value not in INT_RANGE:  # the store could not hold it
            raise ExpressionError(f"number {value} at column {column} is beyond 64 bits")
        return Literal(value)

    def _list(self) -> ListOf:
        items: list[Expression] = []
        if not self.take("]"):
            items.append(self.expr())
            while self.take(","):
                items.append(self.expr())
            self.expect("]")
        return ListOf(tuple(items))

    def _name(self, tok: _Token) -> Expression:
        self.i += 1
        constants = {"true": True, "false": False, "null": None}
        if tok.text in constants:
            return Literal(constants[tok.text])
        if tok.text == "len":
            self.expect("(")
            node = Len(self.expr())
            self.expect(")")
            return node
        if tok.text in ROOTS:
            return Root(tok.text)
        known = ", ".join(sorted(ROOTS))
        raise ExpressionError(
            f"unknown name {tok.text!r} at column {tok.pos + 1} (names start with {known})"
        )


def parse(source: Any) -> Expression:
    """Parse ``source``; raise :class:`ExpressionError` naming the column of the fault."""
    if not isinstance(source, str):
        raise ExpressionError(f"an expression must be a string, not {kind_of(source)}")
    return _parse(source)


@lru_cache(maxsize=1024)
def _parse(source: str) -> Expression:
    if len(source) > MAX_LENGTH:
        raise ExpressionError(f"expression is longer than {MAX_LENGTH} characters")
    if not source.strip():
        raise ExpressionError("empty expression")
    node = _Parser(source).parse()
    # Every walk over the tree recurses; a bounded depth keeps them all far from the limit.
    if depth(node) > MAX_DEPTH:
        raise ExpressionError(f"expression nests deeper than {MAX_DEPTH} levels")
    return node
