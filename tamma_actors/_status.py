"""Execution and step statuses and the one table of legal transitions between them.

Every status change in the engine goes through :func:`check_execution_transition` or
:func:`check_step_transition`; an illegal change raises :class:`IllegalTransition` and is
never applied.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType
from typing import TypeVar

from tamma_actors._errors import IllegalTransition

__all__ = [
    "EXECUTION_TRANSITIONS",
    "MANUAL_RETRY_STEP",
    "STEP_TRANSITIONS",
    "TERMINAL_EXECUTION",
    "TERMINAL_STEP",
    "TERMINAL_STEP_VALUES",
    "ExecutionStatus",
    "StepStatus",
    "check_execution_transition",
    "check_step_transition",
    "is_terminal",
    "is_terminal_execution",
    "is_terminal_step",
]


class ExecutionStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    FAILED = "failed"
    ABORTED = "aborted"


class StepStatus(StrEnum):
    PENDING = "pending"
    READY = "ready"
    DISPATCHED = "dispatched"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"
    RETRY_WAIT = "retry_wait"
    TIMED_OUT = "timed_out"


_T = TypeVar("_T", ExecutionStatus, StepStatus)
_E = ExecutionStatus
_S = StepStatus

EXECUTION_TRANSITIONS: Mapping[ExecutionStatus, frozenset[ExecutionStatus]] = MappingProxyType(
    {
        _E.PENDING: frozenset({_E.RUNNING, _E.ABORTED, _E.FAILED}),
        _E.RUNNING: frozenset({_E.PAUSED, _E.COMPLETED, _E.FAILED, _E.ABORTED}),
        _E.PAUSED: frozenset({_E.RUNNING, _E.ABORTED}),
        # A manual retry_step revives a failed execution.
        _E.FAILED: frozenset({_E.RUNNING}),
        _E.COMPLETED: frozenset(),
        _E.ABORTED: frozenset(),
    }
)

STEP_TRANSITIONS: Mapping[StepStatus, frozenset[StepStatus]] = MappingProxyType(
    {
        _S.PENDING: frozenset({_S.READY, _S.SKIPPED, _S.CANCELLED}),
        _S.READY: frozenset({_S.DISPATCHED, _S.SKIPPED, _S.CANCELLED}),
        # A result may arrive before the worker's "started" notice, and a dispatched step
        # goes back to ready when its worker dies before starting it.
        _S.DISPATCHED: frozenset(
            {
                _S.RUNNING,
                _S.READY,
                _S.SUCCEEDED,
                _S.FAILED,
                _S.RETRY_WAIT,
                _S.TIMED_OUT,
                _S.CANCELLED,
            }
        ),
        _S.RUNNING: frozenset(
            {_S.SUCCEEDED, _S.FAILED, _S.RETRY_WAIT, _S.TIMED_OUT, _S.CANCELLED, _S.READY}
        ),
        _S.RETRY_WAIT: frozenset({_S.READY, _S.CANCELLED}),
        _S.TIMED_OUT: frozenset({_S.RETRY_WAIT, _S.FAILED}),
        # Manual retry (retry_step) re-arms failed and cancelled steps.
        _S.FAILED: frozenset({_S.READY}),
        _S.CANCELLED: frozenset({_S.READY}),
        _S.SKIPPED: frozenset(),
        _S.SUCCEEDED: frozenset(),
    }
)

TERMINAL_EXECUTION: frozenset[ExecutionStatus] = frozenset({_E.COMPLETED, _E.FAILED, _E.ABORTED})
TERMINAL_STEP: frozenset[StepStatus] = frozenset(
    {_S.SUCCEEDED, _S.FAILED, _S.SKIPPED, _S.CANCELLED}
)
# The same, as the plain strings the execution state holds (its hot paths compare those).
TERMINAL_STEP_VALUES: frozenset[str] = frozenset(s.value for s in TERMINAL_STEP)
# The only exits from a terminal step: an operator's retry_step.
MANUAL_RETRY_STEP: frozenset[StepStatus] = frozenset({_S.FAILED, _S.CANCELLED})


def _pairs(table: Mapping[_T, frozenset[_T]]) -> frozenset[tuple[str, str]]:
    # Status members are str (StrEnum: same hash, equal to their value), so a plain string
    # and a member look up the same pair; anything that is not a status finds none.
    return frozenset((src.value, dst.value) for src, dsts in table.items() for dst in dsts)


_EXECUTION_PAIRS = _pairs(EXECUTION_TRANSITIONS)
_STEP_PAIRS = _pairs(STEP_TRANSITIONS)


def check_execution_transition(src: ExecutionStatus | str, dst: ExecutionStatus | str) -> None:
    """Raise :class:`IllegalTransition` unless the table allows ``src -> dst``.

    Plain strings are accepted (records carry status values); an unknown status is an
    illegal transition too.
    """
    if (src, dst) not in _EXECUTION_PAIRS:
        raise IllegalTransition(f"execution cannot go from {src!s} to {dst!s}")


def check_step_transition(src: StepStatus | str, dst: StepStatus | str, step: str = "") -> None:
    """Raise :class:`IllegalTransition` unless the table allows ``src -> dst`` for a step."""
    if (src, dst) not in _STEP_PAIRS:
        which = f"step {step!r}" if step else "step"
        raise IllegalTransition(f"{which} cannot go from {src!s} to {dst!s}")


def is_terminal_execution(status: ExecutionStatus | str) -> bool:
    return ExecutionStatus(status) in TERMINAL_EXECUTION


def is_terminal_step(status: StepStatus | str) -> bool:
    return StepStatus(status) in TERMINAL_STEP


def is_terminal(status: ExecutionStatus | StepStatus) -> bool:
    """Whether ``status`` ends its life cycle (short of a manual retry)."""
    if isinstance(status, ExecutionStatus):
        return status in TERMINAL_EXECUTION
    return status in TERMINAL_STEP
