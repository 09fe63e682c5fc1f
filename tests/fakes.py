"""Test twins shared by the suites.

:class:`FakeEngine` is an in-memory :class:`~tamma_actors._engine_api.AsyncEngine`: it keeps
execution records in a dict, applies the real transition table of ``_status`` (an illegal
change fails the future with ``IllegalTransition`` and changes nothing), numbers events
gap-free from 1, and resolves ``wait`` futures when an execution ends or its timeout
passes. Steps do not run by themselves: a test drives them with :meth:`FakeEngine.run_step`,
:meth:`FakeEngine.complete_step` and :meth:`FakeEngine.fail_step`.
"""

from __future__ import annotations

import copy
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Self, TypeVar

from tamma_actors._engine_api import ExecutionRecord
from tamma_actors._engine_reads import SUMMARY_KEYS
from tamma_actors._errors import (
    FrameTooLarge,
    Problem,
    UnknownExecution,
    UnknownStep,
    WorkflowValidationError,
)
from tamma_actors._status import (
    ExecutionStatus,
    StepStatus,
    check_execution_transition,
    check_step_transition,
    is_terminal_execution,
)

__all__ = ["FakeEngine", "validate_definition"]

T = TypeVar("T")
_E = ExecutionStatus
_S = StepStatus


def validate_definition(definition: dict[str, Any]) -> list[Problem]:
    """A small stand-in for the real validator: names, steps, unique names, known deps."""
    problems: list[Problem] = []
    if not isinstance(definition.get("name"), str) or not definition.get("name"):
        problems.append(Problem("name", "a workflow needs a name"))
    steps = definition.get("steps")
    if not isinstance(steps, list) or not steps:
        problems.append(Problem("steps", "a workflow needs at least one step"))
        return problems
    names: list[str] = []
    for i, step in enumerate(steps):
        name = step.get("name") if isinstance(step, dict) else None
        if not isinstance(name, str) or not name:
            problems.append(Problem(f"steps.{i}.name", "a step needs a name"))
        elif name in names:
            problems.append(Problem(f"steps.{i}.name", f"duplicate step name {name!r}"))
        else:
            names.append(name)
    for i, step in enumerate(steps):
        deps = step.get("dependencies", []) if isinstance(step, dict) else []
        for dep in deps if isinstance(deps, list) else []:
            if dep not in names:
                problems.append(Problem(f"steps.{i}.dependencies", f"unknown step {dep!r}"))
    return problems


class FakeEngine:
    """In-memory AsyncEngine with real status transitions (thread-safe)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._called = threading.Condition(self._lock)
        self._records: dict[str, ExecutionRecord] = {}
        self._events: dict[str, list[dict[str, Any]]] = {}
        self._waiters: dict[str, list[Future[ExecutionRecord]]] = {}
        self._timers: set[threading.Timer] = set()
        self._injected: dict[str, tuple[BaseException, bool]] = {}
        self._closed = False
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    # -- life cycle ---------------------------------------------------------------------

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Cancel wait timers and pending waiters (idempotent)."""
        with self._lock:
            self._closed = True
            timers, self._timers = self._timers, set()
            waiters = [f for fs in self._waiters.values() for f in fs]
            self._waiters.clear()
        for timer in timers:
            timer.cancel()
            timer.join(timeout=5)
        for fut in waiters:
            fut.cancel()

    def wait_for_call(self, method: str, count: int = 1, timeout: float = 10.0) -> None:
        """Block until ``method`` has been called ``count`` times (AssertionError on timeout)."""
        with self._called:
            done = self._called.wait_for(
                lambda: sum(name == method for name, _ in self.calls) >= count, timeout
            )
        assert done, f"{method} was not called {count} time(s) within {timeout}s"

    def inject_failure(self, method: str, exc: BaseException, *, synchronous: bool = False) -> None:
        """Make the next call of ``method`` fail with ``exc`` (raised if ``synchronous``)."""
        with self._lock:
            self._injected[method] = (exc, synchronous)

    # -- AsyncEngine ----------------------------------------------------------------------

    def start_workflow(
        self,
        definition: dict[str, Any],
        inputs: dict[str, Any],
        *,
        source: str | None = None,
        requested_id: str | None = None,
    ) -> Future[ExecutionRecord]:
        def start() -> ExecutionRecord:
            problems = validate_definition(definition)
            if problems:
                raise WorkflowValidationError(problems, source)
            now = self._clock()
            eid = requested_id or f"ex-{uuid.uuid4().hex[:12]}"
            steps = [s["name"] for s in definition["steps"]]
            self._records[eid] = {
                "id": eid,
                "workflow_id": definition["name"],
                "workflow_version": str(definition.get("version", "1")),
                "status": _E.PENDING.value,
                "start_time": now,
                "end_time": None,
                "current_step": None,
                "context": {"inputs": dict(inputs), "source": source},
                "results": {name: self._new_result() for name in steps},
                "error": None,
                "metrics": {
                    "steps_total": len(steps),
                    "steps_succeeded": 0,
                    "steps_failed": 0,
                    "retries": 0,
                },
                "seq": 0,
                "reason": None,
            }
            self._events[eid] = []
            self._emit(eid, "workflow.created", {"workflow_id": definition["name"]})
            self._transition(eid, _E.RUNNING, "workflow.started")
            return self._records[eid]

        return self._call("start_workflow", (definition, inputs, source), start)

    def pause_workflow(self, execution_id: str) -> Future[ExecutionRecord]:
        return self._call(
            "pause_workflow",
            (execution_id,),
            lambda: self._transition(execution_id, _E.PAUSED, "workflow.paused"),
        )

    def resume_workflow(self, execution_id: str) -> Future[ExecutionRecord]:
        return self._call(
            "resume_workflow",
            (execution_id,),
            lambda: self._transition(execution_id, _E.RUNNING, "workflow.resumed"),
        )

    def abort_workflow(
        self, execution_id: str, reason: str | None = None
    ) -> Future[ExecutionRecord]:
        def abort() -> ExecutionRecord:
            return self._transition(
                execution_id, _E.ABORTED, "workflow.aborted", reason=reason or "aborted"
            )

        return self._call("abort_workflow", (execution_id, reason), abort)

    def get_workflow(self, execution_id: str) -> Future[ExecutionRecord]:
        return self._call("get_workflow", (execution_id,), lambda: self._get(execution_id))

    def list_workflows(
        self,
        *,
        status: list[str] | None = None,
        workflow_id: str | None = None,
        limit: int | None = None,
        offset: int = 0,
        most: int | None = None,
        view: str = "record",
    ) -> Future[list[ExecutionRecord]]:
        def select() -> list[ExecutionRecord]:
            found = [
                r
                for r in sorted(self._records.values(), key=lambda r: (r["start_time"], r["id"]))
                if (status is None or r["status"] in status)
                and (workflow_id is None or r["workflow_id"] == workflow_id)
            ]
            end = None if limit is None else offset + limit
            if most is not None and len(found[offset:end]) > most:
                raise FrameTooLarge(f"more than {most} executions match")
            if view == "summary":
                return [{k: r.get(k) for k in SUMMARY_KEYS} for r in found[offset:end]]
            return found[offset:end]

        return self._call("list_workflows", (status, workflow_id, limit, offset, view), select)

    def get_workflow_status(self, execution_id: str) -> Future[dict[str, Any]]:
        def status() -> dict[str, Any]:
            rec = self._get(execution_id)
            steps = {name: r["status"] for name, r in rec["results"].items()}
            counts = list(steps.values())
            return {
                "id": rec["id"],
                "workflow_id": rec["workflow_id"],
                "status": rec["status"],
                "current_step": rec["current_step"],
                "reason": rec["reason"],
                "seq": rec["seq"],
                "progress": {
                    "total": len(counts),
                    "succeeded": counts.count(_S.SUCCEEDED),
                    "failed": counts.count(_S.FAILED),
                    "skipped": counts.count(_S.SKIPPED),
                    "running": counts.count(_S.RUNNING),
                },
                "steps": steps,
            }

        return self._call("get_workflow_status", (execution_id,), status)

    def retry_step(self, execution_id: str, step: str) -> Future[ExecutionRecord]:
        def retry() -> ExecutionRecord:
            rec = self._get(execution_id)
            result = self._step(rec, step)
            check_step_transition(result["status"], _S.READY, step)
            if rec["status"] == _E.FAILED:
                check_execution_transition(rec["status"], _E.RUNNING)
                rec["status"] = _E.RUNNING.value
                rec["end_time"] = None
                rec["error"] = None
            result.update(status=_S.READY.value, error=None)
            rec["metrics"]["retries"] += 1
            self._emit(execution_id, "step.retried", {"step": step})
            return rec

        return self._call("retry_step", (execution_id, step), retry)

    def execute_step(
        self, execution_id: str, step: str, context: Any = None, *, timeout: float = 300.0
    ) -> Future[dict[str, Any]]:
        """Runs every step as ``noop``: its output is the context it was given."""

        def execute() -> dict[str, Any]:
            self._step(self._get(execution_id), step)
            now = self._clock()
            return {
                "step": step,
                "status": _S.SUCCEEDED.value,
                "data": context,
                "error": None,
                "attempts": 1,
                "started_at": now,
                "ended_at": now,
                "duration_ms": 0.0,
            }

        return self._call("execute_step", (execution_id, step, context, timeout), execute)

    def get_events(
        self,
        execution_id: str,
        from_seq: int = 0,
        limit: int | None = None,
        most: int | None = None,
    ) -> Future[list[dict[str, Any]]]:
        def events() -> list[dict[str, Any]]:
            self._get(execution_id)
            found = [e for e in self._events[execution_id] if e["seq"] >= from_seq]
            if limit is None and most is not None and len(found) > most:
                raise FrameTooLarge(f"more than {most} events from there on")
            return found if limit is None else found[:limit]

        return self._call("get_events", (execution_id, from_seq, limit), events)

    def wait(self, execution_id: str, timeout: float | None = None) -> Future[ExecutionRecord]:
        fut: Future[ExecutionRecord] = Future()
        injected = self._injected_for("wait", (execution_id, timeout))
        try:
            with self._lock:
                if injected is not None:
                    raise injected
                rec = self._get(execution_id)
                if not is_terminal_execution(rec["status"]):
                    self._waiters.setdefault(execution_id, []).append(fut)
                    if timeout is not None:
                        self._arm_wait_timer(execution_id, fut, timeout)
                    return fut
                snapshot = copy.deepcopy(rec)
        except Exception as exc:
            fut.set_exception(exc)
            return fut
        fut.set_result(snapshot)
        return fut

    def explain(self, execution_id: str) -> Future[dict[str, Any]]:
        def explain() -> dict[str, Any]:
            rec = self._get(execution_id)
            return {"id": execution_id, "status": rec["status"], "summary": rec["status"]}

        return self._call("explain", (execution_id,), explain)

    def health(self) -> Future[dict[str, Any]]:
        def health() -> dict[str, Any]:
            live = sum(not is_terminal_execution(r["status"]) for r in self._records.values())
            return {"status": "ok", "executions": len(self._records), "live": live}

        return self._call("health", (), health)

    # -- test drivers -----------------------------------------------------------------------

    def run_step(self, execution_id: str, step: str) -> ExecutionRecord:
        """Move a step through ready/dispatched to running."""
        with self._lock:
            rec = self._get(execution_id)
            result = self._step(rec, step)
            for dst in (_S.READY, _S.DISPATCHED, _S.RUNNING):
                if result["status"] == _S.READY and dst == _S.READY:
                    continue
                check_step_transition(result["status"], dst, step)
                result["status"] = dst.value
            result["attempts"] += 1
            result["started_at"] = self._clock()
            rec["current_step"] = step
            self._emit(execution_id, "step.started", {"step": step, "attempt": result["attempts"]})
            return copy.deepcopy(rec)

    def complete_step(self, execution_id: str, step: str, data: Any = None) -> ExecutionRecord:
        """A running step succeeds; the execution completes when every step has."""
        return self._finish_step(execution_id, step, _S.SUCCEEDED, data=data)

    def fail_step(self, execution_id: str, step: str, error: str = "boom") -> ExecutionRecord:
        """A running step fails; the execution fails (fail_fast)."""
        return self._finish_step(execution_id, step, _S.FAILED, error=error)

    # -- internals ------------------------------------------------------------------------

    @staticmethod
    def _new_result() -> dict[str, Any]:
        return {
            "status": _S.PENDING.value,
            "data": None,
            "error": None,
            "attempts": 0,
            "started_at": None,
            "ended_at": None,
        }

    def _call(self, method: str, args: tuple[Any, ...], fn: Callable[[], T]) -> Future[T]:
        fut: Future[T] = Future()
        injected = self._injected_for(method, args)
        try:
            with self._lock:
                if injected is not None:
                    raise injected
                value = copy.deepcopy(fn())
        except Exception as exc:
            fut.set_exception(exc)
        else:
            fut.set_result(value)
        return fut

    def _injected_for(self, method: str, args: tuple[Any, ...]) -> BaseException | None:
        """Record the call; raise a synchronous injected failure, return an async one."""
        with self._lock:
            self.calls.append((method, args))
            self._called.notify_all()
            injected = self._injected.pop(method, None)
        if injected is None:
            return None
        exc, synchronous = injected
        if synchronous:
            raise exc
        return exc

    def _get(self, execution_id: str) -> ExecutionRecord:
        rec = self._records.get(execution_id)
        if rec is None:
            raise UnknownExecution(f"no execution {execution_id!r}")
        return rec

    @staticmethod
    def _step(rec: ExecutionRecord, step: str) -> dict[str, Any]:
        result = rec["results"].get(step)
        if result is None:
            raise UnknownStep(f"execution {rec['id']!r} has no step {step!r}")
        return result  # type: ignore[no-any-return]

    def _emit(self, execution_id: str, kind: str, data: dict[str, Any]) -> None:
        rec = self._records[execution_id]
        rec["seq"] += 1
        self._events[execution_id].append(
            {
                "seq": rec["seq"],
                "type": kind,
                "execution_id": execution_id,
                "timestamp": self._clock(),
                "data": data,
            }
        )

    def _transition(
        self, execution_id: str, dst: ExecutionStatus, event: str, reason: str | None = None
    ) -> ExecutionRecord:
        rec = self._get(execution_id)
        check_execution_transition(rec["status"], dst)
        rec["status"] = dst.value
        if reason is not None:
            rec["reason"] = reason
        if is_terminal_execution(dst):
            rec["end_time"] = self._clock()
        self._emit(execution_id, event, {"reason": reason} if reason else {})
        if is_terminal_execution(dst):
            self._wake(execution_id)
        return rec

    def _wake(self, execution_id: str) -> None:
        """Resolve waiters (called with the lock held: set_result runs callbacks inline,
        and they must not call back into this engine)."""
        snapshot = copy.deepcopy(self._records[execution_id])
        for fut in self._waiters.pop(execution_id, []):
            if not fut.done():
                fut.set_result(copy.deepcopy(snapshot))

    def _arm_wait_timer(
        self, execution_id: str, fut: Future[ExecutionRecord], delay: float
    ) -> None:
        def expire() -> None:
            with self._lock:
                self._timers.discard(timer)
                waiters = self._waiters.get(execution_id, [])
                if fut in waiters:
                    waiters.remove(fut)
                snapshot = copy.deepcopy(self._records[execution_id])
            if not fut.done():
                fut.set_result(snapshot)

        timer = threading.Timer(delay, expire)
        timer.daemon = True
        self._timers.add(timer)
        timer.start()

    def _finish_step(
        self,
        execution_id: str,
        step: str,
        dst: StepStatus,
        *,
        data: Any = None,
        error: str | None = None,
    ) -> ExecutionRecord:
        with self._lock:
            rec = self._get(execution_id)
            result = self._step(rec, step)
            check_step_transition(result["status"], dst, step)
            info = None if error is None else {"type": "StepFailure", "message": error}
            result.update(status=dst.value, data=data, error=info, ended_at=self._clock())
            kind = "step.completed" if dst == _S.SUCCEEDED else "step.failed"
            # as the engine's: a completed step's event carries its output
            self._emit(
                execution_id,
                kind,
                {"step": step, "output": data} if info is None else {"step": step},
            )
            if dst == _S.FAILED:
                rec["metrics"]["steps_failed"] += 1
                rec["error"] = {"step": step, "message": error, "type": "StepFailure"}
                if rec["status"] == _E.RUNNING:
                    self._transition(execution_id, _E.FAILED, "workflow.failed")
                return copy.deepcopy(rec)
            rec["metrics"]["steps_succeeded"] += 1
            done = all(r["status"] == _S.SUCCEEDED for r in rec["results"].values())
            # A paused execution finishes its running steps but completes only once resumed.
            if done and rec["status"] == _E.RUNNING:
                rec["current_step"] = None
                self._transition(execution_id, _E.COMPLETED, "workflow.completed")
            return copy.deepcopy(rec)
