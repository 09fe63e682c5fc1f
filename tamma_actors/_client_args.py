"""The arguments of a request, checked on the caller's side as a node checks them: the
same rules, and the same error (:class:`~tamma_actors._errors.InvalidRequest`), for the
:class:`~tamma_actors.Client` and the embedded :class:`~tamma_actors.WorkflowEngine`."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from tamma_actors._codec import INT_RANGE
from tamma_actors._errors import CodecError, InvalidRequest
from tamma_actors._models import WorkflowConfig, WorkflowFilter
from tamma_actors._protocol import problems_summary
from tamma_actors._workflow_file import read_workflow_mapping

__all__ = [
    "inputs_map",
    "list_filter",
    "unsendable",
    "unsendable_error",
    "workflow_definition",
]


def workflow_definition(
    config_or_path: WorkflowConfig | Mapping[str, Any] | str | Path,
) -> tuple[dict[str, Any], str | None]:
    """The definition to start and its source file (None unless given as a path)."""
    if isinstance(config_or_path, str | Path):
        # Absolute: the node resolves a subflow's file against it, from its own cwd.
        return read_workflow_mapping(config_or_path), str(Path(config_or_path).resolve())
    if isinstance(config_or_path, WorkflowConfig):
        return config_or_path.model_dump(mode="json", exclude_none=True), None
    if isinstance(config_or_path, Mapping):
        return dict(config_or_path), None
    raise InvalidRequest(
        "the workflow must be a WorkflowConfig, a mapping or the path of a workflow file, "
        f"not {type(config_or_path).__name__}"
    )


def inputs_map(inputs: Any, where: str = "inputs") -> dict[str, Any]:
    """``inputs`` (None: none) as the dict a start sends; anything but a mapping is refused."""
    if inputs is None:
        return {}
    if not isinstance(inputs, Mapping):
        raise InvalidRequest(
            f"{where} must be a mapping of names to values, not {type(inputs).__name__}"
        )
    return dict(inputs)


def list_filter(filter: WorkflowFilter | Mapping[str, Any] | None) -> WorkflowFilter:
    """``filter`` checked as a list request's: snake_case or camelCase keys, one status or
    a list of them; an unknown key or a wrong value raises ``InvalidRequest``."""
    if isinstance(filter, WorkflowFilter):
        filter = filter.model_dump()  # again: its fields may have been assigned since
    elif filter is not None and not isinstance(filter, Mapping):
        raise InvalidRequest(
            f"a workflow filter is a WorkflowFilter or a mapping, not {type(filter).__name__}"
        )
    try:
        return WorkflowFilter.model_validate(dict(filter or {}))
    except ValidationError as exc:
        known = ", ".join(WorkflowFilter.model_fields)
        where = problems_summary(exc).replace(
            "Extra inputs are not permitted", f"unknown key (a filter has {known})"
        )
        raise InvalidRequest(f"invalid workflow filter: {where}") from exc


_PLAIN = (str, bytes, bytearray, float, type(None))  # bool is an int
_NESTING_MOST = 1024  # msgpack's Packer refuses a value nested deeper (its recursion limit)


def unsendable(value: Any, where: str = "") -> str | None:
    """What in ``value`` a request cannot carry (msgpack: maps, lists, strings, bytes,
    numbers of 64 bits, booleans, null), named by its place under ``where``
    (``inputs.due``, ``items[3]``); None if nothing is. A loop, not a recursion: a value
    nested too deep must be named, not overflow the caller's stack."""
    todo: list[tuple[Any, str, int]] = [(value, where, 0)]
    while todo:
        item, at, depth = todo.pop()
        problem = _unsendable_here(item, at, depth)
        if problem is not None:
            return problem
        if isinstance(item, list | tuple):
            todo.extend((v, f"{at}[{i}]", depth + 1) for i, v in reversed(list(enumerate(item))))
        elif isinstance(item, dict):
            for key, v in reversed(list(item.items())):
                todo.append((v, f"{at}.{key}" if at else str(key), depth + 1))
                todo.append((key, f"{at or 'the map'} (a key)", depth + 1))
    return None


def _unsendable_here(value: Any, where: str, depth: int) -> str | None:
    """What is wrong with ``value`` itself (not what it holds)."""
    place = where or "the value"
    if isinstance(value, _PLAIN):
        return None
    if isinstance(value, int):
        return None if value in INT_RANGE else f"{place}: {value} is beyond 64 bits"
    if isinstance(value, list | tuple | dict):
        if depth > _NESTING_MOST:
            return f"{place}: nested more than {_NESTING_MOST} maps and lists deep"
        return None
    return (
        f"{place}: a value of type {type(value).__name__} cannot be sent (only maps, lists, "
        "strings, bytes, numbers, booleans and null can: a date goes as a string, a set as "
        "a list)"
    )


def unsendable_error(op: str, args: Any, exc: CodecError) -> InvalidRequest:
    """The ``InvalidRequest`` for arguments of ``op`` that could not be encoded."""
    return InvalidRequest(f"invalid arguments for {op!r}: {unsendable(args) or exc}")
