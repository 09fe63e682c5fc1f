"""The public surface is pinned: adding or removing a name is a deliberate change."""

from __future__ import annotations

import subprocess
import sys

import pytest

import tamma_actors

PUBLIC = {
    "ActorStopped",
    "Client",
    "CodecError",
    "ConfigError",
    "ErrorHandlingPolicy",
    "ExecutionExists",
    "ExecutionMetrics",
    "ExecutionStatus",
    "ExpressionError",
    "Forbidden",
    "FrameTooLarge",
    "IllegalTransition",
    "InvalidRequest",
    "NodeConfig",
    "NonRetryable",
    "Problem",
    "ProtocolError",
    "RemoteError",
    "RequestTimeout",
    "RestartIntensityExceeded",
    "RetryAfter",
    "RetryPolicy",
    "ShuttingDown",
    "StepCancelled",
    "StepContext",
    "StepDependency",
    "StepFailure",
    "StepResult",
    "StepStatus",
    "StoreClosed",
    "StoreCorrupted",
    "StoreError",
    "StoreFull",
    "StoreUnwritable",
    "StoreWriterLost",
    "SubflowTooDeep",
    "SupervisionError",
    "TammaError",
    "TransportError",
    "UnknownExecution",
    "UnknownImplementation",
    "UnknownStep",
    "WorkflowConfig",
    "WorkflowEngine",
    "WorkflowError",
    "WorkflowEvent",
    "WorkflowExecution",
    "WorkflowFilter",
    "WorkflowState",
    "WorkflowStep",
    "WorkflowSummary",
    "WorkflowValidationError",
    "cpu_bound_step",
    "inline_step",
    "load_node_config",
    "load_workflow",
    "parse_workflow",
}


def test_all_is_pinned_and_every_name_resolves() -> None:
    assert set(tamma_actors.__all__) == PUBLIC
    for name in PUBLIC:
        assert getattr(tamma_actors, name) is not None
    assert sorted(dir(tamma_actors)) == sorted(PUBLIC)


def test_unknown_attributes_raise_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        tamma_actors.nope  # noqa: B018


def test_every_error_derives_from_the_root() -> None:
    errors = [
        getattr(tamma_actors, n)
        for n in PUBLIC
        if n.endswith(
            (
                "Error",
                "Full",
                "Closed",
                "Corrupted",
                "Exceeded",
                "Transition",
                "Timeout",
                "Forbidden",
                "Stopped",
                "TooLarge",
            )
        )
    ]
    errors += [
        tamma_actors.UnknownExecution,
        tamma_actors.UnknownStep,
        tamma_actors.UnknownImplementation,
    ]
    assert all(issubclass(e, tamma_actors.TammaError) for e in errors)


def test_worker_import_stays_light() -> None:
    code = (
        "import sys, tamma_actors._worker; "
        "print(sorted(m for m in ('pydantic', 'rich', 'yaml') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"
