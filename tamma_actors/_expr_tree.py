"""The tree of a parsed expression (frozen nodes) and what can be read off it: the steps
it reads, its roots, its depth and its canonical text. See :mod:`tamma_actors._expr`."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from tamma_actors._errors import ExpressionError

__all__ = [
    "BoolOp",
    "Compare",
    "Expression",
    "Field",
    "Index",
    "Len",
    "ListOf",
    "Literal",
    "Not",
    "Root",
    "depth",
    "referenced_steps",
    "roots",
    "to_source",
]

# -- nodes -------------------------------------------------------------------------------


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


def depth(node: Expression) -> int:
    deepest = 0
    stack: list[tuple[Expression, int]] = [(node, 1)]
    while stack:
        current, level = stack.pop()
        deepest = max(deepest, level)
        stack.extend((child, level + 1) for child in _children(current))
    return deepest
