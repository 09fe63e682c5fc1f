"""tamma_actors: a workflow orchestration engine built as a supervised actor runtime.

Each execution is a supervisor actor on a shared dispatcher pool; steps run in worker
processes reached over ZeroMQ; state and events are committed to LMDB before anything
moves on. Run a node with ``tamma-node run``, talk to it with :class:`Client` or ``tamma``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tamma_actors._client import Client
    from tamma_actors._config import NodeConfig, load_node_config
    from tamma_actors._embedded import WorkflowEngine
    from tamma_actors._errors import (
        ActorStopped,
        CodecError,
        ConfigError,
        ExecutionExists,
        ExpressionError,
        Forbidden,
        FrameTooLarge,
        IllegalTransition,
        InvalidRequest,
        Problem,
        ProtocolError,
        RemoteError,
        RequestTimeout,
        RestartIntensityExceeded,
        ShuttingDown,
        StoreClosed,
        StoreCorrupted,
        StoreError,
        StoreFull,
        StoreUnwritable,
        StoreWriterLost,
        SubflowTooDeep,
        SupervisionError,
        TammaError,
        TransportError,
        UnknownExecution,
        UnknownImplementation,
        UnknownStep,
        WorkflowError,
        WorkflowValidationError,
    )
    from tamma_actors._models import (
        ErrorHandlingPolicy,
        ExecutionMetrics,
        RetryPolicy,
        StepDependency,
        StepResult,
        WorkflowConfig,
        WorkflowEvent,
        WorkflowExecution,
        WorkflowFilter,
        WorkflowState,
        WorkflowStep,
        WorkflowSummary,
    )
    from tamma_actors._status import ExecutionStatus, StepStatus
    from tamma_actors._step_api import (
        NonRetryable,
        RetryAfter,
        StepCancelled,
        StepContext,
        StepFailure,
        cpu_bound_step,
        inline_step,
    )
    from tamma_actors._workflow_file import load_workflow, parse_workflow

# Public names load on first use, so a worker process that imports only
# tamma_actors._worker does not pay for pydantic, rich or the client.
_LAZY = {
    "ActorStopped": "tamma_actors._errors",
    "Client": "tamma_actors._client",
    "CodecError": "tamma_actors._errors",
    "ConfigError": "tamma_actors._errors",
    "ExecutionExists": "tamma_actors._errors",
    "ErrorHandlingPolicy": "tamma_actors._models",
    "ExecutionMetrics": "tamma_actors._models",
    "ExecutionStatus": "tamma_actors._status",
    "ExpressionError": "tamma_actors._errors",
    "Forbidden": "tamma_actors._errors",
    "FrameTooLarge": "tamma_actors._errors",
    "IllegalTransition": "tamma_actors._errors",
    "InvalidRequest": "tamma_actors._errors",
    "NodeConfig": "tamma_actors._config",
    "NonRetryable": "tamma_actors._step_api",
    "Problem": "tamma_actors._errors",
    "ProtocolError": "tamma_actors._errors",
    "RemoteError": "tamma_actors._errors",
    "RequestTimeout": "tamma_actors._errors",
    "RestartIntensityExceeded": "tamma_actors._errors",
    "ShuttingDown": "tamma_actors._errors",
    "RetryAfter": "tamma_actors._step_api",
    "RetryPolicy": "tamma_actors._models",
    "StepCancelled": "tamma_actors._step_api",
    "StepContext": "tamma_actors._step_api",
    "StepDependency": "tamma_actors._models",
    "StepFailure": "tamma_actors._step_api",
    "StepResult": "tamma_actors._models",
    "StepStatus": "tamma_actors._status",
    "StoreClosed": "tamma_actors._errors",
    "StoreCorrupted": "tamma_actors._errors",
    "StoreError": "tamma_actors._errors",
    "StoreFull": "tamma_actors._errors",
    "StoreUnwritable": "tamma_actors._errors",
    "StoreWriterLost": "tamma_actors._errors",
    "SubflowTooDeep": "tamma_actors._errors",
    "SupervisionError": "tamma_actors._errors",
    "TammaError": "tamma_actors._errors",
    "TransportError": "tamma_actors._errors",
    "UnknownExecution": "tamma_actors._errors",
    "UnknownImplementation": "tamma_actors._errors",
    "UnknownStep": "tamma_actors._errors",
    "WorkflowConfig": "tamma_actors._models",
    "WorkflowEngine": "tamma_actors._embedded",
    "WorkflowError": "tamma_actors._errors",
    "WorkflowEvent": "tamma_actors._models",
    "WorkflowExecution": "tamma_actors._models",
    "WorkflowFilter": "tamma_actors._models",
    "WorkflowState": "tamma_actors._models",
    "WorkflowStep": "tamma_actors._models",
    "WorkflowSummary": "tamma_actors._models",
    "WorkflowValidationError": "tamma_actors._errors",
    "cpu_bound_step": "tamma_actors._step_api",
    "inline_step": "tamma_actors._step_api",
    "load_node_config": "tamma_actors._config",
    "load_workflow": "tamma_actors._workflow_file",
    "parse_workflow": "tamma_actors._workflow_file",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tamma_actors' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
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
]

__version__ = "0.1.0"
