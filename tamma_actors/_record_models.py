"""Execution-side pydantic models: the records a node hands out, read back into models.

``WorkflowExecution`` (with its ``StepResult``, ``StepErrorInfo``, ``WorkflowErrorInfo`` and
``ExecutionMetrics``), ``WorkflowSummary``, ``WorkflowStatusInfo`` (with ``StatusProgress``),
``WorkflowState``,
``WorkflowEvent`` and the ``WorkflowFilter`` of list requests. They are built from the
plain records of :mod:`tamma_actors._engine_api` and ignore unknown keys, so an older
client can read a newer node's records; timestamps (``UtcDatetime``) take the records'
epoch seconds and are kept in UTC. Like the workflow-file models of
:mod:`tamma_actors._models` (which re-exports these), they accept snake_case names and
the story's camelCase aliases and dump snake_case.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from tamma_actors._status import ExecutionStatus, StepStatus

__all__ = [
    "CompensationResult",
    "ExecutionMetrics",
    "StatusProgress",
    "StepErrorInfo",
    "StepResult",
    "UtcDatetime",
    "WorkflowErrorInfo",
    "WorkflowEvent",
    "WorkflowExecution",
    "WorkflowFilter",
    "WorkflowState",
    "WorkflowStatusInfo",
    "WorkflowSummary",
]


def _utc_input(value: Any) -> Any:
    # Records carry float epoch seconds; pydantic alone would read large numbers as ms.
    if isinstance(value, bool):
        raise ValueError("expected a timestamp, not a boolean")
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC)
    return value


def _as_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


UtcDatetime = Annotated[datetime, BeforeValidator(_utc_input), AfterValidator(_as_utc)]


class _RecordModel(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        extra="ignore",
        # A step may return bytes (its output travels and is stored as msgpack); in JSON
        # (``tamma --json``, ``watch``) they are base64 text, whatever they hold.
        ser_json_bytes="base64",
    )


class StepErrorInfo(_RecordModel):
    type: str
    message: str
    retryable: bool | None = None


class StepResult(_RecordModel):
    status: StepStatus
    data: Any = None
    error: StepErrorInfo | None = None
    attempts: int = 0
    started_at: UtcDatetime | None = None
    ended_at: UtcDatetime | None = None
    message: str | None = None
    # parallel: item counts by status; subflow: the child execution's id (and earlier ones)
    detail: dict[str, Any] | None = None


class CompensationResult(_RecordModel):
    """One entry of a compensated execution's error: a step, what undid it, how it went."""

    step: str
    implementation: str
    status: str  # pending, running, succeeded, failed or cancelled (by an abort)
    output: Any = None
    error: dict[str, Any] | None = None


class WorkflowErrorInfo(_RecordModel):
    message: str
    step: str | None = None
    type: str | None = None
    failed_steps: list[str] = Field(default_factory=list)  # every step that failed for good
    compensations: list[CompensationResult] = Field(default_factory=list)  # under compensate

    @model_validator(mode="before")
    @classmethod
    def _bare_message(cls, data: Any) -> Any:
        return {"message": data} if isinstance(data, str) else data


class ExecutionMetrics(_RecordModel):
    steps_total: int = 0
    steps_succeeded: int = 0
    steps_failed: int = 0
    steps_skipped: int = 0
    retries: int = 0
    duration_ms: float | None = None


class WorkflowExecution(_RecordModel):
    id: str
    workflow_id: str
    workflow_version: str = ""
    status: ExecutionStatus
    start_time: UtcDatetime
    end_time: UtcDatetime | None = None
    current_step: str | None = None
    context: dict[str, Any] = Field(default_factory=dict)
    results: dict[str, StepResult] = Field(default_factory=dict)
    error: WorkflowErrorInfo | None = None
    metrics: ExecutionMetrics = Field(default_factory=ExecutionMetrics)
    seq: int = 0
    reason: str | None = None


class WorkflowSummary(_RecordModel):
    """An execution as listed by ``list_summaries``: what the store keeps for listing, as of
    its last commit (no step results)."""

    id: str
    workflow_id: str
    status: ExecutionStatus
    start_time: UtcDatetime | None = None
    end_time: UtcDatetime | None = None
    current_step: str | None = None
    seq: int = 0


class StatusProgress(_RecordModel):
    total: int = 0
    succeeded: int = 0
    failed: int = 0
    skipped: int = 0
    running: int = 0


class WorkflowStatusInfo(_RecordModel):
    """The story's ``WorkflowStatus``: the status record of ``get_workflow_status``."""

    id: str
    workflow_id: str
    status: ExecutionStatus
    current_step: str | None = None
    reason: str | None = None
    seq: int = 0
    progress: StatusProgress = Field(default_factory=StatusProgress)
    steps: dict[str, StepStatus] = Field(default_factory=dict)
    # step -> what holds it: a breaker, or (compensating) the compensation that undoes it
    waiting: dict[str, str] = Field(default_factory=dict)
    # under ``compensate``, once a step failed: {"step", "implementation", "status"} each
    compensations: list[dict[str, str]] = Field(default_factory=list)


class WorkflowState(_RecordModel):
    """One entry of an execution's state history (the story's ``WorkflowState``)."""

    execution_id: str
    workflow_id: str
    step: str
    status: str
    context: dict[str, Any] = Field(default_factory=dict)
    timestamp: UtcDatetime
    metadata: dict[str, Any] = Field(default_factory=dict)


class WorkflowEvent(_RecordModel):
    id: str | None = None
    seq: int = 0
    type: str
    execution_id: str
    timestamp: UtcDatetime
    data: dict[str, Any] = Field(default_factory=dict)
    metadata: dict[str, Any] = Field(default_factory=dict)


class WorkflowFilter(_RecordModel):
    # What a caller writes, not what a node sends: a misspelt key must not pass unnoticed
    # (ignored, it would list every execution).
    model_config = ConfigDict(extra="forbid")

    status: list[ExecutionStatus] | None = None
    workflow_id: str | None = None
    limit: int | None = Field(None, ge=0)
    offset: int = Field(0, ge=0)

    @field_validator("status", mode="before")
    @classmethod
    def _single_status(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value
