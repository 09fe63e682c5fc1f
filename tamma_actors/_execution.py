"""ExecutionSupervisor: one execution's state machine, a PoolActor on the shared dispatcher.

Every message is handled the same way: decide, express the decision as events (applied to
the in-memory state by the pure reducer), hand them to the StoreWriter as one write, and
only when that write is committed run the effects — replies, dispatches to the worker pool,
event publication. Durability before progress: nothing leaves the actor before its commit.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import pykka

from tamma_actors._breaker_gate import BreakerGate
from tamma_actors._breakers import BreakerChanged, BreakerRegistry
from tamma_actors._compensation import CompensationHandling
from tamma_actors._deadlines import DeadlineDue, Deadlines
from tamma_actors._dispatch import Dispatcher, PoolActor
from tamma_actors._errors import IllegalTransition, TammaError, UnknownStep
from tamma_actors._eventbus import Publish
from tamma_actors._explain import Explain, Explaining
from tamma_actors._models import WorkflowConfig
from tamma_actors._retry import compute_delay, should_retry
from tamma_actors._state import (
    ExecutionState,
    apply,
    make_event,
    to_record,
    to_status,
    to_summary,
)
from tamma_actors._step_types import (
    ChildFinished,
    Children,
    ItemRetryDue,
    StepTypeHandling,
)
from tamma_actors._store import Write
from tamma_actors._timeouts import TimeoutHandling
from tamma_actors._timers import TimerHandle, TimerService
from tamma_actors._watchdog import WatchdogCheck, WatchdogChecks
from tamma_actors._workerpool import (
    Cancel,
    Dispatch,
    TaskFinished,
    TaskProgress,
    TaskRedispatched,
    TaskStarted,
)
from tamma_actors._writer import StoreWriter

__all__ = ["ExecutionDeps", "ExecutionSupervisor"]

log = logging.getLogger(__name__)

Effect = Callable[[], None]

MAX_REDISPATCH = 2  # worker losses one attempt survives before it counts as a failure


@dataclass(frozen=True)
class ExecutionDeps:
    """What an execution needs from its node."""

    writer: StoreWriter
    pool: pykka.ActorRef[Any]
    timers: TimerService
    bus: pykka.ActorRef[Any] | None = None
    on_terminal: Callable[[str], None] = lambda _eid: None
    children: Children | None = None  # starts and steers subflow children (the engine)
    snapshot_every: int = 100
    clock: Callable[[], float] = time.time
    rand: Callable[[], float] = random.random
    breakers: BreakerRegistry | None = None  # the node's circuit breakers


# -- messages -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Start:
    """Begin a new execution; ``created`` is the data of its ``workflow.created`` event."""

    reply: Future[dict[str, Any]] | None
    created: dict[str, Any]


@dataclass(frozen=True)
class Recover:
    """Re-activate an execution loaded from the store: re-dispatch what was in flight."""


@dataclass(frozen=True)
class Pause:
    reply: Future[dict[str, Any]]
    reason: str | None = None


@dataclass(frozen=True)
class Resume:
    reply: Future[dict[str, Any]]


@dataclass(frozen=True)
class Abort:
    reply: Future[dict[str, Any]]
    reason: str | None = None


@dataclass(frozen=True)
class RetryStep:
    step: str
    reply: Future[dict[str, Any]]


@dataclass(frozen=True)
class GetRecord:
    reply: Future[dict[str, Any]]
    status_only: bool = False


@dataclass(frozen=True)
class Wait:
    reply: Future[dict[str, Any]]
    timeout: float | None = None


@dataclass(frozen=True)
class _WaitExpired:
    reply: Future[dict[str, Any]]


@dataclass(frozen=True)
class _RetryDue:
    step: str
    attempt: int


@dataclass
class _Batch:
    events: list[dict[str, Any]] = field(default_factory=list)
    effects: list[Effect] = field(default_factory=list)
    replies: list[Future[dict[str, Any]]] = field(default_factory=list)
    # What must wait for this batch's commit: later replies and effects that describe or
    # depend on state this batch has not yet made durable. Settled on the writer thread.
    lock: threading.Lock = field(default_factory=threading.Lock)
    settled: bool = False
    error: BaseException | None = None
    followers: list[Callable[[BaseException | None], None]] = field(default_factory=list)

    def then(self, fn: Callable[[BaseException | None], None]) -> None:
        with self.lock:
            if not self.settled:
                self.followers.append(fn)
                return
        fn(self.error)

    def settle(self, error: BaseException | None) -> None:
        with self.lock:
            self.settled, self.error = True, error
            followers, self.followers = self.followers, []
        for fn in followers:
            fn(error)


def task_id(execution_id: str, step: str, attempt: int) -> str:
    return f"{execution_id}/{step}/{attempt}"


class ExecutionSupervisor(
    StepTypeHandling,
    TimeoutHandling,
    CompensationHandling,
    BreakerGate,
    WatchdogChecks,
    Explaining,
    PoolActor,
):
    def __init__(
        self,
        dispatcher: Dispatcher,
        deps: ExecutionDeps,
        config: WorkflowConfig,
        state: ExecutionState,
        *,
        definition: tuple[str, dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(dispatcher)
        self.deps = deps
        self.cfg = config
        self.state = state
        self._definition = definition  # written with the first commit of a new execution
        self._batch = _Batch()
        self._tail: _Batch | None = None  # the last batch handed to the writer
        self._inflight: dict[str, str] = {}  # task id -> step
        self._lost: dict[str, int] = {}  # task id -> times its worker was lost
        self._retry_timers: dict[str, TimerHandle] = {}
        self._waiters: list[Future[dict[str, Any]]] = []
        self._snapshot_seq = state.seq
        self._deps_of = {s.name: config.deps(s.name) for s in config.steps}
        self._broken = False
        self._init_step_types()
        self._deadlines = Deadlines(deps.timers, deps.clock, self._deadline_due)
        self._probes: dict[str, str] = {}  # step -> breaker it probes (half-open)
        self._comp_tasks: dict[str, str] = {}  # compensation task id -> compensated step
        self._watch_seq = -1  # the seq the watchdog saw last (-1: not looked yet)

    def _deadline_due(self, due: DeadlineDue) -> None:  # on the timer thread
        _tell(self.actor_ref, due)

    def on_stop(self) -> None:
        self._deadlines.cancel_all()
        for handle in self._retry_timers.values():
            handle.cancel()

    # -- the decide / commit / effect cycle ------------------------------------------------

    def on_receive(self, message: Any) -> Any:
        if self._broken:
            self._fail_reply(message, TammaError(f"execution {self.state.id} is unavailable"))
            return None
        try:
            self._handle(message)
        except TammaError as exc:  # a refused request: answer it, the execution goes on
            self._fail_reply(message, exc)
        except Exception as exc:
            self._fail_reply(message, exc)
            raise
        finally:
            self._flush()
        return None

    def _emit(self, etype: str, **data: Any) -> None:
        event = make_event(self.state, etype, self.deps.clock(), **data)
        apply(self.state, event)
        self._batch.events.append(event)

    def _after_commit(self, effect: Effect) -> None:
        self._batch.effects.append(effect)

    def _reply_after_commit(self, reply: Future[dict[str, Any]] | None) -> None:
        if reply is not None:
            self._batch.replies.append(reply)

    def _flush(self) -> None:
        batch, self._batch = self._batch, _Batch()
        if not batch.events:
            if batch.replies or batch.effects:
                record = to_record(self.state) if batch.replies else None
                self._after_tail(lambda exc: _run(self.state.id, batch, record, exc))
            return
        terminal = self.state.terminal
        if terminal:
            waiters, self._waiters = self._waiters, []
            batch.replies.extend(waiters)
        record = to_record(self.state) if batch.replies else None
        events = batch.events
        if self.bus is not None:
            bus = self.bus
            batch.effects.append(lambda: bus.tell(Publish(events)))
        write = Write(
            execution_id=self.state.id,
            events=events,
            summary=to_summary(self.state),
            snapshot=self._maybe_snapshot(terminal),
            definition=self._definition,
        )
        self._definition = None
        if terminal:
            eid = self.state.id
            self._deadlines.cancel_all()
            batch.effects.append(lambda: self.deps.on_terminal(eid))

        def done(exc: BaseException | None) -> None:
            if exc is not None:
                self._on_commit_failed(exc, batch)
            else:
                _run(self.state.id, batch, record, None)
            batch.settle(exc)

        self._tail = batch
        self.deps.writer.submit(write, done)

    def _after_tail(self, fn: Callable[[BaseException | None], None]) -> None:
        """Run ``fn`` once everything submitted so far is committed (now, if it is)."""
        if self._tail is None:
            fn(None)
        else:
            self._tail.then(fn)

    def _reply_committed(self, reply: Future[dict[str, Any]], value: dict[str, Any]) -> None:
        """Answer a read with state that is durable: after the pending writes commit."""

        def answer(exc: BaseException | None) -> None:
            if exc is not None:
                _fail(reply, exc)
            else:
                _resolve(reply, value)

        self._after_tail(answer)

    @property
    def bus(self) -> pykka.ActorRef[Any] | None:
        return self.deps.bus

    def _maybe_snapshot(self, terminal: bool) -> dict[str, Any] | None:
        if terminal or self.state.seq - self._snapshot_seq >= self.deps.snapshot_every:
            self._snapshot_seq = self.state.seq
            return self.state.to_dict()
        return None

    def _on_commit_failed(self, exc: BaseException, batch: _Batch) -> None:
        log.error("execution %s: commit failed, execution stops: %s", self.state.id, exc)
        for reply in batch.replies:
            _fail(reply, exc)
        self._broken = True  # the in-memory state ran ahead of the store; the store is right
        self.deps.on_terminal(self.state.id)

    # -- message handlers ------------------------------------------------------------------

    def _handle(self, msg: Any) -> None:
        handler = _DISPATCH.get(type(msg))
        if handler is None:
            log.warning("execution %s: unexpected message %r", self.state.id, msg)
            return
        handler(self, msg)

    def _on_start(self, msg: Start) -> None:
        self._emit("workflow.created", **msg.created)
        self._emit("workflow.started", **self._workflow_deadline())
        self._advance()
        self._reply_after_commit(msg.reply)

    def _on_recover(self, msg: Recover) -> None:
        """Re-enter through the normal path: whatever was in flight is dispatched again with
        the same attempt number (same idempotency key); retry timers resume."""
        for name in self.state.order:
            st = self.state.steps[name]
            if self._recover_step_type(name):
                continue
            if st.status == "running" and not self._is_wait(name):
                self._emit(
                    "step.redispatched",
                    step=name,
                    attempt=st.attempts,
                    reason="recovery",
                    **self._queue_deadline(name, st.attempts),
                )
            if st.status == "dispatched":
                self._send_task(name, st.attempts)
            elif st.status == "retry_wait" and self.state.status == "running":
                self._arm_retry(name, st.attempts, st.retry_at or self.deps.clock())
        if self.state.status == "pending":
            self._emit("workflow.started", **self._workflow_deadline())
        self._arm_deadlines()  # wait steps, queue deadlines, the workflow timeout
        self._advance()

    def _on_get(self, msg: GetRecord) -> None:
        value = to_status(self.state) if msg.status_only else to_record(self.state)
        self._reply_committed(msg.reply, value)

    def _on_wait(self, msg: Wait) -> None:
        if self.state.terminal:
            self._reply_committed(msg.reply, to_record(self.state))
            return
        self._waiters.append(msg.reply)
        if msg.timeout is not None:
            ref = self.actor_ref
            self.deps.timers.call_later(msg.timeout, lambda: _tell(ref, _WaitExpired(msg.reply)))

    def _on_wait_expired(self, msg: _WaitExpired) -> None:
        if msg.reply in self._waiters:
            self._waiters.remove(msg.reply)
            self._reply_committed(msg.reply, to_record(self.state))

    def _on_pause(self, msg: Pause) -> None:
        if self.state.status != "paused":
            self._require("running", "pause")
            now = self.deps.clock()
            frozen = {}
            for name, handle in self._retry_timers.items():
                handle.cancel()
                frozen[name] = max(0.0, (self.state.steps[name].retry_at or now) - now)
            self._retry_timers.clear()
            self._emit(
                "workflow.paused", reason=msg.reason, frozen=frozen, **self._freeze_deadlines()
            )
            self._pause_step_types(msg.reason)
        self._reply_after_commit(msg.reply)

    def _on_resume(self, msg: Resume) -> None:
        if self.state.status != "running":
            self._require("paused", "resume")
            now = self.deps.clock()
            retry_at = {
                name: now
                + (
                    st.frozen_delay
                    if st.frozen_delay is not None
                    else max(0.0, (st.retry_at or now) - now)
                )
                for name, st in self.state.steps.items()
                if st.status == "retry_wait"
            }
            self._emit("workflow.resumed", retry_at=retry_at, **self._thaw_deadlines())
            for name, at in retry_at.items():
                self._arm_retry(name, self.state.steps[name].attempts, at)
            self._arm_deadlines()
            self._resume_step_types()
            self._advance()
        self._reply_after_commit(msg.reply)

    def _on_abort(self, msg: Abort) -> None:
        if self.state.status != "aborted":
            if self.state.terminal:
                raise IllegalTransition(
                    f"execution {self.state.id} is {self.state.status}; it cannot be aborted"
                )
            reason = msg.reason or "aborted by request"
            self._cancel_open_steps(reason)
            self._cancel_compensations(reason)
            self._emit("workflow.aborted", reason=reason)
        self._reply_after_commit(msg.reply)

    def _on_retry_step(self, msg: RetryStep) -> None:
        st = self.state.steps.get(msg.step)
        if st is None:
            raise UnknownStep(f"execution {self.state.id} has no step {msg.step!r}")
        if st.status not in ("failed", "cancelled"):
            raise IllegalTransition(
                f"step {msg.step!r} is {st.status}; only a failed or cancelled step can be retried"
            )
        if self.state.status not in ("running", "paused", "failed"):
            raise IllegalTransition(
                f"execution {self.state.id} is {self.state.status}; its steps cannot be retried"
            )
        blocked = [
            d
            for d in self._deps_of[msg.step]
            if self.state.steps[d].status not in ("succeeded", "skipped")
        ]
        if blocked:
            raise IllegalTransition(
                f"step {msg.step!r} cannot run again: its dependency {blocked[0]!r} is "
                f"{self.state.steps[blocked[0]].status}; retry that step instead"
            )
        self._emit("step.retried", step=msg.step)
        for name in self.state.order:  # what the failure cancelled may run again
            if name != msg.step and self.state.steps[name].status == "cancelled":
                self._emit("step.reopened", step=name)
        self._advance()
        self._reply_after_commit(msg.reply)

    def _on_retry_due(self, msg: _RetryDue) -> None:
        self._retry_timers.pop(msg.step, None)
        st = self.state.steps[msg.step]
        if (
            self.state.status == "running"
            and st.status == "retry_wait"
            and (st.attempts == msg.attempt)
        ):
            self._emit("step.ready", step=msg.step)
            self._advance()

    # -- worker pool reports ---------------------------------------------------------------

    def _on_task_started(self, msg: TaskStarted) -> None:
        if self._item_started(msg):
            return
        name = self._inflight.get(msg.task_id)
        if name is not None and self.state.steps[name].status == "dispatched":
            attempt = self.state.steps[name].attempts
            self._emit(
                "step.started",
                step=name,
                attempt=attempt,
                worker=msg.worker_id,
                **self._running_deadline(name, attempt),
            )

    def _on_task_progress(self, msg: TaskProgress) -> None:
        name = self._inflight.get(msg.task_id)
        if name is not None:
            self._heartbeat(name)  # progress is liveness: it pushes the heartbeat deadline

    def _on_task_redispatched(self, msg: TaskRedispatched) -> None:
        """A lost worker does not use up an attempt — unless the same attempt keeps losing
        its worker: a step that crashes every process it runs in then fails (retryably)."""
        if self._item_redispatched(msg):
            return
        name = self._inflight.get(msg.task_id)
        if name is None or self.state.steps[name].status not in ("dispatched", "running"):
            return
        attempt = self.state.steps[name].attempts
        lost = self._lost.get(msg.task_id, 0) + 1
        self._lost[msg.task_id] = lost
        if lost <= MAX_REDISPATCH:
            self._emit(
                "step.redispatched",
                step=name,
                attempt=attempt,
                reason=msg.reason,
                **self._queue_deadline(name, attempt),
            )
            return
        del self._inflight[msg.task_id]
        self._deadlines.cancel_step(name)
        self._breaker_outcome(name, False)
        self._after_commit(partial(self.deps.pool.tell, Cancel(msg.task_id)))
        error = {
            "type": "WorkerLost",
            "retryable": True,
            "message": f"its worker was lost {lost} times ({msg.reason})",
        }
        self._on_step_error(name, attempt, error)
        self._advance()

    def _on_task_finished(self, msg: TaskFinished) -> None:
        if self._item_finished(msg):
            return
        name = self._inflight.pop(msg.task_id, None)
        if name is None:
            if self._compensation_finished(msg):
                return
            log.info("execution %s: stale result for %s ignored", self.state.id, msg.task_id)
            return
        st = self.state.steps[name]
        if st.status not in ("dispatched", "running"):
            return  # cancelled meanwhile (abort, fail_fast): the late result is discarded
        self._deadlines.cancel_step(name)
        self._breaker_outcome(name, msg.ok)
        if msg.ok:
            self._emit(
                "step.completed",
                step=name,
                attempt=st.attempts,
                output=msg.output,
                duration_ms=msg.duration_ms,
            )
        else:
            self._on_step_error(name, st.attempts, msg.error or {})
        self._advance()

    def _on_step_error(self, name: str, attempt: int, error: dict[str, Any]) -> None:
        policy = self.cfg.retry_policy_for(name)
        etype = str(error.get("type") or "StepFailure")
        message = str(error.get("message") or "")
        explicit = error.get("retryable")
        used = attempt - self.state.steps[name].attempt_base
        info = {"type": etype, "message": message, "retryable": explicit}
        if should_retry(policy, used, etype, message, explicit):
            delay = error.get("retry_after")
            if not isinstance(delay, int | float) or delay < 0:
                delay = compute_delay(policy, used, self.deps.rand())
            at = self.deps.clock() + float(delay)
            self._emit(
                "step.retry_scheduled",
                step=name,
                attempt=attempt,
                error=info,
                delay_s=float(delay),
                retry_at=at,
            )
            if self.state.status == "running":
                self._arm_retry(name, attempt, at)
            return
        self._emit("step.failed", step=name, attempt=attempt, error=info)
        if self.cfg.error_handling.strategy in ("fail_fast", "compensate"):
            self._cancel_open_steps(f"step {name!r} failed")

    # -- scheduling ------------------------------------------------------------------------

    def _advance(self) -> None:
        """Mark steps ready or blocked, dispatch what may run, and finish when all is done."""
        if self.state.status != "running":
            return
        steps = self.state.steps
        self._mark_pending()  # join semantics: see _step_types
        limit = self.cfg.max_parallel or len(steps)
        busy = sum(
            1
            for name, st in steps.items()
            if st.status in ("dispatched", "running") and not self._is_wait(name)
        )
        for name in self.state.order:
            if busy >= limit:
                break
            if steps[name].status == "ready":
                busy += self._launch(name, steps[name].attempts + 1)
        if self._take_again():  # a decision or an empty fan-out finished here and now
            self._advance()
            return
        self._maybe_finish()

    def _maybe_finish(self) -> None:
        if any(st.status not in _DONE for st in self.state.steps.values()):
            return
        failed = [n for n in self.state.order if self.state.steps[n].status == "failed"]
        if not failed:
            self._emit("workflow.completed")
            return
        if self._compensate():
            return  # the failure is final once the compensations have run
        first = self.state.steps[failed[0]].error or {}
        message = f"step {failed[0]!r} failed: {first.get('message', '')}"
        if len(failed) > 1:
            message += f" (failed steps: {', '.join(failed)})"
        self._emit(
            "workflow.failed",
            error={
                "message": message,
                "step": failed[0],
                "type": first.get("type"),
                "failed_steps": failed,
                **self._compensation_report(),
            },
        )

    def _cancel_open_steps(self, reason: str) -> None:
        for name in self.state.order:
            st = self.state.steps[name]
            if st.status in _DONE:
                continue
            if st.status in ("dispatched", "running") and name not in self._plans:
                tid = task_id(self.state.id, name, st.attempts)
                self._inflight.pop(tid, None)
                self._after_commit(partial(self.deps.pool.tell, Cancel(tid)))
                self._breaker_release(name)
            handle = self._retry_timers.pop(name, None)
            if handle is not None:
                handle.cancel()
            self._deadlines.cancel_step(name)
            self._cancel_step_type(name, reason)
            self._emit("step.cancelled", step=name, reason=reason)

    def _send_task(self, name: str, attempt: int) -> None:
        tid = task_id(self.state.id, name, attempt)
        self._inflight[tid] = name
        task = self._task(name, attempt, tid)
        pool, me = self.deps.pool, self.actor_ref
        self._after_commit(lambda: pool.tell(Dispatch(task, me)))

    def _task(self, name: str, attempt: int, tid: str) -> dict[str, Any]:
        step = self.cfg.step(name)
        deps = self._deps_of[name]
        upstream = {d: self.state.steps[d].data for d in deps}
        if not deps:
            primary: Any = self.state.context
        elif len(deps) == 1:
            primary = upstream[deps[0]]
        else:
            primary = upstream
        return {
            "task_id": tid,
            "execution_id": self.state.id,
            "step": name,
            "attempt": attempt,
            "implementation": step.implementation,
            "config": step.config,
            "input": primary,
            "inputs": self.state.context,
            "upstream": upstream,
            "idempotency_key": tid,
            "item_index": None,
        }

    def _arm_retry(self, name: str, attempt: int, at_wall: float) -> None:
        delay = max(0.0, at_wall - self.deps.clock())
        ref = self.actor_ref
        self._retry_timers[name] = self.deps.timers.call_later(
            delay, lambda: _tell(ref, _RetryDue(name, attempt))
        )

    def _require(self, status: str, action: str) -> None:
        if self.state.status != status:
            raise IllegalTransition(
                f"execution {self.state.id} is {self.state.status}; cannot {action} it"
            )

    def _fail_reply(self, msg: Any, exc: BaseException) -> None:
        reply = getattr(msg, "reply", None)
        if isinstance(reply, Future):
            _fail(reply, exc)

    def on_failure(self, *exc_info: Any) -> None:
        self.deps.on_terminal(self.state.id)


_DONE = frozenset({"succeeded", "failed", "skipped", "cancelled"})


def _resolve(reply: Future[dict[str, Any]], value: dict[str, Any] | None) -> None:
    if not reply.done() and value is not None:
        reply.set_result(value)


def _fail(reply: Future[dict[str, Any]], exc: BaseException) -> None:
    if not reply.done():
        reply.set_exception(exc)


def _run(eid: str, batch: _Batch, record: dict[str, Any] | None, exc: BaseException | None) -> None:
    """A committed batch's consequences: replies first, then effects (tells)."""
    if exc is not None:
        for reply in batch.replies:
            _fail(reply, exc)
        return
    for reply in batch.replies:
        _resolve(reply, record)
    for effect in batch.effects:
        try:
            effect()
        except Exception:  # an effect is a tell; a dead target must not stop the others
            log.exception("execution %s: effect after commit failed", eid)


def _tell(ref: pykka.ActorRef[Any], msg: Any) -> None:
    # the execution may have finished meanwhile; its waiters were answered at the end
    with contextlib.suppress(pykka.ActorDeadError):
        ref.tell(msg)


_DISPATCH: dict[type, Callable[[ExecutionSupervisor, Any], None]] = {
    Start: ExecutionSupervisor._on_start,
    Recover: ExecutionSupervisor._on_recover,
    GetRecord: ExecutionSupervisor._on_get,
    Wait: ExecutionSupervisor._on_wait,
    _WaitExpired: ExecutionSupervisor._on_wait_expired,
    Pause: ExecutionSupervisor._on_pause,
    Resume: ExecutionSupervisor._on_resume,
    Abort: ExecutionSupervisor._on_abort,
    RetryStep: ExecutionSupervisor._on_retry_step,
    _RetryDue: ExecutionSupervisor._on_retry_due,
    TaskStarted: ExecutionSupervisor._on_task_started,
    TaskProgress: ExecutionSupervisor._on_task_progress,
    TaskRedispatched: ExecutionSupervisor._on_task_redispatched,
    TaskFinished: ExecutionSupervisor._on_task_finished,
    ItemRetryDue: ExecutionSupervisor._on_item_retry_due,
    ChildFinished: ExecutionSupervisor._on_child_finished,
    DeadlineDue: ExecutionSupervisor._on_deadline,
    BreakerChanged: ExecutionSupervisor._on_breaker_changed,
    WatchdogCheck: ExecutionSupervisor._on_watchdog,
    Explain: ExecutionSupervisor._on_explain,
}
