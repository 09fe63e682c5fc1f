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
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from tamma_actors._errors import ExpressionError

__all__ = [
    "ROOTS",
    "Expression",
    "evaluate",
    "parse",
    "referenced_steps",
    "roots",
    "to_source",
]

ROOTS = frozenset({"inputs", "steps", "item"})
MAX_LENGTH = 4096
MAX_DEPTH = 64
_KEYWORDS = frozenset({"and", "or", "not", "in", "true", "false", "null", "len"})
_COMPARISONS = frozenset({"==", "!=", "<", "<=", ">", ">=", "in", "not in"})


# -- the tree -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Literal:
    value: Any


@dataclass(frozen=True)
class ListOf:
    items: tuple[Expression, ...]


@dataclass(frozen=True)
class Root:
    name: str


@dataclass(frozen=True)
class Field:
    target: Expression
    name: str


@dataclass(frozen=True)
class Index:
    target: Expression
    index: Expression


@dataclass(frozen=True)
class Not:
    operand: Expression


@dataclass(frozen=True)
class BoolOp:
    op: str  # "and" | "or"
    left: Expression
    right: Expression


@dataclass(frozen=True)
class Compare:
    op: str
    left: Expression
    right: Expression


@dataclass(frozen=True)
class Len:
    operand: Expression


Expression = Literal | ListOf | Root | Field | Index | Not | BoolOp | Compare | Len


# -- tokens ---------------------------------------------------------------------------------

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<number>\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)
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
        sign = -1 if self.take("-") else 1
        text = self.tok.text
        self.i += 1
        value: float = float(text) if any(c in text for c in ".eE") else int(text)
        if isinstance(value, float) and not math.isfinite(value):
            raise ExpressionError(f"number {text} is too large")
        return Literal(sign * value)

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
        raise ExpressionError(f"an expression must be a string, not {_kind(source)}")
    return _parse(source)


@lru_cache(maxsize=1024)
def _parse(source: str) -> Expression:
    if len(source) > MAX_LENGTH:
        raise ExpressionError(f"expression is longer than {MAX_LENGTH} characters")
    if not source.strip():
        raise ExpressionError("empty expression")
    node = _Parser(source).parse()
    # Every walk over the tree recurses; a bounded depth keeps them all far from the limit.
    if _depth(node) > MAX_DEPTH:
        raise ExpressionError(f"expression nests deeper than {MAX_DEPTH} levels")
    return node


def _depth(node: Expression) -> int:
    deepest = 0
    stack: list[tuple[Expression, int]] = [(node, 1)]
    while stack:
        current, level = stack.pop()
        deepest = max(deepest, level)
        stack.extend((child, level + 1) for child in _children(current))
    return deepest


# -- evaluation -----------------------------------------------------------------------------


def evaluate(node: Expression, context: Mapping[str, Any]) -> Any:
    """The value of ``node`` in ``context`` (a mapping with ``inputs``, ``steps``, ``item``).

    Total: returns a value or raises :class:`ExpressionError`, whatever the context holds.
    """
    try:
        return _eval(node, context)
    except RecursionError:
        raise ExpressionError("value nests too deeply to evaluate") from None


def _eval(node: Expression, ctx: Mapping[str, Any]) -> Any:
    match node:
        case Literal(value):
            return value
        case ListOf(items):
            return [_eval(item, ctx) for item in items]
        case Root(name):
            if name not in ctx:
                raise ExpressionError(f"{name!r} is not available here")
            return ctx[name]
        case Field(target, name):
            return _field(_eval(target, ctx), name, target)
        case Index(target, index):
            return _index(_eval(target, ctx), _eval(index, ctx), target)
        case Not(operand):
            return not _boolean(_eval(operand, ctx), "not")
        case BoolOp(op, left, right):
            first = _boolean(_eval(left, ctx), op)
            if first == (op == "or"):  # short circuit
                return first
            return _boolean(_eval(right, ctx), op)
        case Compare(op, left, right):
            return _compare(op, _eval(left, ctx), _eval(right, ctx))
        case Len(operand):
            value = _eval(operand, ctx)
            if isinstance(value, str | list | tuple | Mapping):
                return len(value)
            raise ExpressionError(f"len() needs a list, string or mapping, not {_kind(value)}")
    raise ExpressionError(f"not an expression node: {node!r}")  # pragma: no cover


def _field(value: Any, name: str, target: Expression) -> Any:
    if isinstance(value, Mapping):
        return value.get(name)
    raise ExpressionError(f"{to_source(target)} is {_kind(value)}; it has no field {name!r}")


def _index(value: Any, index: Any, target: Expression) -> Any:
    if isinstance(value, Mapping):
        if not isinstance(index, str):
            raise ExpressionError(f"a mapping is indexed by a string, not {_kind(index)}")
        return value.get(index)
    if isinstance(value, list | tuple | str):
        if not isinstance(index, int) or isinstance(index, bool):
            raise ExpressionError(f"a list is indexed by an integer, not {_kind(index)}")
        if not -len(value) <= index < len(value):
            raise ExpressionError(
                f"index {index} is out of range for {to_source(target)} (length {len(value)})"
            )
        return value[index]
    raise ExpressionError(f"{to_source(target)} is {_kind(value)}; it cannot be indexed")


def _boolean(value: Any, op: str) -> bool:
    if isinstance(value, bool):
        return value
    raise ExpressionError(f"{op!r} needs true or false, not {_kind(value)}")


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _equal(a: Any, b: Any) -> bool:
    if _number(a) and _number(b):
        return bool(a == b)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if type(a) is not type(b) and not (isinstance(a, str) and isinstance(b, str)):
        return False
    return bool(a == b)


def _compare(op: str, a: Any, b: Any) -> bool:
    if op == "==":
        return _equal(a, b)
    if op == "!=":
        return not _equal(a, b)
    if op in ("in", "not in"):
        found = _contains(b, a)
        return found if op == "in" else not found
    if not ((_number(a) and _number(b)) or (isinstance(a, str) and isinstance(b, str))):
        raise ExpressionError(f"cannot order {_kind(a)} and {_kind(b)} with {op!r}")
    result = {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op]
    return bool(result)


def _contains(container: Any, item: Any) -> bool:
    if isinstance(container, str):
        if not isinstance(item, str):
            raise ExpressionError(f"'in' a string needs a string, not {_kind(item)}")
        return item in container
    if isinstance(container, list | tuple):
        return any(_equal(item, x) for x in container)
    if isinstance(container, Mapping):
        if not isinstance(item, str):
            raise ExpressionError(f"'in' a mapping needs a string key, not {_kind(item)}")
        return item in container
    raise ExpressionError(
        f"'in' needs a list, string or mapping on its right, not {_kind(container)}"
    )


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if _number(value):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, Mapping):
        return "a mapping"
    return f"a {type(value).__name__}"


# -- inspection -----------------------------------------------------------------------------


def _children(node: Expression) -> Iterator[Expression]:
    match node:
        case ListOf(items):
            yield from items
        case Field(target, _) | Len(target) | Not(target):
            yield target
        case Index(target, index):
            yield from (target, index)
        case BoolOp(_, left, right) | Compare(_, left, right):
            yield from (left, right)


def referenced_steps(node: Expression) -> set[str]:
    """The step names read as ``steps.NAME`` or ``steps['NAME']`` anywhere in ``node``."""
    found: set[str] = set()
    stack: list[Expression] = [node]
    while stack:
        current = stack.pop()
        match current:
            case Field(Root("steps"), name) | Index(Root("steps"), Literal(str() as name)):
                found.add(name)
        stack.extend(_children(current))
    return found


def roots(node: Expression) -> set[str]:
    """The root names (``inputs``, ``steps``, ``item``) that ``node`` reads."""
    found: set[str] = set()
    stack: list[Expression] = [node]
    while stack:
        current = stack.pop()
        if isinstance(current, Root):
            found.add(current.name)
        stack.extend(_children(current))
    return found


_PRECEDENCE = {"or": 1, "and": 2, "not": 3, "compare": 4}


def to_source(node: Expression) -> str:
    """Canonical text of ``node``: ``parse(to_source(n)) == n`` for every parsed ``n``."""
    return _show(node, 0)


def _show(node: Expression, outer: int) -> str:
    match node:
        case Literal(value):
            return _literal(value)
        case ListOf(items):
            return "[" + ", ".join(_show(i, 0) for i in items) + "]"
        case Root(name):
            return name
        case Field(target, name):
            return f"{_show(target, 5)}.{name}"
        case Index(target, index):
            return f"{_show(target, 5)}[{_show(index, 0)}]"
        case Len(operand):
            return f"len({_show(operand, 0)})"
        case Not(operand):
            text, own = f"not {_show(node.operand, 3)}", 3
        case BoolOp(op, left, right):
            own = _PRECEDENCE[op]
            text = f"{_show(left, own)} {op} {_show(right, own + 1)}"
        case Compare(op, left, right):
            own = 4
            text = f"{_show(left, 5)} {op} {_show(right, 5)}"
        case _:  # pragma: no cover
            raise ExpressionError(f"not an expression node: {node!r}")
    return f"({text})" if own < outer else text


def _literal(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        text = repr(value)
        return f"({text})" if value < 0 else text
    text = str(value)
    for raw, escaped in (("\\", "\\\\"), ('"', '\\"'), ("\n", "\\n"), ("\t", "\\t"), ("\r", "\\r")):
        text = text.replace(raw, escaped)
    return f'"{text}"'
