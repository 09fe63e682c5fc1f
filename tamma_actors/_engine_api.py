"""The engine as the control server sees it: every call returns a future.

The coordinator's engine implements :class:`AsyncEngine`; the control server turns wire
requests into these calls and sends the reply when the future completes, which happens only
after the state the reply describes has been committed. Results are plain msgpack-able
values (dicts, lists, str, numbers); timestamps are float seconds since the epoch.

An execution record (``start_workflow``, ``get_workflow``, ``list_workflows`` items)::

    {"id", "workflow_id", "workflow_version", "status", "start_time", "end_time",
     "current_step", "context", "results": {step: {"status", "data", "error", "attempts",
     "started_at", "ended_at"}}, "error", "metrics", "seq", "reason"}

A summary (``list_workflows(view="summary")`` items; what the store keeps for listing)::

    {"id", "workflow_id", "status", "start_time", "end_time", "current_step", "seq"}

A status record (``get_workflow_status``)::

    {"id", "workflow_id", "status", "current_step", "reason", "seq",
     "progress": {"total", "succeeded", "failed", "skipped", "running"},
     "steps": {step: status}, "waiting": {step: what holds it},
     "compensations": [{"step", "implementation", "status"}]}

An event (``get_events``)::

    {"seq", "type", "execution_id", "timestamp", "data"}
"""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any, Protocol

__all__ = ["AsyncEngine", "ExecutionRecord"]

ExecutionRecord = dict[str, Any]


class AsyncEngine(Protocol):
    """What the control server needs from the engine. Failures are TammaError futures."""

    def start_workflow(
        self,
        definition: dict[str, Any],
        inputs: dict[str, Any],
        *,
        source: str | None = None,
        requested_id: str | None = None,
    ) -> Future[ExecutionRecord]:
        """Validate ``definition`` (a parsed workflow file) and start it; resolves after the
        start is durable, with the execution record (status ``pending`` or later). With
        ``requested_id`` the execution gets that id, once: the same start again resolves
        with that execution's record, another one under that id fails (ExecutionExists)."""
        ...

    def pause_workflow(self, execution_id: str) -> Future[ExecutionRecord]: ...

    def resume_workflow(self, execution_id: str) -> Future[ExecutionRecord]: ...

    def abort_workflow(
        self, execution_id: str, reason: str | None = None
    ) -> Future[ExecutionRecord]: ...

    def get_workflow(self, execution_id: str) -> Future[ExecutionRecord]: ...

    def list_workflows(
        self,
        *,
        status: list[str] | None = None,
        workflow_id: str | None = None,
        limit: int | None = None,
        offset: int = 0,
        most: int | None = None,
        view: str = "record",
    ) -> Future[list[ExecutionRecord]]: ...

    def get_workflow_status(self, execution_id: str) -> Future[dict[str, Any]]: ...

    def retry_step(self, execution_id: str, step: str) -> Future[ExecutionRecord]: ...

    def execute_step(
        self, execution_id: str, step: str, context: Any = None, *, timeout: float = 300.0
    ) -> Future[dict[str, Any]]:
        """Run one step once on a worker with ``context`` as its input, outside the
        execution's schedule; resolves with a step result (``status``, ``data``,
        ``error``, ``attempts``, ``started_at``, ``ended_at``, ``duration_ms``, ``worker``)."""
        ...

    def get_events(
        self,
        execution_id: str,
        from_seq: int = 0,
        limit: int | None = None,
        most: int | None = None,
    ) -> Future[list[dict[str, Any]]]: ...

    def wait(self, execution_id: str, timeout: float | None = None) -> Future[ExecutionRecord]:
        """Resolves with the record once the execution is terminal, or at ``timeout``
        with its current record (the caller looks at ``status``)."""
        ...

    def health(self) -> Future[dict[str, Any]]: ...

    def explain(self, execution_id: str) -> Future[dict[str, Any]]:
        """Why the execution is where it is: ``{"id", "status", "summary", "since",
        "steps": {name: {"status", "waiting_for", "attempts"}}, ...}`` (unfinished steps)."""
        ...

    # -- administration (admin role) --

    def admin_verify(self) -> Future[dict[str, Any]]:
        """Check the whole store: ``{"ok", "executions", "events", "problems": [str]}``."""
        ...

    def admin_backup(self, dest: str) -> Future[dict[str, Any]]:
        """A consistent compacted copy into the new directory ``dest`` (absolute, on the
        node's machine): ``{"path", "bytes", "verify"}``."""
        ...

    def admin_cleanup(self, older_than_days: float) -> Future[dict[str, Any]]:
        """Delete terminal executions that ended more than N days ago: ``{"deleted", "cutoff"}``."""
        ...
