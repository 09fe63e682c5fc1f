"""The story's data model as pydantic v2 models.

Workflow-file models (``WorkflowConfig`` and its parts) live here: they are frozen and
forbid unknown keys, so a typo in a workflow file is an error rather than a silently
ignored setting. The execution-side models (``WorkflowExecution``, ``WorkflowEvent``, ...)
live in :mod:`tamma_actors._record_models` and are re-exported from here.

Every model accepts snake_case names and the story's camelCase aliases (``retryPolicy``,
``maxAttempts``, ``workflowId``, ...) and dumps snake_case.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from tamma_actors._codec import INT_RANGE
from tamma_actors._durations import (
    MAX_DURATION_S,
    MAX_DURATION_TEXT,
)
from tamma_actors._errors import UnknownStep
from tamma_actors._model_fields import (
    MINUTES_SCHEMA,
    STEP_NAME_PATTERN,
    Count,
    Milliseconds,
    OptionalSeconds,
    PositiveCount,
    PositiveSeconds,
    Seconds,
    StepName,
    WorkflowName,
    judging_stored,
    minutes_as_seconds,
    version_text,
)
from tamma_actors._record_models import (
    ExecutionMetrics,
    StatusProgress,
    StepErrorInfo,
    StepResult,
    UtcDatetime,
    WorkflowErrorInfo,
    WorkflowEvent,
    WorkflowExecution,
    WorkflowFilter,
    WorkflowState,
    WorkflowStatusInfo,
    WorkflowSummary,
)

__all__ = [
    "STEP_NAME_PATTERN",
    "CircuitBreakerPolicy",
    "ErrorHandlingPolicy",
    "ExecutionMetrics",
    "FileModel",
    "Milliseconds",
    "RetryPolicy",
    "Seconds",
    "StatusProgress",
    "StepDependency",
    "StepErrorInfo",
    "StepResult",
    "UtcDatetime",
    "WorkflowConfig",
    "WorkflowErrorInfo",
    "WorkflowEvent",
    "WorkflowExecution",
    "WorkflowFilter",
    "WorkflowState",
    "WorkflowStatusInfo",
    "WorkflowStep",
    "WorkflowSummary",
]

_T = TypeVar("_T")
_IMPLEMENTED_TYPES = frozenset({"task", "parallel"})


# --- field types ---------------------------------------------------------------------


class FileModel(BaseModel):
    """Workflow-file models: snake_case or camelCase keys, no unknown keys, frozen."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        extra="forbid",
        frozen=True,
        # Errors name fields as the docs and the snake_case dumps do.
        loc_by_alias=False,
    )


# --- workflow files ------------------------------------------------------------------


class RetryPolicy(FileModel):
    """Exponential backoff with jitter; delays are stored in milliseconds."""

    max_attempts: Count = Field(3, ge=1)
    base_delay: Milliseconds = Field(1000.0, ge=0)
    max_delay: Milliseconds = Field(30000.0, ge=0)
    backoff_multiplier: float = Field(2.0, ge=1)
    jitter: float = Field(0.1, ge=0, le=1)
    retryable_errors: list[str] | None = None

    @model_validator(mode="after")
    def _delays_ordered(self) -> RetryPolicy:
        if self.max_delay < self.base_delay:
            raise ValueError(
                f"max_delay ({self.max_delay:g} ms) is below base_delay ({self.base_delay:g} ms)"
            )
        return self


class ErrorHandlingPolicy(FileModel):
    strategy: Literal["fail_fast", "continue", "compensate"] = "fail_fast"

    @model_validator(mode="before")
    @classmethod
    def _bare_strategy(cls, data: Any) -> Any:
        # `error_handling: continue` is the common way to write it in a workflow file.
        return {"strategy": data} if isinstance(data, str) else data


class CircuitBreakerPolicy(FileModel):
    """Per step implementation (and ``config.target``): open after ``failure_threshold``
    consecutive failed attempts, half-open after ``reset_timeout`` with at most
    ``half_open_max_calls`` probes in flight, closed again on a probe's success."""

    failure_threshold: Count = Field(5, ge=1)
    reset_timeout: PositiveSeconds = 30.0
    half_open_max_calls: Count = Field(1, ge=1)


_JSON_SCALARS = (str, type(None))
# The deepest nesting of maps and lists a step's config may have: the stored form and the
# digest are made by recursive encoders, which must not run out of stack on the node.
MAX_CONFIG_DEPTH = 100


def _shortened(where: str, most: int = 48) -> str:
    """A long place cut after its last whole part within ``most`` characters."""
    cut = max(where.rfind("[", 1, most), where.rfind(".", 1, most))
    return where if len(where) <= most or cut < 1 else f"{where[:cut]}..."


def json_data_problem(value: Any, where: str = "", depth: int = 0) -> str | None:
    """What in ``value`` is not JSON data (maps with string keys, lists, strings, finite
    numbers, integers of 64 bits, booleans, null; nested at most ``MAX_CONFIG_DEPTH``
    deep), named by its place under ``where``; None if nothing is. A tuple is taken for a
    list, as the wire and the stored definition take it."""
    if isinstance(value, _JSON_SCALARS):
        return None
    if isinstance(value, int):  # bool too
        return None if value in INT_RANGE else f"{where or 'the value'}: {value} is too big"
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{where or 'the value'}: {value!r} is not JSON"
    if isinstance(value, list | tuple | dict) and depth >= MAX_CONFIG_DEPTH:
        return f"{_shortened(where)}: nested deeper than {MAX_CONFIG_DEPTH} maps and lists"
    if isinstance(value, list | tuple):
        found = (json_data_problem(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value))
        return next((p for p in found if p is not None), None)
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"{where or 'the map'}: the key {key!r} is not a string"
            problem = json_data_problem(item, f"{where}.{key}" if where else key, depth + 1)
            if problem is not None:
                return problem
        return None
    return (
        f"{where or 'the value'}: a value of type {type(value).__name__} is not JSON data "
        "(maps, lists, strings, numbers, booleans and null; a date or bytes go as a string)"
    )


class StepDependency(FileModel):
    """A workflow-level dependency entry: ``step`` runs after every step in ``depends_on``."""

    step: str
    depends_on: list[str]


class WorkflowStep(FileModel):
    name: StepName
    type: Literal["task", "decision", "parallel", "subflow"] = "task"
    implementation: str | None = Field(None, validate_default=True)
    config: dict[str, Any] = Field(default_factory=dict)
    timeout: OptionalSeconds = None  # start-to-close
    retry_policy: RetryPolicy | None = None
    dependencies: list[str] = Field(default_factory=list)
    compensation: str | None = None
    # schedule-to-start: dispatched until a worker starts it (frozen while paused)
    queue_timeout: OptionalSeconds = None
    # longest silence between two ctx.heartbeat calls of a running step
    heartbeat_timeout: OptionalSeconds = None

    @field_validator("config")
    @classmethod
    def _config_is_json_data(cls, value: dict[str, Any]) -> dict[str, Any]:
        # The definition is stored and hashed as JSON: anything else would come back
        # changed (NaN as null, bytes as text) to an execution brought back from the store.
        problem = json_data_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value

    @field_validator("implementation")
    @classmethod
    def _implementation_required(cls, value: str | None, info: ValidationInfo) -> str | None:
        kind = info.data.get("type")
        if kind in _IMPLEMENTED_TYPES and not value:
            raise ValueError(f"a {kind} step needs an implementation")
        return value

    @model_validator(mode="after")
    def _wait_needs_seconds(self) -> WorkflowStep:
        # The coordinator keeps a wait step's timer: its config is checked here, at load.
        if self.implementation == "wait" and self.type == "task":
            seconds = self.config.get("seconds")
            most = math.inf if judging_stored() else MAX_DURATION_S  # kept at the bound then
            if (
                isinstance(seconds, bool)
                or not isinstance(seconds, int | float)
                or not 0 <= seconds <= most
            ):
                raise ValueError(
                    "a wait step needs config.seconds, a number of seconds >= 0 and at most "
                    f"{MAX_DURATION_TEXT}, got {seconds!r}"
                )
        return self


class WorkflowConfig(FileModel):
    """A workflow definition. ``timeout`` is given in minutes (or as a duration string)
    and stored in seconds."""

    name: WorkflowName
    version: Annotated[str, BeforeValidator(version_text)] = "1"
    description: str = ""
    steps: list[WorkflowStep] = Field(min_length=1)
    dependencies: list[StepDependency] = Field(default_factory=list)
    timeout: Annotated[
        Annotated[float, Field(gt=0)] | None, BeforeValidator(minutes_as_seconds), MINUTES_SCHEMA
    ] = None
    retry_policy: RetryPolicy = Field(default_factory=RetryPolicy)
    error_handling: ErrorHandlingPolicy = Field(default_factory=ErrorHandlingPolicy)
    max_parallel: PositiveCount | None = None
    circuit_breaker: CircuitBreakerPolicy | None = None

    _by_name: dict[str, WorkflowStep] = PrivateAttr(default_factory=dict)
    _dependency_map: Mapping[str, tuple[str, ...]] | None = PrivateAttr(None)
    _dependents_map: Mapping[str, tuple[str, ...]] | None = PrivateAttr(None)
    _positions: Mapping[str, int] | None = PrivateAttr(None)

    def model_post_init(self, context: Any, /) -> None:
        # First definition wins; duplicates are reported by the workflow-file checks.
        for step in self.steps:
            self._by_name.setdefault(step.name, step)

    @field_serializer("timeout")
    def _timeout_text(self, seconds: float | None) -> str | None:
        # A bare number would re-validate as minutes; a unit keeps the dump faithful.
        return None if seconds is None else f"{seconds!r}s"

    def step(self, name: str) -> WorkflowStep:
        # Straight from the private dict: pydantic's __getattr__ for private attributes costs
        # ~10x as much, and this is on the coordinator's hot path (several calls per step).
        private = self.__pydantic_private__
        assert private is not None  # set by model_post_init
        by_name: dict[str, WorkflowStep] = private["_by_name"]
        try:
            return by_name[name]
        except KeyError:
            raise UnknownStep(f"workflow {self.name!r} has no step {name!r}") from None

    def deps(self, name: str) -> list[str]:
        """Every step ``name`` waits for: its own list, then workflow-level entries."""
        merged = list(self.step(name).dependencies)
        for entry in self.dependencies:
            if entry.step == name:
                merged.extend(entry.depends_on)
        return list(dict.fromkeys(merged))

    def _once(self, key: str, build: Callable[[], _T]) -> _T:
        """``build()``, computed once per definition and kept in private attribute ``key``:
        every execution of it (and a recovery of ten thousand) shares the read-only map."""
        private = self.__pydantic_private__
        assert private is not None
        if private[key] is None:
            private[key] = build()
        return private[key]  # type: ignore[no-any-return]

    def dependency_map(self) -> Mapping[str, tuple[str, ...]]:
        """``deps`` of every step."""
        return self._once(
            "_dependency_map",
            lambda: MappingProxyType({s.name: tuple(self.deps(s.name)) for s in self.steps}),
        )

    def dependents_map(self) -> Mapping[str, tuple[str, ...]]:
        """The steps that depend on each step, in file order."""

        def build() -> Mapping[str, tuple[str, ...]]:
            dependents: dict[str, list[str]] = {s.name: [] for s in self.steps}
            for name, deps in self.dependency_map().items():
                for dep in deps:
                    dependents[dep].append(name)
            return MappingProxyType({k: tuple(v) for k, v in dependents.items()})

        return self._once("_dependents_map", build)

    def step_positions(self) -> Mapping[str, int]:
        """Each step's place in the file (an execution's ``order``)."""
        return self._once(
            "_positions", lambda: MappingProxyType({s.name: i for i, s in enumerate(self.steps)})
        )

    def retry_policy_for(self, name: str) -> RetryPolicy:
        return self.step(name).retry_policy or self.retry_policy

    def digest(self) -> str:
        """sha256 of the canonical JSON form: equal definitions give equal digests."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()
