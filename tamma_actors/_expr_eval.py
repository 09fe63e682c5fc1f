"""Evaluation of a parsed expression against a context; strict and total (a value or an
:class:`ExpressionError`, never another exception). See :mod:`tamma_actors._expr`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tamma_actors._errors import ExpressionError
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
    to_source,
)

__all__ = ["evaluate", "kind_of"]

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
            return _index(_eval(target, ctx), _eval(index, ctx), node)
        case Not(operand):
            return not _boolean(_eval(operand, ctx), "not", operand)
        case BoolOp(op, left, right):
            first = _boolean(_eval(left, ctx), op, left)
            if first == (op == "or"):  # short circuit
                return first
            return _boolean(_eval(right, ctx), op, right)
        case Compare(op, left, right):
            return _compare(op, _eval(left, ctx), _eval(right, ctx), node)
        case Len(operand):
            value = _eval(operand, ctx)
            if isinstance(value, str | list | tuple | Mapping):
                return len(value)
            raise ExpressionError(
                f"{to_source(node)}: len() needs a list, string or mapping, not {kind_of(value)}"
            )
    raise ExpressionError(f"not an expression node: {node!r}")  # pragma: no cover


def _field(value: Any, name: str, target: Expression) -> Any:
    if isinstance(value, Mapping):
        return value.get(name)
    raise ExpressionError(f"{to_source(target)} is {kind_of(value)}; it has no field {name!r}")


def _index(value: Any, index: Any, node: Index) -> Any:
    target = node.target
    if isinstance(value, Mapping):
        if not isinstance(index, str):
            raise ExpressionError(
                f"{to_source(node)}: a mapping is indexed by a string, not {kind_of(index)}"
            )
        return value.get(index)
    if isinstance(value, list | tuple | str):
        if not isinstance(index, int) or isinstance(index, bool):
            raise ExpressionError(
                f"{to_source(node)}: a list is indexed by an integer, not {kind_of(index)}"
            )
        if not -len(value) <= index < len(value):
            raise ExpressionError(
                f"index {index} is out of range for {to_source(target)} (length {len(value)})"
            )
        return value[index]
    raise ExpressionError(f"{to_source(target)} is {kind_of(value)}; it cannot be indexed")


def _boolean(value: Any, op: str, operand: Expression) -> bool:
    if isinstance(value, bool):
        return value
    raise ExpressionError(
        f"{op!r} needs true or false, not {kind_of(value)} (its operand {to_source(operand)})"
    )


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


def _compare(op: str, a: Any, b: Any, node: Compare) -> bool:
    """``node``'s comparison of ``a`` and ``b``; a mistake names the comparison."""
    if op == "==":
        return _equal(a, b)
    if op == "!=":
        return not _equal(a, b)
    if op in ("in", "not in"):
        try:
            found = _contains(b, a)
        except ExpressionError as exc:
            raise ExpressionError(f"{to_source(node)}: {exc}") from None
        return found if op == "in" else not found
    if not ((_number(a) and _number(b)) or (isinstance(a, str) and isinstance(b, str))):
        raise ExpressionError(
            f"{to_source(node)}: cannot order {kind_of(a)} and {kind_of(b)} with {op!r}"
        )
    result = {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op]
    return bool(result)


def _contains(container: Any, item: Any) -> bool:
    if isinstance(container, str):
        if not isinstance(item, str):
            raise ExpressionError(f"'in' a string needs a string, not {kind_of(item)}")
        return item in container
    if isinstance(container, list | tuple):
        return any(_equal(item, x) for x in container)
    if isinstance(container, Mapping):
        if not isinstance(item, str):
            raise ExpressionError(f"'in' a mapping needs a string key, not {kind_of(item)}")
        return item in container
    raise ExpressionError(
        f"'in' needs a list, string or mapping on its right, not {kind_of(container)}"
    )


def kind_of(value: Any) -> str:
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
