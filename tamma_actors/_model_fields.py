"""The field types of workflow files: durations (a number in a unit, or text with one,
bounded by MAX_DURATION_S), counts, step and workflow names, a version, and the rules a
definition stored by an earlier version is read again under (``judged_as_stored``).

Each is an ``Annotated`` type for :mod:`tamma_actors._models`, with its JSON Schema.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from contextvars import ContextVar
from pathlib import PurePath
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field, WithJsonSchema

from tamma_actors._durations import (
    DURATION_PATTERN,
    MAX_DURATION_S,
    MAX_DURATION_TEXT,
    DurationUnit,
    parse_duration,
)

__all__ = [
    "MINUTES_SCHEMA",
    "STEP_NAME_PATTERN",
    "Count",
    "Milliseconds",
    "OptionalSeconds",
    "PositiveCount",
    "PositiveSeconds",
    "Seconds",
    "StepName",
    "WorkflowName",
    "judged_as_stored",
    "judging_stored",
    "minutes_as_seconds",
    "version_text",
]

STEP_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.-]*$"
_UNIT_SECONDS = {"milliseconds": 0.001, "seconds": 1.0, "minutes": 60.0}


def _duration_schema(
    unit: str, *, nullable: bool = False, positive: bool = False
) -> WithJsonSchema:
    bound = "exclusiveMinimum" if positive else "minimum"
    most = round(MAX_DURATION_S / _UNIT_SECONDS[unit], 9)
    choices: list[dict[str, Any]] = [
        {"type": "number", bound: 0, "maximum": most},
        {"type": "string", "pattern": DURATION_PATTERN, "examples": ["250ms", "30s", "1h30m"]},
    ]
    if nullable:
        choices.append({"type": "null"})
    above = "above 0" if positive else "0 or more"
    return WithJsonSchema(
        {
            "anyOf": choices,
            "description": f"a number in {unit}, or a duration with a unit (ms, s, m, h); "
            f"{above}, at most {MAX_DURATION_TEXT}",
        }
    )


# A definition stored by an earlier version is read again (recovery, explain, retry) under
# the rules it was stored under where later ones are stricter: its execution must load.
# Set by parse_workflow(stored=True) for the time of one validation.
_STORED: ContextVar[bool] = ContextVar("tamma_stored_definition", default=False)
# A timeout of 0, stored before a timeout had to be above 0: it runs out at once, as it did.
_STORED_ZERO_TIMEOUT = 1e-9


def judging_stored() -> bool:
    """Whether a stored definition is being read (see ``judged_as_stored``)."""
    return _STORED.get()


@contextlib.contextmanager
def judged_as_stored() -> Iterator[None]:
    """Validate under the rules a stored definition was made under (see ``_STORED``)."""
    token = _STORED.set(True)
    try:
        yield
    finally:
        _STORED.reset(token)


def _to_unit(
    value: Any, default_unit: DurationUnit, per_second: float, *, positive: bool = False
) -> Any:
    if value is None:
        return None
    stored = _STORED.get()  # one stored over the bound is kept at the bound
    result = round(parse_duration(value, default_unit, cap=stored) * per_second, 9)
    return _STORED_ZERO_TIMEOUT if positive and stored and result == 0 else result


def _milliseconds(value: Any) -> Any:
    return _to_unit(value, "ms", 1000.0)


def _seconds(value: Any) -> Any:
    return _to_unit(value, "s", 1.0)


def _timeout_seconds(value: Any) -> Any:
    return _to_unit(value, "s", 1.0, positive=True)


def minutes_as_seconds(value: Any) -> Any:
    return _to_unit(value, "m", 1.0, positive=True)


def _no_bool(value: Any) -> Any:
    # YAML `max_attempts: yes` is a mistake, not "1".
    if isinstance(value, bool):
        raise ValueError("expected a number, not a boolean")
    return value


def version_text(value: Any) -> Any:
    if isinstance(value, float):  # a float cannot say how it was written: 1.10 is 1.1
        raise ValueError(
            f"{value!r} is a number: write the version as text, in quotes "
            "(version: '1.10'; the number 1.10 is 1.1)"
        )
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


_NAME_PATTERN = r"^[^\x00-\x1f\x7f/]+$"
_NAME_MOST = 200


def _callable_by_name(value: str) -> str:
    if _STORED.get():  # a name stored before names were checked
        return value
    if len(value) > _NAME_MOST:
        raise ValueError(f"a workflow name has at most {_NAME_MOST} characters, not {len(value):,}")
    if not re.match(_NAME_PATTERN, value):
        raise ValueError(
            "a workflow name has no '/' (a subflow naming it would be read as a file path) "
            "and no control characters (a newline, a tab...)"
        )
    if value.endswith((".yaml", ".yml", ".json")):
        raise ValueError(
            f"a workflow name may not end in {PurePath(value).suffix!r}: a subflow naming it "
            "would be read as a file path"
        )
    return value


# Printable, without '/' (a subflow by name is read as a path), and short enough to show.
WorkflowName = Annotated[
    str,
    Field(min_length=1, json_schema_extra={"pattern": _NAME_PATTERN, "maxLength": _NAME_MOST}),
    AfterValidator(_callable_by_name),
]


Milliseconds = Annotated[float, BeforeValidator(_milliseconds), _duration_schema("milliseconds")]
Seconds = Annotated[float, BeforeValidator(_seconds), _duration_schema("seconds")]
PositiveSeconds = Annotated[
    float, BeforeValidator(_seconds), Field(gt=0), _duration_schema("seconds", positive=True)
]
Count = Annotated[int, BeforeValidator(_no_bool)]
PositiveCount = Annotated[int, Field(ge=1), BeforeValidator(_no_bool)]
MINUTES_SCHEMA = _duration_schema("minutes", nullable=True, positive=True)
OptionalSeconds = Annotated[
    Annotated[float, Field(gt=0)] | None,
    BeforeValidator(_timeout_seconds),
    _duration_schema("seconds", nullable=True, positive=True),
]
StepName = Annotated[str, Field(min_length=1, pattern=STEP_NAME_PATTERN)]
