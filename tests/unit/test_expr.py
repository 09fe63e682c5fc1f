"""The safe expression language: parsing, strict evaluation, totality and round trips."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tamma_actors._errors import ExpressionError, WorkflowError
from tamma_actors._expr import evaluate, parse, referenced_steps, roots, to_source

CTX: dict[str, Any] = {
    "inputs": {"n": 3, "topic": "go", "flag": True, "tags": ["a", "b"], "none": None},
    "steps": {"src": {"output": {"rows": [1, 2, {"k": "v"}], "ok": True}}, "a-b": {"output": 7}},
    "item": {"id": 5},
}


def ev(source: str, ctx: dict[str, Any] | None = None) -> Any:
    return evaluate(parse(source), CTX if ctx is None else ctx)


@pytest.mark.parametrize(
    ("source", "value"),
    [
        ("1", 1),
        ("-2.5", -2.5),
        ("'it\\'s'", "it's"),
        ('"a\\n"', "a\n"),
        ("true", True),
        ("null", None),
        ("[1, 'x', [true]]", [1, "x", [True]]),
        ("[]", []),
        ("inputs.n", 3),
        ("inputs.missing", None),
        ("steps.src.output.rows[2].k", "v"),
        ("steps.src.output.rows[-1]['k']", "v"),
        ("steps['a-b'].output", 7),
        ("item.id", 5),
        ("inputs.n == 3 and inputs.topic != 'stop'", True),
        ("inputs.n < 3 or inputs.n >= 3", True),
        ("not inputs.flag", False),
        ("not inputs.n == 4", True),
        ("'o' in inputs.topic", True),
        ("'a' in inputs.tags and 'z' not in inputs.tags", True),
        ("'n' in inputs", True),
        ("len(inputs.tags) == 2 and len('abc') == 3 and len(inputs) == 5", True),
        ("(inputs.n > 1) == true", True),
        ("1 == 1.0", True),
        ("true == 1", False),
        ("[1, [2]] == [1, [2]]", True),
        ("inputs.none == null", True),
        ("false and inputs.n.nope", False),  # short circuit: the right side is never read
        ("true or inputs.n.nope", True),
        ("[18446744073709551615, -9223372036854775808]", [2**64 - 1, -(2**63)]),  # the edges
    ],
)
def test_expressions_evaluate_strictly(source: str, value: Any) -> None:
    result = ev(source)
    assert result == value and type(result) is type(value)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("", "empty"),
        ("inputs.n >", "expected a value, found the end at column 11"),
        ("os.system('x')", "unknown name 'os' at column 1"),
        ("__import__('os')", "unknown name '__import__'"),
        ("1 < 2 < 3", "do not chain"),
        ("inputs.n @ 2", "unexpected character '@' at column 10"),
        ("'open", "unexpected character"),
        ("'\\q'", "unknown escape"),
        ("inputs.", "field name"),
        ("len inputs", "expected '('"),
        ("(1", "expected ')'"),
        ("inputs.n 2", "end of the expression"),
        ("1e999", "number 1e999 at column 1 is too large"),
        # The store carries 64-bit integers: a bigger literal would fail the commit of
        # whatever it flows into (a fan-out's items, a subflow's inputs), too late.
        ("[1, 18446744073709551616]", "number 18446744073709551616 at column 5 is beyond 64 bits"),
        ("inputs.n > -9223372036854775809", "number -9223372036854775809 at column 12 is beyond"),
        # Only ASCII digits are numbers (Python's \\d takes any script's).
        ("inputs.n == \u0663", "unexpected character '\u0663' at column 13"),
        ("(" * 70 + "1" + ")" * 70, "deeper than"),
        (" or ".join(["true"] * 80), "deeper than"),
        ("x" * 5000, "longer than"),
    ],
)
def test_bad_expressions_are_refused_with_where_and_what(source: str, message: str) -> None:
    with pytest.raises(ExpressionError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse(source)


def test_a_non_string_is_not_an_expression() -> None:
    with pytest.raises(ExpressionError, match="must be a string, not a list"):
        parse(["inputs.n"])  # unhashable: must not escape as a TypeError
    assert issubclass(ExpressionError, WorkflowError)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("inputs.n and true", "'and' needs true or false, not a number"),
        ("not inputs.topic", "'not' needs true or false, not a string"),
        ("inputs.topic < 3", "cannot order a string and a number"),
        ("inputs.n.x", "inputs.n is a number; it has no field 'x'"),
        ("inputs.tags[5]", "out of range"),
        ("inputs.tags['a']", "indexed by an integer"),
        ("inputs[0]", "indexed by a string"),
        ("inputs.n[0]", "cannot be indexed"),
        ("len(inputs.n)", "len\\(\\) needs"),
        ("1 in inputs.topic", "'in' a string needs a string"),
        ("1 in inputs", "string key"),
        ("1 in 2", "on its right"),
        ("true < false", "cannot order"),
    ],
)
def test_evaluation_errors_name_the_value(source: str, message: str) -> None:
    with pytest.raises(ExpressionError, match=message):
        ev(source)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("steps.a.output.ok and steps.b.output", "(its operand steps.b.output)"),
        ("not inputs.topic or inputs.n > 0", "(its operand inputs.topic)"),
        ("inputs.n > 0 and inputs.topic >= 3", "inputs.topic >= 3: cannot order"),
        ("inputs.n == 3 and 1 in inputs.topic", "1 in inputs.topic: 'in' a string"),
        ("len(inputs.tags) > len(inputs.n)", "len(inputs.n): len() needs"),
        ("inputs.tags[0] == inputs.tags['a']", 'inputs.tags["a"]: a list is indexed'),
    ],
)
def test_a_mistake_in_a_longer_expression_names_the_part_that_made_it(
    source: str, message: str
) -> None:
    ctx = {**CTX, "steps": {"a": {"output": {"ok": True}}, "b": {"output": None}}}
    with pytest.raises(ExpressionError) as info:
        ev(source, ctx)
    assert message in str(info.value)


def test_a_root_missing_from_the_context_is_an_error() -> None:
    with pytest.raises(ExpressionError, match="'item' is not available"):
        ev("item == 1", {"inputs": {}, "steps": {}})


def test_referenced_steps_and_roots() -> None:
    node = parse("steps.a.output == steps['b-c'].output[0] and item in inputs.x and len(steps.d)")
    assert referenced_steps(node) == {"a", "b-c", "d"}
    assert roots(node) == {"steps", "item", "inputs"}


# -- properties -----------------------------------------------------------------------------

_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5)
_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=12,
)
_contexts = st.fixed_dictionaries(
    {
        "inputs": st.dictionaries(st.sampled_from(["a", "b", "c"]), _values, max_size=3),
        "steps": st.dictionaries(
            st.sampled_from(["s", "t"]), st.fixed_dictionaries({"output": _values}), max_size=2
        ),
        "item": _values,
    }
)

_names = st.sampled_from(["a", "b", "c", "output", "s", "t", "id"])
_literals = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**20), 10**20),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=6),
)


def _atoms() -> st.SearchStrategy[str]:
    roots_ = st.sampled_from(["inputs", "steps", "item", "steps.s.output", "steps.t.output"])
    paths = st.lists(
        st.one_of(_names.map(lambda n: f".{n}"), st.integers(-3, 3).map(lambda i: f"[{i}]")),
        max_size=3,
    )
    named = st.builds(lambda r, p: r + "".join(p), roots_, paths)
    return st.one_of(named, _literals.map(_text_of))


def _text_of(value: Any) -> str:
    from tamma_actors._expr import Literal

    return to_source(Literal(value))


_exprs = st.recursive(
    _atoms(),
    lambda inner: st.one_of(
        st.builds(
            lambda a, op, b: f"{a} {op} {b}",
            inner,
            st.sampled_from(["==", "!=", "<", "<=", ">", ">=", "in", "not in", "and", "or"]),
            inner,
        ),
        inner.map(lambda a: f"not ({a})"),
        inner.map(lambda a: f"len({a})"),
        inner.map(lambda a: f"({a})"),
        st.lists(inner, max_size=3).map(lambda xs: "[" + ", ".join(xs) + "]"),
    ),
    max_leaves=8,
)


@settings(deadline=None, max_examples=300)
@given(source=_exprs, ctx=_contexts)
def test_evaluation_is_total(source: str, ctx: dict[str, Any]) -> None:
    """Either a value or an ExpressionError, never another exception."""
    try:
        node = parse(source)
    except ExpressionError:
        return  # e.g. a chained comparison the generator produced
    with contextlib.suppress(ExpressionError):
        evaluate(node, ctx)


@settings(deadline=None, max_examples=300)
@given(source=_exprs)
def test_printing_and_parsing_round_trip(source: str) -> None:
    try:
        node = parse(source)
    except ExpressionError:
        return
    text = to_source(node)
    assert parse(text) == node
    assert to_source(parse(text)) == text


@settings(deadline=None, max_examples=200)
@given(text=st.text(max_size=40))
def test_parsing_arbitrary_text_never_raises_anything_else(text: str) -> None:
    with contextlib.suppress(ExpressionError):
        parse(text)


@settings(deadline=None)
@given(value=_values, ctx=_contexts)
def test_a_value_equals_itself_unless_it_holds_nan(value: Any, ctx: dict[str, Any]) -> None:
    ctx = dict(ctx, item=value)
    result = ev("item == item", ctx)
    assert isinstance(result, bool)
    assert result is (not _has_nan(value))


def _has_nan(value: Any) -> bool:
    if isinstance(value, float):
        return value != value
    if isinstance(value, list):
        return any(_has_nan(v) for v in value)
    if isinstance(value, dict):
        return any(_has_nan(v) for v in value.values())
    return False
