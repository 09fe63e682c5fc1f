"""Story models: aliases, units, strictness of workflow files, records from the engine."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from tamma_actors._durations import MAX_DURATION_S
from tamma_actors._errors import UnknownStep
from tamma_actors._models import (
    ErrorHandlingPolicy,
    ExecutionMetrics,
    RetryPolicy,
    StepDependency,
    StepResult,
    WorkflowConfig,
    WorkflowErrorInfo,
    WorkflowEvent,
    WorkflowExecution,
    WorkflowFilter,
    WorkflowState,
    WorkflowStatusInfo,
    WorkflowStep,
)
from tamma_actors._status import ExecutionStatus, StepStatus


def workflow(**extra: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "w",
        "steps": [
            {"name": "a", "implementation": "noop"},
            {"name": "b", "implementation": "echo", "dependencies": ["a"]},
        ],
    }
    data.update(extra)
    return data


# --- RetryPolicy ---------------------------------------------------------------------


def test_retry_policy_defaults() -> None:
    p = RetryPolicy()
    assert (p.max_attempts, p.base_delay, p.max_delay) == (3, 1000.0, 30000.0)
    assert (p.backoff_multiplier, p.jitter, p.retryable_errors) == (2.0, 0.1, None)


def test_retry_policy_camel_case_and_durations() -> None:
    p = RetryPolicy.model_validate(
        {
            "maxAttempts": 5,
            "baseDelay": "250ms",
            "maxDelay": "2s",
            "backoffMultiplier": 3,
            "retryableErrors": ["Timeout*"],
        }
    )
    assert p.max_attempts == 5
    assert p.base_delay == 250.0
    assert p.max_delay == 2000.0
    assert p.backoff_multiplier == 3.0
    assert p.retryable_errors == ["Timeout*"]
    assert "maxAttempts" not in p.model_dump()
    assert p.model_dump()["max_attempts"] == 5


def test_retry_policy_numbers_are_milliseconds() -> None:
    assert RetryPolicy(base_delay=5, max_delay=7).max_delay == 7.0


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"max_attempts": 0}, "max_attempts"),
        ({"max_attempts": True}, "max_attempts"),
        ({"base_delay": -1}, "base_delay"),
        ({"base_delay": "soon"}, "base_delay"),
        ({"backoff_multiplier": 0.5}, "backoff_multiplier"),
        ({"jitter": 1.5}, "jitter"),
        ({"max_atempts": 3}, "max_atempts"),
    ],
)
def test_retry_policy_rejections(data: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        RetryPolicy.model_validate(data)
    assert info.value.errors()[0]["loc"] == (field,)


def test_retry_policy_max_not_below_base() -> None:
    with pytest.raises(ValidationError, match="below base_delay"):
        RetryPolicy(base_delay="2s", max_delay="1s")


def test_models_are_frozen() -> None:
    with pytest.raises(ValidationError):
        RetryPolicy().max_attempts = 9  # type: ignore[misc]


# --- ErrorHandlingPolicy, StepDependency, WorkflowStep -------------------------------


def test_error_handling_bare_string_or_mapping() -> None:
    assert ErrorHandlingPolicy.model_validate("continue").strategy == "continue"
    assert ErrorHandlingPolicy.model_validate({"strategy": "compensate"}).strategy == "compensate"
    assert ErrorHandlingPolicy().strategy == "fail_fast"
    with pytest.raises(ValidationError):
        ErrorHandlingPolicy.model_validate("ignore")


def test_step_dependency_alias() -> None:
    dep = StepDependency.model_validate({"step": "b", "dependsOn": ["a"]})
    assert dep.model_dump() == {"step": "b", "depends_on": ["a"]}


def test_step_defaults_and_timeout_in_seconds() -> None:
    step = WorkflowStep.model_validate({"name": "x", "implementation": "noop", "timeout": 30})
    assert step.type == "task"
    assert step.config == {}
    assert step.dependencies == []
    assert step.timeout == 30.0
    assert WorkflowStep(name="y", implementation="noop", timeout="2m").timeout == 120.0


@pytest.mark.parametrize("name", ["", "1abc", "a b", "a/b", "ü"])
def test_step_name_pattern(name: str) -> None:
    with pytest.raises(ValidationError):
        WorkflowStep(name=name, implementation="noop")


@pytest.mark.parametrize("name", ["a", "_x", "Step.1", "open-pr_2"])
def test_step_names_accepted(name: str) -> None:
    assert WorkflowStep(name=name, implementation="noop").name == name


@pytest.mark.parametrize("kind", ["task", "parallel"])
def test_implementation_required_for_task_and_parallel(kind: str) -> None:
    with pytest.raises(ValidationError) as info:
        WorkflowStep.model_validate({"name": "x", "type": kind})
    error = info.value.errors()[0]
    assert error["loc"] == ("implementation",)
    assert f"a {kind} step needs an implementation" in error["msg"]


@pytest.mark.parametrize("kind", ["decision", "subflow"])
def test_implementation_optional_otherwise(kind: str) -> None:
    assert WorkflowStep.model_validate({"name": "x", "type": kind}).implementation is None


def test_unknown_step_field_is_an_error() -> None:
    with pytest.raises(ValidationError, match="timeot"):
        WorkflowStep.model_validate({"name": "x", "implementation": "n", "timeot": 3})


# --- WorkflowConfig ------------------------------------------------------------------


def test_workflow_defaults() -> None:
    cfg = WorkflowConfig.model_validate(workflow())
    assert cfg.version == "1"
    assert cfg.description == ""
    assert cfg.timeout is None
    assert cfg.retry_policy == RetryPolicy()
    assert cfg.error_handling.strategy == "fail_fast"
    assert cfg.max_parallel is None


def test_workflow_timeout_number_is_minutes_and_dump_round_trips() -> None:
    cfg = WorkflowConfig.model_validate(workflow(timeout=2))
    assert cfg.timeout == 120.0
    dumped = cfg.model_dump()
    assert dumped["timeout"] == "120.0s"
    assert WorkflowConfig.model_validate(dumped) == cfg
    assert WorkflowConfig.model_validate(cfg.model_dump(mode="json")) == cfg
    assert WorkflowConfig.model_validate(workflow(timeout="90s")).timeout == 90.0


@settings(deadline=None)  # no timing assertions: the box may be busy
@given(st.floats(min_value=1e-6, max_value=MAX_DURATION_S / 60, allow_nan=False))
def test_workflow_timeout_survives_any_dump(minutes: float) -> None:
    cfg = WorkflowConfig.model_validate(workflow(timeout=minutes))
    again = WorkflowConfig.model_validate(cfg.model_dump(mode="json"))
    assert again.timeout == cfg.timeout
    assert again.digest() == cfg.digest()


def test_workflow_version_numbers_become_text() -> None:
    assert WorkflowConfig.model_validate(workflow(version=2)).version == "2"
    assert WorkflowConfig.model_validate(workflow(version="1.10")).version == "1.10"
    # a float cannot say how it was written (1.10 is 1.1): it must be text
    with pytest.raises(ValidationError, match=r"write the version as text, in quotes"):
        WorkflowConfig.model_validate(workflow(version=1.5))


def test_workflow_camel_case_document() -> None:
    cfg = WorkflowConfig.model_validate(
        {
            "name": "w",
            "steps": [
                {
                    "name": "a",
                    "implementation": "noop",
                    "retryPolicy": {"maxAttempts": 7},
                }
            ],
            "retryPolicy": {"maxAttempts": 2},
            "errorHandling": {"strategy": "continue"},
            "maxParallel": 3,
        }
    )
    assert cfg.retry_policy_for("a").max_attempts == 7
    assert cfg.retry_policy.max_attempts == 2
    assert cfg.error_handling.strategy == "continue"
    assert cfg.max_parallel == 3
    assert set(cfg.model_dump()) >= {"retry_policy", "error_handling", "max_parallel"}


@pytest.mark.parametrize(
    "extra",
    [{"steps": []}, {"name": ""}, {"max_parallel": 0}, {"retries": 3}, {"timeout": -1}],
)
def test_workflow_rejections(extra: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        WorkflowConfig.model_validate(workflow(**extra))


def test_step_lookup_deps_and_retry_policy() -> None:
    cfg = WorkflowConfig.model_validate(
        workflow(
            steps=[
                {"name": "a", "implementation": "noop"},
                {"name": "c", "implementation": "noop"},
                {
                    "name": "b",
                    "implementation": "echo",
                    "dependencies": ["a"],
                    "retry_policy": {"max_attempts": 1},
                },
            ],
            dependencies=[{"step": "b", "depends_on": ["c", "a"]}],
        )
    )
    assert cfg.step("b").implementation == "echo"
    assert cfg.deps("b") == ["a", "c"]
    assert cfg.deps("a") == []
    deps = cfg.dependency_map()
    assert dict(deps) == {"a": (), "c": (), "b": ("a", "c")}
    assert cfg.dependency_map() is deps  # computed once, shared by every execution
    with pytest.raises(TypeError):
        deps["a"] = ("b",)  # type: ignore[index]
    assert cfg.retry_policy_for("b").max_attempts == 1
    assert cfg.retry_policy_for("a") is cfg.retry_policy
    with pytest.raises(UnknownStep, match="nope"):
        cfg.step("nope")


def test_digest_is_canonical() -> None:
    one = WorkflowConfig.model_validate(workflow(timeout=1, retry_policy={"base_delay": "1s"}))
    two = WorkflowConfig.model_validate(
        {
            "retryPolicy": {"baseDelay": 1000},
            "timeout": "60s",
            "steps": workflow()["steps"],
            "name": "w",
        }
    )
    assert one.digest() == two.digest()
    assert len(one.digest()) == 64
    changed = WorkflowConfig.model_validate(workflow(timeout=2))
    assert changed.digest() != one.digest()


def test_workflow_schema_accepts_durations() -> None:
    schema = WorkflowConfig.model_json_schema(by_alias=False)
    timeout = schema["properties"]["timeout"]
    assert {"type": "string"}.items() <= timeout["anyOf"][1].items()


# --- execution records ---------------------------------------------------------------

T0 = 1_700_000_000.25


def record(**extra: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": "e1",
        "workflow_id": "w",
        "workflow_version": "1",
        "status": "running",
        "start_time": T0,
        "end_time": None,
        "current_step": "b",
        "context": {"topic": "x"},
        "results": {
            "a": {
                "status": "succeeded",
                "data": {"n": 1},
                "error": None,
                "attempts": 1,
                "started_at": T0,
                "ended_at": T0 + 1,
            },
            "b": {
                "status": "retry_wait",
                "error": {"type": "TimeoutError", "message": "slow", "retryable": True},
                "attempts": 2,
            },
        },
        "error": None,
        "metrics": {"steps_total": 2, "steps_succeeded": 1, "retries": 1},
        "seq": 9,
        "reason": None,
        "from_the_future": True,
    }
    data.update(extra)
    return data


def test_execution_from_engine_record() -> None:
    ex = WorkflowExecution.model_validate(record())
    assert ex.status is ExecutionStatus.RUNNING
    assert ex.start_time == datetime.fromtimestamp(T0, UTC)
    assert ex.start_time.tzinfo is UTC
    assert ex.results["a"].status is StepStatus.SUCCEEDED
    assert ex.results["a"].ended_at == datetime.fromtimestamp(T0 + 1, UTC)
    assert ex.results["b"].error is not None
    assert ex.results["b"].error.retryable is True
    assert ex.metrics == ExecutionMetrics(steps_total=2, steps_succeeded=1, retries=1)
    assert ex.seq == 9


def test_execution_json_dump_is_iso_and_snake_case() -> None:
    dumped = WorkflowExecution.model_validate(record()).model_dump(mode="json")
    assert dumped["start_time"] == "2023-11-14T22:13:20.250000Z"
    assert dumped["results"]["a"]["started_at"].endswith("Z")
    assert "from_the_future" not in dumped
    assert "workflowId" not in dumped
    assert WorkflowExecution.model_validate(dumped).start_time.timestamp() == T0


def test_execution_camel_case_and_error_forms() -> None:
    ex = WorkflowExecution.model_validate(
        {
            "id": "e",
            "workflowId": "w",
            "status": "failed",
            "startTime": "2024-01-01T00:00:00",
            "endTime": "2024-01-01T02:00:00+02:00",
            "error": "step b failed",
        }
    )
    assert ex.start_time == datetime(2024, 1, 1, tzinfo=UTC)
    assert ex.end_time == datetime(2024, 1, 1, tzinfo=UTC)
    assert ex.end_time is not None
    assert ex.end_time.utcoffset() == timedelta(0)
    assert ex.error == WorkflowErrorInfo(message="step b failed")
    structured = WorkflowErrorInfo.model_validate({"message": "m", "step": "b", "type": "E"})
    assert structured.step == "b"


def test_timestamps_reject_booleans() -> None:
    with pytest.raises(ValidationError, match="boolean"):
        WorkflowExecution.model_validate(record(start_time=True))


@settings(deadline=None)  # no timing assertions: the box may be busy
@given(st.floats(min_value=0, max_value=4e9, allow_nan=False))
def test_epoch_floats_round_trip(ts: float) -> None:
    ex = WorkflowExecution.model_validate(record(start_time=ts))
    assert ex.start_time.timestamp() == pytest.approx(ts, abs=1e-6)
    again = WorkflowExecution.model_validate(ex.model_dump(mode="json"))
    assert again.start_time == ex.start_time


def test_non_utc_datetimes_are_converted() -> None:
    local = datetime(2024, 5, 1, 12, 0, tzinfo=timezone(timedelta(hours=5)))
    result = StepResult(status=StepStatus.RUNNING, started_at=local)
    assert result.started_at == local
    assert result.started_at is not None and result.started_at.tzinfo is UTC


def test_status_record() -> None:
    info = WorkflowStatusInfo.model_validate(
        {
            "id": "e",
            "workflow_id": "w",
            "status": "paused",
            "current_step": None,
            "reason": "operator",
            "seq": 3,
            "progress": {"total": 4, "succeeded": 1, "failed": 0, "skipped": 1, "running": 1},
            "steps": {"a": "succeeded", "b": "running"},
        }
    )
    assert info.progress.running == 1
    assert info.steps["b"] is StepStatus.RUNNING
    with pytest.raises(ValidationError):
        WorkflowStatusInfo.model_validate({"id": "e", "workflow_id": "w", "status": "napping"})


def test_state_and_event() -> None:
    state = WorkflowState.model_validate(
        {
            "executionId": "e",
            "workflowId": "w",
            "step": "a",
            "status": "succeeded",
            "timestamp": T0,
        }
    )
    assert state.metadata == {}
    assert state.timestamp.tzinfo is UTC
    event = WorkflowEvent.model_validate(
        {"seq": 1, "type": "workflow.started", "execution_id": "e", "timestamp": T0, "data": {}}
    )
    assert event.id is None
    assert event.metadata == {}
    assert event.model_dump(mode="json")["timestamp"].startswith("2023-11-14T22:13:20.25")


def test_filter() -> None:
    assert WorkflowFilter().offset == 0
    single = WorkflowFilter.model_validate({"status": "running", "workflowId": "w", "limit": 5})
    assert single.status == [ExecutionStatus.RUNNING]
    assert single.workflow_id == "w"
    assert WorkflowFilter(status=["failed", "aborted"]).status == [
        ExecutionStatus.FAILED,
        ExecutionStatus.ABORTED,
    ]
    for bad in ({"offset": -1}, {"limit": -2}, {"status": ["sleeping"]}):
        with pytest.raises(ValidationError):
            WorkflowFilter.model_validate(bad)
