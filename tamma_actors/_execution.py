"""ExecutionSupervisor: one execution's state machine, a PoolActor on the shared dispatcher.

Every message is handled the same way: decide, express the decision as events (applied to
the in-memory state by the pure reducer), hand them to the StoreWriter as one write, and
only when that write is committed run the effects — replies, dispatches to the worker pool,
event publication. Durability before progress: nothing leaves the actor before its commit.

This class assembles the mixins and keeps the scheduler and the message dispatch table.
The commit cycle is in :mod:`~tamma_actors._execution_commit`, the requests (start,
pause, resume, abort, retry, get, wait) in :mod:`~tamma_actors._execution_control`,
the worker pool's reports and the retry policy in :mod:`~tamma_actors._execution_reports`.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from functools import partial
from types import TracebackType
from typing import Any

import pykka

from tamma_actors._breaker_gate import BreakerGate
from tamma_actors._breakers import BreakerChanged, BreakerRegistry
from tamma_actors._compensation import CompensationHandling
from tamma_actors._deadlines import DeadlineDue, Deadlines
from tamma_actors._dispatch import Dispatcher, PoolActor
from tamma_actors._errors import ActorStopped, TammaError
from tamma_actors._execution_commit import Batch, CommitCycle, fail
from tamma_actors._execution_control import (
    Abort,
    ExecutionControl,
    GetRecord,
    Pause,
    Recover,
    Resume,
    RetryStep,
    Start,
    Wait,
    WaitExpired,
)
from tamma_actors._execution_reports import MAX_REDISPATCH, RetryDue, TaskReports
from tamma_actors._execution_rest import MayRest, Resting, RestRequest
from tamma_actors._explain import Explain, Explaining
from tamma_actors._models import WorkflowConfig, WorkflowStep
from tamma_actors._state import ExecutionState, step_is_terminal
from tamma_actors._step_base import tell
from tamma_actors._step_index import StepIndex, StepScan, step_book
from tamma_actors._step_types import (
    ChildFinished,
    Children,
    ItemRetryDue,
    StepTypeHandling,
)
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
    Undelivered,
)
from tamma_actors._writer import QueuedWriter

# The messages and names other modules import from here; they live in the mixins' modules.
__all__ = [
    "MAX_REDISPATCH",
    "Abort",
    "ExecutionDeps",
    "ExecutionSupervisor",
    "GetRecord",
    "Pause",
    "Recover",
    "Resume",
    "RetryStep",
    "Start",
    "Wait",
    "task_id",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExecutionDeps:
    """What an execution needs from its node."""

    writer: QueuedWriter
    pool: pykka.ActorRef[Any]
    timers: TimerService
    bus: pykka.ActorRef[Any] | None = None
    # it ended or stopped: (its id, its supervisor) — retire it unless a successor is live
    on_terminal: Callable[[str, Any], None] = lambda _eid, _ref: None
    # its commit was not confirmed (StoreWriterLost): re-read it once the writer is back
    on_commit_lost: Callable[[str], None] = lambda _eid: None
    # its supervisor failed (a turn raised), and what it decided before is committed
    on_failed: Callable[[str, BaseException | None], None] = lambda _eid, _exc: None
    # a supervisor with nothing to do but wait asks to rest (_execution_rest); None: never
    rest: RestRequest | None = None
    children: Children | None = None  # starts and steers subflow children (the engine)
    snapshot_every: int = 100
    clock: Callable[[], float] = time.time
    rand: Callable[[], float] = random.random
    breakers: BreakerRegistry | None = None  # the node's circuit breakers
    start_hold: float = 0.0  # longest a worker may hold a step's start notice (seconds)
    # the node's frame cap: what a parallel or subflow step makes of many items' or steps'
    # data (its output, its items, a child's inputs) must fit in one reply, as its event
    max_frame_bytes: int = 8 << 20


def task_id(execution_id: str, step: str, attempt: int) -> str:
    return f"{execution_id}/{step}/{attempt}"


class ExecutionSupervisor(
    ExecutionControl,
    TaskReports,
    CommitCycle,
    StepTypeHandling,
    TimeoutHandling,
    CompensationHandling,
    BreakerGate,
    WatchdogChecks,
    Explaining,
    Resting,
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
        self._batch = Batch()
        self._tail: Batch | None = None  # the last batch handed to the writer
        self._inflight: dict[str, str] = {}  # task id -> step
        self._lost: dict[str, int] = {}  # task id -> times its worker was lost
        self._retry_timers: dict[str, TimerHandle] = {}
        self._waiters: list[Future[dict[str, Any]]] = []
        self._wait_timers: dict[Future[dict[str, Any]], TimerHandle] = {}  # timed waits
        self._snapshot_seq = state.seq
        self._snapshot_bytes = 0  # the last snapshot's, once this supervisor wrote one
        self._bytes_since_snapshot = 0
        self._deps_of = config.dependency_map()  # shared by every execution of it
        self._broken = False
        self._init_step_types()
        self._deadlines = Deadlines(deps.timers, deps.clock, self._deadline_due)
        self._probes: dict[str, str] = {}  # step -> breaker it probes (half-open)
        self._comp_tasks: dict[str, str] = {}  # compensation task id -> compensated step
        self._watch_seq = -1  # the seq the watchdog saw last (-1: not looked yet)
        self._index: StepIndex | StepScan | None = None  # see _step_index
        self._slotless_steps: tuple[str, ...] | None = None  # see _slotless

    def _deadline_due(self, due: DeadlineDue) -> None:  # on the timer thread
        tell(self.actor_ref, due)

    def on_stop(self) -> None:
        if not self._broken:
            self._flush()  # a stop told in the middle of a turn: commit what it decided
        self._release_timers()
        self._answer_waiters()

    def _release_timers(self) -> None:
        """Cancel every timer it armed (none of them may reach a stopped supervisor) and
        let go of the deadlines' callback."""
        self._deadlines.close()
        for handle in [*self._retry_timers.values(), *self._wait_timers.values()]:
            handle.cancel()
        self._wait_timers.clear()

    def _answer_waiters(self) -> None:
        """It stopped: whoever still waits for its end gets ActorStopped, and the engine's
        read path asks again, where the execution is now (``EngineReads._read``)."""
        waiters, self._waiters = self._waiters, []
        for reply in waiters:
            fail(reply, ActorStopped(f"execution {self.state.id}'s supervisor stopped"))

    # -- the decide / commit / effect cycle ------------------------------------------------

    def on_receive(self, message: Any) -> Any:
        if self._broken:
            self._hand_back(message)
            self._fail_reply(message, ActorStopped(f"execution {self.state.id} is unavailable"))
            return None
        try:
            self._handle(message)
            if isinstance(message, TaskFinished):  # back to the pool if its commit fails
                self._batch.reports.append(message)
        except TammaError as exc:  # a refused request: answer it, the execution goes on
            self._fail_reply(message, exc)
        except Exception as exc:
            self._fail_reply(message, exc)
            self._flush()  # the actor fails: commit what it decided before
            raise
        return None

    def on_turn_end(self) -> None:
        """One commit for everything a turn's messages decided (a step's started and
        finished reports often arrive together)."""
        if not self._broken:
            tail = self._tail
            self._flush()
            self._offer_rest(self._tail if self._tail is not tail else None)

    # -- message handlers ------------------------------------------------------------------

    def _handle(self, msg: Any) -> None:
        handler = _DISPATCH.get(type(msg))
        if handler is None:
            log.warning("execution %s: unexpected message %r", self.state.id, msg)
            return
        handler(self, msg)

    # -- scheduling ------------------------------------------------------------------------

    def _step_index(self) -> StepIndex | StepScan:
        """Which steps are pending, ready, in flight and open (each question brings it up
        to date with the state first). Made at the first look: a supervisor that only
        answers reads never needs it."""
        index = self._index
        if index is None:
            cfg = self.cfg
            waits = frozenset(s.name for s in cfg.steps if self._is_wait(s.name))
            index = self._index = step_book(
                self._deps_of, cfg.dependents_map(), cfg.step_positions(), waits
            )
        return index

    def _advance(self) -> None:
        """Mark steps ready or blocked, dispatch what may run, and finish when all is done."""
        if self.state.status != "running":
            return
        steps = self.state.steps
        self._mark_pending()  # join semantics: see _step_types
        index = self._step_index()
        limit = self.cfg.max_parallel or len(steps)
        busy = index.in_flight_count(self.state)
        with contextlib.closing(index.ready_in_order(self.state)) as ready:
            for name in ready:
                if busy >= limit:
                    break
                busy += self._launch(name, steps[name].attempts + 1)
        if busy >= limit and self.cfg.max_parallel:  # at the cap: what takes no slot goes
            for name in self._slotless():
                if steps[name].status == "ready":
                    self._launch(name, steps[name].attempts + 1)
        if self._take_again():  # a decision or an empty fan-out finished here and now
            self._advance()
            return
        self._maybe_finish()

    def _slotless(self) -> tuple[str, ...]:
        """The steps that run without counting towards ``max_parallel``, in file order:
        wait steps, decisions and steps that only compensate (skipped in the flow)."""
        found = self._slotless_steps
        if found is None:
            found = self._slotless_steps = tuple(
                s.name
                for s in self.cfg.steps
                if s.type == "decision" or self._is_wait(s.name) or self._compensation_only(s.name)
            )
        return found

    def _maybe_finish(self) -> None:
        if self._step_index().any_open(self.state):
            return
        failed = self.state.failed_steps()
        # an error while still running: the workflow timed out, and it is compensating
        if not failed and self.state.error is None:
            self._emit("workflow.completed")
            return
        if self._compensate():
            return  # the failure is final once the compensations have run
        self._emit("workflow.failed", error=self._failure_report(failed))

    def _cancel_open_steps(self, reason: str) -> None:
        for name in self.state.order:
            st = self.state.steps[name]
            if step_is_terminal(st):
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
            "start_hold": self._start_hold(step),
        }

    def _start_hold(self, step: WorkflowStep) -> float:
        """How long the worker may keep the step's start notice (``_worker_outbox``): not
        at all under a schedule-to-start limit (the notice ends it), never past half a run
        or heartbeat limit (the notice arms those, dated from the step's real start)."""
        hold = self.deps.start_hold
        if hold <= 0 or step.queue_timeout is not None:
            return 0.0
        for limit in (step.timeout, step.heartbeat_timeout):
            if limit is not None:
                hold = min(hold, limit / 2)
        return hold

    def _fail_reply(self, msg: Any, exc: BaseException) -> None:
        reply = getattr(msg, "reply", None)
        if isinstance(reply, Future):
            fail(reply, exc)

    def on_dropped(self, message: Any) -> None:
        # Queued behind a turn that raised: a read is then answered from the store (the
        # engine's read path does that on ActorStopped), a step's result goes back to the
        # pool, anything else is refused. A wait is answered only once what the supervisor
        # decided is committed (after a failure, the execution then rests): asked again,
        # it waits where it is brought back, not on the store's unfinished record.
        name = type(message).__name__
        why = f"execution {self.state.id}'s supervisor stopped before it handled {name}"
        if isinstance(message, Wait) and not self._broken:
            self._after_tail(lambda _exc: fail(message.reply, ActorStopped(why)))
        else:
            if not self.state.terminal:  # an ended execution is not brought back
                self._hand_back(message)
            self._fail_reply(message, ActorStopped(why))

    def _hand_back(self, message: Any) -> None:
        """A step's result this supervisor will not take, or could not record (its commit
        failed): the pool keeps it for the supervisor that brings the execution back (it
        dispatches the same task again)."""
        if isinstance(message, TaskFinished):
            tell(self.deps.pool, Undelivered(message))

    def on_failure(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # A turn raised: the actor stopped without on_stop, and the timers it armed go
        # with it. Requests go to the store; once what it decided before is committed,
        # the engine brings it back from there (``_recovery``), and waits for its end are
        # asked again there.
        self._release_timers()
        eid = self.state.id
        self.deps.on_terminal(eid, self.actor_ref)
        if self._broken:
            return

        def committed(failed: BaseException | None) -> None:
            if failed is None:  # (a failed commit took _on_commit_failed's path)
                self.deps.on_failed(eid, exc)
                self._answer_waiters()  # once it rests: their next wait wakes it

        self._after_tail(committed)


_DISPATCH: dict[type, Callable[[ExecutionSupervisor, Any], None]] = {
    Start: ExecutionSupervisor._on_start,
    Recover: ExecutionSupervisor._on_recover,
    GetRecord: ExecutionSupervisor._on_get,
    Wait: ExecutionSupervisor._on_wait,
    WaitExpired: ExecutionSupervisor._on_wait_expired,
    Pause: ExecutionSupervisor._on_pause,
    Resume: ExecutionSupervisor._on_resume,
    Abort: ExecutionSupervisor._on_abort,
    RetryStep: ExecutionSupervisor._on_retry_step,
    RetryDue: ExecutionSupervisor._on_retry_due,
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
    MayRest: ExecutionSupervisor._on_may_rest,
}
