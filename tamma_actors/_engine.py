"""Engine: routes requests to live execution supervisors, or to the store for the rest.

It implements :class:`tamma_actors._engine_api.AsyncEngine`. Live executions (not yet
terminal) each have an ExecutionSupervisor; terminal ones are served from the store (their
final snapshot), so memory holds only what is moving.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Collection
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import pykka

from tamma_actors._admin import StoreAdmin
from tamma_actors._breakers import BreakerRegistry
from tamma_actors._codec import same_data
from tamma_actors._deadlines import COORDINATOR_IMPLEMENTATIONS
from tamma_actors._definitions import ParsedDefinitions
from tamma_actors._dispatch import Dispatcher
from tamma_actors._engine_reads import EngineReads, HeldWait, done_or_refuse
from tamma_actors._errors import (
    ExecutionExists,
    IllegalTransition,
    ShuttingDown,
    TammaError,
    WorkflowValidationError,
)
from tamma_actors._execution import (
    Abort,
    ExecutionDeps,
    ExecutionSupervisor,
    Pause,
    Resume,
    RetryStep,
    Start,
)
from tamma_actors._futures import done, guarded, relay
from tamma_actors._keys import new_execution_id
from tamma_actors._models import WorkflowConfig
from tamma_actors._probe import StepProbe, probe_task_id
from tamma_actors._recovery import EngineRecovery, Waker
from tamma_actors._state import ExecutionState
from tamma_actors._step_configs import task_config
from tamma_actors._store import Store
from tamma_actors._subflows import (
    ANY_FILE,
    EngineChildren,
    WorkflowFiles,
    unreadable_subflow_files,
)
from tamma_actors._timers import TimerHandle
from tamma_actors._watchdog import Watchdog

__all__ = ["Engine"]

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class EngineParts:
    store: Store
    dispatcher: Dispatcher
    deps: ExecutionDeps
    implementations: Callable[[], Collection[str]]
    health_extra: Callable[[], dict[str, Any]] = dict
    # why new work is refused right now (a full store), or None
    write_block: Callable[[], TammaError | None] = lambda: None
    watchdog_interval: float = 30.0  # seconds between looks for stuck executions; 0: off
    # a live execution with nothing to do but wait at least this long rests; None: never
    rest_after: float | None = None
    # where a subflow may read its workflow file (see WorkflowFiles); default: anywhere
    workflow_files: WorkflowFiles = ANY_FILE


def _exists(eid: str) -> ExecutionExists:
    return ExecutionExists(
        f"execution {eid!r} exists with another workflow or other inputs; a start that "
        "names an existing id must repeat its workflow and inputs exactly"
    )


class Engine(EngineReads, EngineRecovery):
    def __init__(self, parts: EngineParts) -> None:
        self._store = parts.store
        self._dispatcher = parts.dispatcher
        self._children = EngineChildren(self, parts.store, parts.deps.timers, parts.workflow_files)
        self._deps = replace(
            parts.deps,
            on_terminal=self._retire,
            on_commit_lost=self._commit_lost,
            on_failed=self._supervisor_failed,
            rest=None if parts.rest_after is None else self._rest,
            children=self._children,
            breakers=parts.deps.breakers or _breaker_registry(parts),
        )
        self._implementations = parts.implementations
        self._health_extra = parts.health_extra
        self._write_block = parts.write_block
        self._admin = StoreAdmin(parts.store)
        # Lists are built here, off the caller's thread (the control server's): a page of
        # 1,000 stored records takes ~0.3 s, which every other request used to wait for.
        self._lister = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tamma-list")
        self._draining = False
        self.unrecovered: dict[str, str] = {}  # execution id -> why it could not recover
        self.repaired: dict[str, str] = {}  # recovered from the full log: the snapshot was bad
        self._recovering = False
        self._activated: set[str] = set()  # brought back by the recovery running now
        self._configs: dict[str, WorkflowConfig] = {}  # digest -> parsed, recovering/resting
        self._resting: dict[str, TimerHandle] = {}  # only waiting: their wake timers
        self._unconfirmed: set[str] = set()  # stopped on a lost writer: back when it is
        self._failures: dict[str, tuple[int, float]] = {}  # supervisor failures: count, last
        self._held: dict[str, list[HeldWait]] = {}  # waits for ones nothing drives now
        # starts under a client's id, until committed: id -> ((digest, inputs), reply)
        self._starting: dict[str, tuple[tuple[str, dict[str, Any]], Future[Any]]] = {}
        self._rest_after = parts.rest_after
        self._waker = Waker.start(parts.dispatcher, self._wake)
        self._definitions = ParsedDefinitions(parts.implementations)
        self._lock = threading.Lock()
        self._live: dict[str, pykka.ActorRef[Any]] = {}
        self._started = time.time()
        self._closed = False
        self._watchdog = Watchdog(
            parts.deps.timers, parts.watchdog_interval, lambda: list(self._live.values())
        )

    # -- live executions -------------------------------------------------------------------

    def _retire(self, execution_id: str, ref: pykka.ActorRef[Any]) -> None:
        """Called after an execution's terminal commit (or when its supervisor stops):
        later requests go to the store. Only ``ref`` is retired: a supervisor whose
        commit was lost may report after its successor was made from the store, and must
        not take that one down.

        The stop is told under the lock, so anything routed to the actor before it was
        retired sits in its inbox ahead of the stop and is still answered."""
        with self._lock:
            live = self._live.get(execution_id)
            if live is None or live.actor_urn != ref.actor_urn:
                return
            del self._live[execution_id]
            with contextlib.suppress(pykka.ActorDeadError):
                live.stop(block=False)

    def _route(self, execution_id: str, message: Any) -> bool:
        with self._lock:
            ref = self._live.get(execution_id)
            if ref is None:
                return False
            try:
                ref.tell(message)
            except pykka.ActorDeadError:
                self._live.pop(execution_id, None)
                return False
            return True

    def _spawn(
        self,
        cfg: WorkflowConfig,
        state: ExecutionState,
        message: Any,
        definition: tuple[str, dict[str, Any]] | None = None,
    ) -> None:
        # Made before taking the lock: pykka names an actor with ``uuid4``, whose
        # ``os.urandom`` gives up the GIL, and the lock must not be held while this thread
        # waits to get it back (every request and every resting supervisor needs the lock).
        supervisor = ExecutionSupervisor(
            self._dispatcher, self._deps, cfg, state, definition=definition
        )
        with self._lock:
            if self._closed:
                raise ShuttingDown("the engine is shutting down")
            ref = supervisor.started()
            self._live[state.id] = ref
            ref.tell(message)

    @property
    def live_count(self) -> int:
        return len(self._live)

    # -- AsyncEngine -----------------------------------------------------------------------

    @guarded
    def start_workflow(
        self,
        definition: dict[str, Any],
        inputs: dict[str, Any],
        *,
        source: str | None = None,
        execution_id: str | None = None,  # a subflow's child: its id is chosen by its parent
        requested_id: str | None = None,  # chosen by the client: see _start_once
        parent: str | None = None,  # a subflow's child: its parent, named in its first event
    ) -> Future[dict[str, Any]]:
        if requested_id is None:  # else only if it is new (see _start_once)
            # a subflow's child is part of its parent's committed work, not new intake
            self._check_intake(draining_too=execution_id is None)
        cfg, digest, dumped = self._definitions.get(definition, source)
        unreadable = unreadable_subflow_files(cfg, source, self._children.files)
        if unreadable:  # refused now rather than failing its step later
            raise WorkflowValidationError(unreadable, source)
        created = {
            "workflow_id": cfg.name,
            "workflow_version": cfg.version,
            "digest": digest,
            "inputs": dict(inputs),
            "steps": [s.name for s in cfg.steps],
            "source": source,
        }
        if parent is not None:
            created["parent"] = parent
        # The definition, the created and started events and the first dispatches reach
        # the store in one transaction: the supervisor's first commit.
        if requested_id is not None:
            reply = self._start_once(requested_id, cfg, created, (digest, dumped))
        else:
            reply = Future()
            state = ExecutionState(id=execution_id or new_execution_id())
            self._spawn(
                cfg,
                state,
                Start(reply, created),
                definition=(digest, dumped),
            )
        names = self._children.names

        def committed(fut: Future[dict[str, Any]]) -> None:
            if fut.exception() is None:  # what a subflow by this name now means
                record = fut.result()
                names.created(str(record["id"]), cfg.name, digest, record["start_time"] or 0.0)

        reply.add_done_callback(committed)
        return reply

    def _start_once(
        self,
        eid: str,
        cfg: WorkflowConfig,
        created: dict[str, Any],
        definition: tuple[str, dict[str, Any]],
    ) -> Future[dict[str, Any]]:
        """A start under an id the client chose: one execution at most ever has it. The
        same start again (a retry after a lost reply, a second client) gets that execution's
        record as it is now, or, while the first is still being committed, the first's
        answer; one with another workflow or other inputs fails with ExecutionExists. Only
        a new one is intake: the same start again is answered by a draining node too."""
        same = (created["digest"], created["inputs"])
        reply: Future[dict[str, Any]] = Future()
        with self._lock:
            pending = self._starting.get(eid)
            new = pending is None and eid not in self._live and eid not in self._resting
            if new:  # perhaps: unless the store has it
                self._starting[eid] = (same, reply)
        if pending is not None:
            if not same_data(pending[0], same):
                raise _exists(eid)
            return pending[1]
        try:
            if new:
                reply.add_done_callback(lambda _: self._started_once(eid))
                if self._store.get_summary(eid) is None:
                    self._check_intake()
                    self._spawn(cfg, ExecutionState(id=eid), Start(reply, created), definition)
                    return reply
            first = self._store.read_events(eid, 1, 1)  # its created event
            data = first[0]["data"] if first else {}
            if not same_data((data.get("digest"), data.get("inputs") or {}), same):
                raise _exists(eid)
            relay(self.get_workflow(eid), reply)
        except TammaError as exc:
            reply.set_exception(exc)
        return reply

    def _started_once(self, eid: str) -> None:
        with self._lock:
            self._starting.pop(eid, None)

    def _ask(self, execution_id: str, make: Callable[[Future[Any]], Any]) -> Future[Any]:
        reply: Future[Any] = Future()
        if self._route(execution_id, make(reply)):
            return reply
        if self._activated_on_demand(execution_id) and self._route(execution_id, make(reply)):
            return reply
        return self._from_store_or_refuse(execution_id, make)

    @guarded
    def pause_workflow(
        self, execution_id: str, reason: str | None = None
    ) -> Future[dict[str, Any]]:
        return self._ask(execution_id, lambda r: Pause(r, reason))

    @guarded
    def resume_workflow(self, execution_id: str) -> Future[dict[str, Any]]:
        return self._ask(execution_id, lambda r: Resume(r))

    @guarded
    def abort_workflow(
        self, execution_id: str, reason: str | None = None
    ) -> Future[dict[str, Any]]:
        self._readmit(execution_id)  # given up on: abort is the way to end it
        return self._ask(execution_id, lambda r: Abort(r, reason))

    @guarded
    def retry_step(self, execution_id: str, step: str) -> Future[dict[str, Any]]:
        reply: Future[dict[str, Any]] = Future()
        if self._route(execution_id, RetryStep(step, reply)):
            return reply
        if self._activated_on_demand(execution_id) and self._route(
            execution_id, RetryStep(step, reply)
        ):
            return reply
        state = self._load(execution_id)
        if state.status != "failed":
            return done_or_refuse(state, RetryStep(step, reply))
        # A failed execution is revived: a supervisor re-activates it and retries the step.
        self._check_intake()
        cfg = self._definition_of(state)
        self._spawn(cfg, state, RetryStep(step, reply))
        return reply

    @guarded
    def execute_step(
        self, execution_id: str, step: str, context: Any = None, *, timeout: float = 300.0
    ) -> Future[dict[str, Any]]:
        """Run ``step`` once on a worker with ``context`` as its input, outside the
        execution's schedule; the execution itself is not changed (see _probe.py)."""
        state = self._load(execution_id)
        cfg = self._definition_of(state)
        spec = cfg.step(step)
        impl = spec.implementation
        if impl is None or impl not in self._implementations():
            if impl is None:
                what = f"is a {spec.type} step, which the coordinator runs"
            elif impl in COORDINATOR_IMPLEMENTATIONS:
                what = f"is a {impl} step, which the coordinator keeps"
            else:
                what = f"runs {impl!r}, which no connected worker offers now"
            raise IllegalTransition(
                f"step {step!r} {what}; only steps that run on a worker can be executed on "
                "their own"
            )
        tid = probe_task_id(execution_id, step)
        deps = cfg.deps(step)
        task = {
            "task_id": tid,
            "execution_id": execution_id,
            "step": step,
            "attempt": 1,
            "implementation": impl,
            "config": task_config(spec),  # a parallel step's: what each item gets
            "input": context,
            "inputs": state.context,
            "upstream": {d: state.steps[d].data for d in deps},
            "idempotency_key": tid,
            "item_index": None,
        }
        reply: Future[dict[str, Any]] = Future()
        StepProbe.start(self._dispatcher, self._deps.pool, self._deps.timers, task, reply, timeout)
        return reply

    @guarded
    def health(self) -> Future[dict[str, Any]]:
        report: dict[str, Any] = {
            "status": "ok",
            "uptime_s": round(time.time() - self._started, 3),
            "executions": {"live": self.live_count, "resting": self.resting_count},
            "recovery": {
                "in_progress": self._recovering,
                "unrecoverable": dict(self.unrecovered),
                "from_full_log": dict(self.repaired),
            },
        }
        if self.unrecovered:
            report["status"] = "degraded"
        if self._deps.breakers is not None:
            report["breakers"] = self._deps.breakers.snapshot()
        report.update(self._health_extra())
        report["draining"] = self._draining
        if self._draining and report["status"] == "ok":  # up, but leaving: send it nothing
            report["status"] = "draining"
        return done(report)

    # -- recovery and shutdown -------------------------------------------------------------

    def drain(self) -> None:
        """Stop intake for a graceful shutdown: new starts and revivals are refused."""
        self._draining = True

    def _check_intake(self, *, draining_too: bool = True) -> None:
        if (self._draining and draining_too) or self._closed:
            raise ShuttingDown("the node is shutting down; it accepts no new work")
        blocked = self._write_block()
        if blocked is not None:
            raise blocked

    # -- administration (admin role; see _admin.py) ------------------------------------------

    @guarded
    def admin_verify(self) -> Future[dict[str, Any]]:
        return self._admin.verify()

    @guarded
    def admin_backup(self, dest: str) -> Future[dict[str, Any]]:
        return self._admin.backup(dest)

    @guarded
    def admin_cleanup(self, older_than_days: float) -> Future[dict[str, Any]]:
        done = self._admin.cleanup(older_than_days)
        names = self._children.names

        def deleted(fut: Future[dict[str, Any]]) -> None:
            if fut.cancelled() or fut.exception() is not None or fut.result()["deleted"]:
                names.deleted()  # perhaps the latest execution of a workflow name

        done.add_done_callback(deleted)
        return done

    def close(self, timeout: float = 10.0) -> None:
        """Stop taking executions and stop their supervisors (their state is in the store)."""
        self._admin.close()
        self._lister.shutdown(wait=False, cancel_futures=True)
        self._children.close()
        self._stop_resting()
        with self._lock:
            self._closed = True
            refs = list(self._live.values())
            self._live.clear()
        for ref in refs:
            with contextlib.suppress(pykka.ActorDeadError, pykka.Timeout):
                ref.stop(block=True, timeout=timeout)
        self._answer_held_waits()
        if self._deps.breakers is not None:
            self._deps.breakers.close()
        self._watchdog.close()


def _breaker_registry(parts: EngineParts) -> BreakerRegistry:
    """The node's breakers, as the store last saw them."""
    deps = parts.deps
    return BreakerRegistry(
        deps.writer, deps.timers, bus=deps.bus, clock=deps.clock, loaded=parts.store.get_breakers()
    )
