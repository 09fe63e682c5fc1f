"""Arguments as Client and WorkflowEngine both check them before a request is made: the
list filter, the workflow and inputs of a start, and what a request cannot carry."""

from __future__ import annotations

import datetime
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tamma_actors import ExecutionStatus, InvalidRequest, WorkflowFilter
from tamma_actors._client_args import inputs_map, list_filter, unsendable, workflow_definition
from tamma_actors._codec import pack
from tamma_actors._errors import CodecError


def test_a_filter_takes_one_status_and_camel_case_keys() -> None:
    taken = list_filter({"status": "completed", "workflowId": "w", "limit": 2})
    assert (taken.status, taken.workflow_id, taken.limit) == ([ExecutionStatus.COMPLETED], "w", 2)
    assert list_filter(None).model_dump() == list_filter({}).model_dump()
    assert list_filter({}).model_dump() == WorkflowFilter().model_dump()


@pytest.mark.parametrize(
    ("given_filter", "says"),
    [
        ({"wrkflow_id": "x"}, r"wrkflow_id: unknown key \(a filter has status, workflow_id"),
        ({"status": "done"}, "status"),
        ({"offset": -1}, "offset: Input should be greater than or equal to 0"),
        (["status"], "a WorkflowFilter or a mapping, not list"),
    ],
)
def test_a_filter_key_or_value_that_would_be_ignored_is_refused(
    given_filter: Any, says: str
) -> None:
    with pytest.raises(InvalidRequest, match=says):
        list_filter(given_filter)


def test_a_filter_made_directly_refuses_an_unknown_key_too() -> None:
    with pytest.raises(ValueError, match="wrkflow_id"):
        WorkflowFilter(wrkflow_id="x")  # type: ignore[call-arg]


def test_a_filter_object_is_checked_again() -> None:
    changed = WorkflowFilter(limit=3)
    changed.limit = -1  # models are not validated on assignment
    with pytest.raises(InvalidRequest, match="limit"):
        list_filter(changed)


def test_a_start_names_a_workflow_or_inputs_of_the_wrong_kind() -> None:
    with pytest.raises(InvalidRequest, match="path of a workflow file, not int"):
        workflow_definition(123)  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest, match=r"inputs_list\[2\] must be a mapping .* not list"):
        inputs_map([1, 2], "inputs_list[2]")
    assert inputs_map(None) == {}


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ({"due": datetime.date(2026, 1, 1)}, "due: a value of type date cannot be sent"),
        ({"a": [1, {"b": {1, 2}}]}, r"a\[1\]\.b: a value of type set"),
        ({"n": 2**64}, f"n: {2**64} is beyond 64 bits"),
        ({"k": {frozenset(): 1}}, r"k \(a key\): a value of type frozenset"),
        ({"deep": [[[]]] * 1}, None),
    ],
)
def test_what_cannot_be_sent_is_named_by_its_place(value: Any, says: str | None) -> None:
    problem = unsendable(value)
    assert problem is None if says is None else re.search(says, problem or "")


def nested(levels: int) -> Any:
    value: Any = []
    for _ in range(levels):
        value = [value]
    return value


@pytest.mark.parametrize("levels", [1023, 1024, 1025, 5000])
def test_nesting_is_named_where_the_codec_refuses_it(levels: int) -> None:
    # 5000: deeper than the interpreter's recursion limit (the walk is a loop)
    try:
        pack({"x": nested(levels)})
        packed = True
    except CodecError:
        packed = False
    problem = unsendable({"x": nested(levels)})
    assert (problem is None) is packed
    if problem is not None:
        assert problem.startswith("x[0][0]")
        assert problem.endswith(": nested more than 1024 maps and lists deep")


_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**65), max_value=2**65)
    | st.floats()
    | st.text(max_size=3)
    | st.binary(max_size=3)
    | st.dates()
    | st.frozensets(st.integers(), max_size=2)
)
_KEYS = st.text(max_size=3) | st.integers() | st.dates()
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.tuples(inner)
        | st.sets(st.integers(), max_size=2)
        | st.dictionaries(_KEYS, inner, max_size=3)
    ),
    max_leaves=12,
)


@given(_VALUES)
def test_a_value_is_named_unsendable_exactly_when_the_codec_refuses_it(value: Any) -> None:
    try:
        pack(value)
        packed = True
    except CodecError:
        packed = False
    assert (unsendable(value, "inputs") is None) is packed
