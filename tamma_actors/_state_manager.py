"""The story's ``IWorkflowStateManager``: WorkflowState records over a Store (sync API).

Each saved state is appended to the execution's ``history`` records; the current state is
the latest of them. Writes go through the StoreWriter (so they share its group commit) and
a call returns only once its write is committed. Reads go straight to the store.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pydantic

from tamma_actors._errors import (
    IllegalTransition,
    StoreCorrupted,
    StoreError,
    UnknownExecution,
    WorkflowError,
)
from tamma_actors._models import WorkflowState
from tamma_actors._status import TERMINAL_EXECUTION, check_execution_transition
from tamma_actors._store import Store, Write
from tamma_actors._writer import QueuedWriter

__all__ = ["StateFilter", "WorkflowStateManager"]

_DAY = 86400.0
_TERMINAL = frozenset(str(s) for s in TERMINAL_EXECUTION)


@dataclass(frozen=True, slots=True)
class StateFilter:
    """Which current states ``list_states`` returns (every field optional)."""

    status: Sequence[str] | None = None
    workflow_id: str | None = None
    limit: int | None = None

    def accepts(self, state: WorkflowState) -> bool:
        return (self.status is None or state.status in self.status) and (
            self.workflow_id is None or state.workflow_id == self.workflow_id
        )


def _to_record(state: WorkflowState) -> dict[str, Any]:
    record = state.model_dump()
    record["timestamp"] = state.timestamp.timestamp()  # epoch seconds, as every record
    return record


def _to_state(eid: str, record: Mapping[str, Any]) -> WorkflowState:
    try:
        return WorkflowState.model_validate(record)
    except pydantic.ValidationError as exc:
        raise StoreCorrupted(f"a history record of {eid} is not a WorkflowState: {exc}") from exc


class WorkflowStateManager:
    """``IWorkflowStateManager`` over ``store`` (reads) and ``writer`` (commits)."""

    def __init__(
        self,
        store: Store,
        writer: QueuedWriter,
        *,
        clock: Callable[[], float] = time.time,
        commit_timeout: float = 30.0,
    ) -> None:
        self._store = store
        self._writer = writer
        self._clock = clock
        self._timeout = commit_timeout
        self._transitions = threading.Lock()  # check-then-write must not interleave

    def _commit(self, write: Write) -> None:
        committed: Future[None] = Future()

        def done(exc: BaseException | None) -> None:
            if exc is None:
                committed.set_result(None)
            else:
                committed.set_exception(exc)

        self._writer.submit(write, done)
        try:
            committed.result(timeout=self._timeout)
        except FutureTimeout as exc:
            raise StoreError(
                f"{write.execution_id}: not committed within {self._timeout}s"
            ) from exc

    def save_state(self, execution_id: str, state: WorkflowState) -> None:
        """Append ``state`` to the execution's history; it becomes the current state."""
        if state.execution_id != execution_id:
            raise WorkflowError(
                f"state of execution {state.execution_id!r} saved under {execution_id!r}"
            )
        self._commit(Write(execution_id, history=[_to_record(state)]))

    def load_state(self, execution_id: str) -> WorkflowState | None:
        record = self._store.last_history(execution_id)
        return None if record is None else _to_state(execution_id, record)

    def delete_state(self, execution_id: str) -> None:
        """Remove every record of the execution (states, summary, events, snapshot)."""
        self._commit(Write(execution_id, delete=True))

    def _current_states(self) -> Iterator[WorkflowState]:
        for eid, record in self._store.iter_last_history():
            yield _to_state(eid, record)

    def list_states(self, filter: StateFilter | None = None) -> list[WorkflowState]:
        """Current states in execution-id order (which is creation order)."""
        wanted = filter or StateFilter()
        found: list[WorkflowState] = []
        if wanted.limit is not None and wanted.limit <= 0:
            return found
        for state in self._current_states():
            if wanted.accepts(state):
                found.append(state)
                if len(found) == wanted.limit:
                    break
        return found

    def get_state_history(self, execution_id: str) -> list[WorkflowState]:
        return [_to_state(execution_id, r) for r in self._store.read_history(execution_id)]

    def transition_state(
        self,
        execution_id: str,
        from_status: str,
        to_status: str,
        context: Mapping[str, Any] | None = None,
    ) -> WorkflowState:
        """Move the current state ``from_status -> to_status`` (merging ``context``).

        Raises UnknownExecution without a state, IllegalTransition when ``from_status`` is
        not the current status or the table forbids the change; nothing is written then.
        """
        with self._transitions:
            current = self.load_state(execution_id)
            if current is None:
                raise UnknownExecution(f"no state saved for execution {execution_id}")
            if current.status != str(from_status):
                raise IllegalTransition(
                    f"execution {execution_id} is {current.status}, not {from_status}"
                )
            check_execution_transition(from_status, to_status)
            new = current.model_copy(
                update={
                    "status": str(to_status),
                    "context": {**current.context, **(context or {})},
                    "timestamp": datetime.fromtimestamp(self._clock(), UTC),
                }
            )
            self._commit(Write(execution_id, history=[_to_record(new)]))
            return new

    def cleanup_expired_states(self, retention_days: float) -> int:
        """Remove terminal executions older than the retention; how many were removed."""
        cutoff = self._clock() - retention_days * _DAY
        self._writer.flush(timeout=self._timeout)  # retention sees every acknowledged write
        removed = set(self._store.delete_terminal_before(cutoff, _TERMINAL))
        expired = [
            state.execution_id
            for state in self._current_states()
            if state.status in _TERMINAL and state.timestamp.timestamp() < cutoff
        ]
        for eid in expired:
            self._commit(Write(eid, delete=True))
        return len(removed | set(expired))
