"""The ``compensate`` error policy (a mixin of the execution supervisor).

Under ``error_handling: compensate`` a failed step cancels the open steps (as
``fail_fast`` does); once nothing is running, every succeeded step that declares a
``compensation`` is compensated, one at a time, in reverse order of completion. Then the
execution fails; its error lists the compensation results. A workflow timeout does the
same (``_timeouts``): the plan records it as its ``cause``, the execution's error from
then on. Once the plan exists the workflow timeout no longer runs.

- A fan-out that failed or was cancelled after some of its items succeeded is
  compensated too: its compensation gets the items' outputs in item order, null for the
  items that did not succeed (their work is as real as a whole step's).
- ``compensation`` names an implementation, or another step of the workflow whose
  implementation and config are used. A step named as a compensation is a compensation
  step: it never runs in the normal flow (it ends ``skipped``).
- A compensation task gets the compensated step's output as its ``input`` and runs once
  (no retries): its outcome, success or failure, is recorded and the next one runs. A lost
  worker sends it again, as a task, at most ``MAX_REDISPATCH`` times; one more loss fails
  it (``WorkerLost``).
- Its deadlines: a template step's ``queue_timeout``, ``timeout`` and
  ``heartbeat_timeout``, or, for an implementation named directly, the compensated step's
  ``timeout``. One that overruns is cancelled and fails (``StepTimeout``).
- The plan and each outcome are events (``workflow.compensating``,
  ``compensation.started|completed|failed``): a recovered execution re-sends the one that
  was running, with the same task id, and goes on. Pause holds the next compensation (as
  it holds the next step: one whose last compensation ended while paused fails when it is
  resumed); abort cancels the running one and the ones not started
  (``compensation.cancelled``), and the aborted execution's error says what each did.
- Once the plan exists no step can be retried (``_on_retry_step``): what the steps did is
  being undone, and an execution that went on would complete with its work undone.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

from tamma_actors._deadlines import timeout_error
from tamma_actors._execution_reports import MAX_REDISPATCH
from tamma_actors._workerpool import (
    Cancel,
    Dispatch,
    TaskFinished,
    TaskProgress,
    TaskRedispatched,
    TaskStarted,
)

if TYPE_CHECKING:
    import pykka

    from tamma_actors._deadlines import DeadlineDue, Deadlines, Kind
    from tamma_actors._execution import ExecutionDeps
    from tamma_actors._models import WorkflowConfig, WorkflowStep
    from tamma_actors._state import ExecutionState

__all__ = ["COMPENSATION_SUFFIX", "CompensationHandling"]

# "~" cannot occur in a step name, so a compensation's task id never collides with a step's.
COMPENSATION_SUFFIX = "~compensate"


class CompensationHandling:
    if TYPE_CHECKING:
        state: ExecutionState
        cfg: WorkflowConfig
        deps: ExecutionDeps
        _comp_tasks: dict[str, str]
        _lost: dict[str, int]
        _deadlines: Deadlines
        _compensation_steps: frozenset[str] | None

        @property
        def actor_ref(self) -> pykka.ActorRef[Any]: ...
        def _emit(self, etype: str, **data: Any) -> None: ...
        def _advance(self) -> None: ...
        def _after_commit(self, effect: Any) -> None: ...

    def _compensation_only(self, name: str) -> bool:
        """A step some other step names as its compensation runs only to compensate."""
        names: frozenset[str] | None = getattr(self, "_compensation_steps", None)
        if names is None:  # computed once: this is asked for every dispatch
            names = frozenset(s.compensation for s in self.cfg.steps if s.compensation)
            self._compensation_steps = names
        return name in names and self.cfg.step(name).compensation != name

    def _compensation_tid(self, name: str) -> str:
        return f"{self.state.id}/{name}{COMPENSATION_SUFFIX}/1"

    def _compensate(self, cause: dict[str, Any] | None = None) -> bool:
        """Drive the plan after a failure; True while compensation is not finished.
        ``cause``: the error that ends the execution when no step failed (a workflow
        timeout); it is its error from the plan on."""
        if self.cfg.error_handling.strategy != "compensate":
            return False
        steps = self.state.steps
        if self.state.compensations is None:
            position = {n: i for i, n in enumerate(self.state.order)}
            done = [
                n for n in self.state.order if self._did_work(n) and self.cfg.step(n).compensation
            ]
            done.sort(key=lambda n: (steps[n].ended_at or 0.0, position[n]), reverse=True)
            if not done:
                return False
            plan = [[n, self.cfg.step(n).compensation] for n in done]
            # the workflow timeout bounds the run, not its undoing: each compensation has
            # its own deadlines, and one cut off half-way would leave the worst state
            self._deadlines.cancel("workflow")
            self._emit("workflow.compensating", plan=plan, **({"cause": cause} if cause else {}))
        for entry in self.state.compensations or ():
            if entry["status"] == "running":
                if self._compensation_tid(entry["step"]) not in self._comp_tasks:
                    self._send_compensation(entry["step"])  # in flight before a restart
                return True
            if entry["status"] == "pending":
                self._emit(
                    "compensation.started",
                    step=entry["step"],
                    implementation=entry["implementation"],
                )
                self._send_compensation(entry["step"])
                return True
        return False

    def _did_work(self, name: str) -> bool:
        """A step that succeeded, or a fan-out that failed or was cancelled after some of
        its items succeeded: their work is as real as a whole step's."""
        st = self.state.steps[name]
        if st.status == "succeeded":
            return True
        counts = (st.detail or {}).get("counts") if self.cfg.step(name).type == "parallel" else None
        return st.status in ("failed", "cancelled") and bool(counts and counts.get("succeeded"))

    def _undone_output(self, name: str) -> Any:
        """What a compensation gets as its input: the step's output; a fan-out that did not
        succeed, its items' outputs in item order, null for those that did not succeed."""
        st = self.state.steps[name]
        if st.status == "succeeded" or not st.detail:
            return st.data
        return [i["output"] if i["status"] == "succeeded" else None for i in st.detail["state"]]

    def _template(self, name: str) -> WorkflowStep | None:
        """The step the compensation of ``name`` names, if it names one (not an
        implementation)."""
        declared = self.cfg.step(name).compensation or ""
        return next((s for s in self.cfg.steps if s.name == declared), None)

    def _send_compensation(self, name: str) -> None:
        tid = self._compensation_tid(name)
        self._comp_tasks[tid] = name
        self._arm_compensation("queue", name)
        declared = self.cfg.step(name).compensation or ""
        template = self._template(name)
        implementation = template.implementation if template is not None else declared
        output = self._undone_output(name)
        task = {
            "task_id": tid,
            "execution_id": self.state.id,
            "step": f"{name}{COMPENSATION_SUFFIX}",
            "attempt": 1,
            "implementation": implementation,
            "config": template.config if template is not None else {},
            "input": output,
            "inputs": self.state.context,
            "upstream": {name: output},
            "idempotency_key": tid,
            "item_index": None,
        }
        pool, me = self.deps.pool, self.actor_ref
        self._after_commit(lambda: pool.tell(Dispatch(task, me)))

    # -- its deadlines: kept in memory only, since a compensation in flight at a restart is
    # sent again, and its deadlines start afresh when it starts again

    def _compensation_limit(self, name: str, kind: Kind) -> float | None:
        """A compensation that names a step runs under that step's ``queue_timeout``,
        ``timeout`` and ``heartbeat_timeout``; one that names an implementation, under the
        compensated step's ``timeout`` (its other limits are about how its own
        implementation reports, which says nothing of another one)."""
        template = self._template(name)
        if template is None:
            return self.cfg.step(name).timeout if kind == "run" else None
        limits = {
            "queue": template.queue_timeout,
            "run": template.timeout,
            "heartbeat": template.heartbeat_timeout,
        }
        return limits.get(kind)

    def _arm_compensation(self, kind: Kind, name: str, since: float | None = None) -> None:
        limit = self._compensation_limit(name, kind)
        if limit is not None:
            at = (self.deps.clock() if since is None else since) + limit
            self._deadlines.arm(kind, f"{name}{COMPENSATION_SUFFIX}", 1, at)

    def _compensation_started(self, msg: TaskStarted) -> None:
        """A worker started it ``ran_s`` ago: its run and heartbeat deadlines begin."""
        name = self._comp_tasks.get(msg.task_id)
        if name is None:
            return
        self._deadlines.cancel("queue", f"{name}{COMPENSATION_SUFFIX}")
        since = self.deps.clock() - msg.ran_s
        self._arm_compensation("run", name, since)
        self._arm_compensation("heartbeat", name, since)

    def _compensation_progress(self, msg: TaskProgress) -> None:
        name = self._comp_tasks.get(msg.task_id)
        if name is not None:
            self._arm_compensation("heartbeat", name)

    def _compensation_deadline(self, due: DeadlineDue) -> bool:
        """A compensation's deadline (True: ``due`` was one): it overran, so it is
        cancelled and counts as a failed compensation (it is never retried)."""
        key = due.step or ""
        if not key.endswith(COMPENSATION_SUFFIX):
            return False
        name = key[: -len(COMPENSATION_SUFFIX)]
        tid = self._compensation_tid(name)
        if self.state.terminal or self._comp_tasks.pop(tid, None) is None:
            return True
        self._lost.pop(tid, None)
        self._deadlines.cancel_step(key)
        self._after_commit(partial(self.deps.pool.tell, Cancel(tid)))
        error = timeout_error(due.kind, key, self._compensation_limit(name, due.kind))
        self._compensation_failed(name, error)
        return True

    # -- its end --------------------------------------------------------------------------

    def _compensation_finished(self, msg: TaskFinished) -> bool:
        name = self._comp_tasks.pop(msg.task_id, None)
        if name is None:
            return False
        self._lost.pop(msg.task_id, None)
        self._deadlines.cancel_step(f"{name}{COMPENSATION_SUFFIX}")
        if self.state.terminal:
            return True
        if msg.ok:
            self._emit("compensation.completed", step=name, output=msg.output)
            self._advance()
        else:
            self._compensation_failed(name, msg.error or {})
        return True

    def _compensation_failed(self, name: str, error: dict[str, Any]) -> None:
        """Record its failure and go on with the next one (a compensation runs once)."""
        self._emit(
            "compensation.failed",
            step=name,
            error={"type": error.get("type"), "message": error.get("message")},
        )
        self._advance()

    def _compensation_redispatched(self, msg: TaskRedispatched) -> None:
        """Its worker was lost and the pool sends it again: as for a task, at most
        :data:`MAX_REDISPATCH` times, then it fails (``WorkerLost``) and leaves the pool,
        or one that kills every worker it runs on would be sent again for ever."""
        tid = msg.task_id
        name = self._comp_tasks.get(tid)
        if name is None or self.state.terminal:
            return
        lost = self._lost[tid] = self._lost.get(tid, 0) + 1
        key = f"{name}{COMPENSATION_SUFFIX}"
        self._deadlines.cancel_step(key)
        if lost <= MAX_REDISPATCH:
            self._arm_compensation("queue", name)  # queued again: its run begins afresh
            return
        del self._comp_tasks[tid], self._lost[tid]
        self._after_commit(partial(self.deps.pool.tell, Cancel(tid)))
        message = f"its worker was lost {lost} times ({msg.reason})"
        self._compensation_failed(name, {"type": "WorkerLost", "message": message})

    def _cancel_compensations(self, reason: str) -> None:
        """Abort (or the watchdog): the running compensation is cancelled and the ones not
        yet started never run; the plan records both as ``cancelled``."""
        for tid, name in list(self._comp_tasks.items()):
            del self._comp_tasks[tid]
            self._lost.pop(tid, None)
            self._deadlines.cancel_step(f"{name}{COMPENSATION_SUFFIX}")
            self._after_commit(partial(self.deps.pool.tell, Cancel(tid)))
        for entry in list(self.state.compensations or ()):
            if entry["status"] in ("running", "pending"):
                why = reason if entry["status"] == "running" else f"{reason} (before it started)"
                error = {"type": "cancelled", "message": why}
                self._emit("compensation.cancelled", step=entry["step"], error=error)

    def _abort_report(self) -> dict[str, Any]:
        """What an execution aborted while compensating keeps as its ``error``: the failure
        it was compensating and what each compensation did (nothing for one that was not
        compensating)."""
        if not self.state.compensations:
            return {}
        failed = self.state.failed_steps()
        return {"error": self._failure_report(failed)}

    def _compensation_report(self) -> dict[str, Any]:
        if not self.state.compensations:
            return {}
        return {"compensations": [dict(entry) for entry in self.state.compensations]}

    def _failure_report(self, failed: list[str]) -> dict[str, Any]:
        """The error of a failed execution: its first failed step's, or the cause it has
        been compensating (a workflow timeout); every step that failed for good and the
        compensations, either way."""
        report = {"failed_steps": failed, **self._compensation_report()}
        if self.state.error is not None or not failed:
            return {**(self.state.error or {"message": "no step failed"}), **report}
        first = self.state.steps[failed[0]].error or {}
        message = f"step {failed[0]!r} failed: {first.get('message', '')}"
        if len(failed) > 1:
            message += f" (failed steps: {', '.join(failed)})"
        return {"message": message, "step": failed[0], "type": first.get("type"), **report}
