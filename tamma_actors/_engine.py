"""Engine: routes requests to live execution supervisors, or to the store for the rest.

It implements :class:`tamma_actors._engine_api.AsyncEngine`. Live executions (not yet
terminal) each have an ExecutionSupervisor; terminal ones are served from the store (their
final snapshot), so memory holds only what is moving.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Collection, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import pykka

from tamma_actors._admin import StoreAdmin
from tamma_actors._breakers import BreakerRegistry
from tamma_actors._deadlines import COORDINATOR_IMPLEMENTATIONS
from tamma_actors._dispatch import Dispatcher
from tamma_actors._errors import (
    ActorStopped,
    IllegalTransition,
    StoreCorrupted,
    StoreError,
    SupervisionError,
    TammaError,
    UnknownExecution,
    UnknownStep,
)
from tamma_actors._execution import (
    Abort,
    ExecutionDeps,
    ExecutionSupervisor,
    GetRecord,
    Pause,
    Resume,
    RetryStep,
    Start,
    Wait,
)
from tamma_actors._explain import Explain, explain
from tamma_actors._keys import new_execution_id
from tamma_actors._models import WorkflowConfig
from tamma_actors._probe import StepProbe, probe_task_id
from tamma_actors._recovery import EngineRecovery
from tamma_actors._state import ExecutionState, replay, to_record, to_status
from tamma_actors._store import Store
from tamma_actors._subflows import EngineChildren
from tamma_actors._timers import TimerHandle
from tamma_actors._watchdog import Watchdog
from tamma_actors._workflow_file import parse_workflow

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


def _done(value: T) -> Future[T]:
    fut: Future[T] = Future()
    fut.set_result(value)
    return fut


def _failed(exc: BaseException) -> Future[Any]:
    fut: Future[Any] = Future()
    fut.set_exception(exc)
    return fut


def _guard(fn: Callable[..., Future[T]]) -> Callable[..., Future[T]]:
    """Every engine call answers with a future, even when it fails before any work."""

    def wrapper(*args: Any, **kwargs: Any) -> Future[T]:
        try:
            return fn(*args, **kwargs)
        except TammaError as exc:
            return _failed(exc)

    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper


_PARSED_CACHE_SIZE = 64  # distinct definitions kept parsed for start_workflow


def _canonical(definition: Any) -> str | None:
    """Canonical JSON text of ``definition``, or None unless it is plain JSON data that
    round-trips exactly (no tuples, non-string keys, NaN or other Python objects)."""
    try:
        text = json.dumps(definition, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError):
        return None
    return text if json.loads(text) == definition else None


class Engine(EngineRecovery):
    def __init__(self, parts: EngineParts) -> None:
        self._store = parts.store
        self._dispatcher = parts.dispatcher
        self._deps = replace(
            parts.deps,
            on_terminal=self._retire,
            on_commit_lost=self._commit_lost,
            children=EngineChildren(self, parts.store, parts.deps.timers),
            breakers=parts.deps.breakers or _breaker_registry(parts),
        )
        self._implementations = parts.implementations
        self._health_extra = parts.health_extra
        self._write_block = parts.write_block
        self._admin = StoreAdmin(parts.store)
        self._draining = False
        self.unrecovered: dict[str, str] = {}  # execution id -> why it could not recover
        self.repaired: dict[str, str] = {}  # recovered from the full log: the snapshot was bad
        self._recovering = False
        self._activated: set[str] = set()  # brought back by the recovery running now
        self._configs: dict[str, WorkflowConfig] = {}  # digest -> parsed, while recovering
        self._resting: dict[str, TimerHandle] = {}  # recovered, waiting: their wake timers
        self._unconfirmed: set[str] = set()  # stopped on a lost writer: back when it is
        self._parsed_cache: dict[
            tuple[str, frozenset[str]], tuple[WorkflowConfig, str, dict[str, Any]]
        ] = {}  # (canonical definition, known implementations) -> parsed, for starts
        self._lock = threading.Lock()
        self._live: dict[str, pykka.ActorRef[Any]] = {}
        self._started = time.time()
        self._closed = False
        self._watchdog = Watchdog(
            parts.deps.timers, parts.watchdog_interval, lambda: list(self._live.values())
        )

    # -- live executions -------------------------------------------------------------------

    def _retire(self, execution_id: str) -> None:
        """Called after an execution's terminal commit: later requests go to the store.

        The stop is told under the lock, so anything routed to the actor before it was
        retired sits in its inbox ahead of the stop and is still answered."""
        with self._lock:
            ref = self._live.pop(execution_id, None)
            if ref is not None:
                with contextlib.suppress(pykka.ActorDeadError):
                    ref.stop(block=False)

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
        with self._lock:
            if self._closed:
                raise TammaError("the engine is shutting down")
            ref = ExecutionSupervisor.start(
                self._dispatcher, self._deps, cfg, state, definition=definition
            )
            self._live[state.id] = ref
            ref.tell(message)

    @property
    def live_count(self) -> int:
        return len(self._live)

    # -- AsyncEngine -----------------------------------------------------------------------

    @_guard
    def start_workflow(
        self,
        definition: dict[str, Any],
        inputs: dict[str, Any],
        *,
        source: str | None = None,
        execution_id: str | None = None,  # a subflow's child: its id is chosen by its parent
    ) -> Future[dict[str, Any]]:
        # a subflow's child is part of its parent's committed work, not new intake
        self._check_intake(draining_too=execution_id is None)
        cfg, digest, dumped = self._parsed(definition, source)
        created = {
            "workflow_id": cfg.name,
            "workflow_version": cfg.version,
            "digest": digest,
            "inputs": dict(inputs),
            "steps": [s.name for s in cfg.steps],
            "source": source,
        }
        # The definition, the created and started events and the first dispatches reach
        # the store in one transaction: the supervisor's first commit.
        reply: Future[dict[str, Any]] = Future()
        state = ExecutionState(id=execution_id or new_execution_id())
        self._spawn(
            cfg,
            state,
            Start(reply, created),
            definition=(digest, dumped),
        )
        return reply

    def _parsed(
        self, definition: dict[str, Any], source: str | None
    ) -> tuple[WorkflowConfig, str, dict[str, Any]]:
        """The parsed definition, its digest and its stored form: validated and hashed
        once per distinct definition (and set of known implementations), not per start.

        Only a definition that is plain JSON (it round-trips exactly) is cached: its
        canonical text is then a faithful key. A rejected definition is never cached."""
        known = frozenset({*self._implementations(), *COORDINATOR_IMPLEMENTATIONS})
        key = _canonical(definition)
        hit = self._parsed_cache.get((key, known)) if key is not None else None
        if hit is not None:
            return hit
        cfg = parse_workflow(definition, source=source, known_implementations=known)
        parsed = (cfg, cfg.digest(), cfg.model_dump(mode="json", by_alias=False))
        if key is not None:
            with self._lock:
                if len(self._parsed_cache) >= _PARSED_CACHE_SIZE:
                    self._parsed_cache.pop(next(iter(self._parsed_cache)))
                self._parsed_cache[(key, known)] = parsed
        return parsed

    def _ask(self, execution_id: str, make: Callable[[Future[Any]], Any]) -> Future[Any]:
        reply: Future[Any] = Future()
        if self._route(execution_id, make(reply)):
            return reply
        if self._activated_on_demand(execution_id) and self._route(execution_id, make(reply)):
            return reply
        return self._from_store_or_refuse(execution_id, make)

    def _read(self, execution_id: str, make: Callable[[Future[Any]], Any]) -> Future[Any]:
        """A read, answered by the live supervisor; if that one stopped on a failed commit
        (a full or failing disk), the store's committed state answers instead. A resting
        execution is read from the store (current while it rests), unless the read waits
        for its end."""
        if self._is_resting(execution_id) and not isinstance(make(Future()), Wait):
            return self._from_store_or_refuse(execution_id, make)
        live = self._ask(execution_id, make)
        out: Future[Any] = Future()

        def settle(fut: Future[Any]) -> None:
            exc = fut.exception()
            if exc is None:
                out.set_result(fut.result())
            elif not isinstance(exc, StoreError | ActorStopped):
                out.set_exception(exc)
            else:
                try:
                    out.set_result(self._from_store_or_refuse(execution_id, make).result())
                except TammaError as err:
                    out.set_exception(err)

        live.add_done_callback(settle)
        return out

    def _from_store_or_refuse(
        self, execution_id: str, make: Callable[[Future[Any]], Any]
    ) -> Future[Any]:
        state = self._load(execution_id)
        probe = make(Future())
        if isinstance(probe, GetRecord):
            return _done(to_status(state) if probe.status_only else to_record(state))
        if isinstance(probe, Wait):
            return _done(to_record(state))
        if isinstance(probe, Explain):
            return _done(explain(state, self._definition_of(state), time.time()))
        return _done_or_refuse(state, probe)

    @_guard
    def pause_workflow(self, execution_id: str) -> Future[dict[str, Any]]:
        return self._ask(execution_id, lambda r: Pause(r))

    @_guard
    def resume_workflow(self, execution_id: str) -> Future[dict[str, Any]]:
        return self._ask(execution_id, lambda r: Resume(r))

    @_guard
    def abort_workflow(
        self, execution_id: str, reason: str | None = None
    ) -> Future[dict[str, Any]]:
        return self._ask(execution_id, lambda r: Abort(r, reason))

    @_guard
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
            return _done_or_refuse(state, RetryStep(step, reply))
        # A failed execution is revived: a supervisor re-activates it and retries the step.
        self._check_intake()
        cfg = self._definition_of(state)
        self._spawn(cfg, state, RetryStep(step, reply))
        return reply

    @_guard
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
            raise IllegalTransition(
                f"step {step!r} is a {spec.type} step without a worker implementation; "
                "only steps that run on a worker can be executed on their own"
            )
        tid = probe_task_id(execution_id, step)
        deps = cfg.deps(step)
        task = {
            "task_id": tid,
            "execution_id": execution_id,
            "step": step,
            "attempt": 1,
            "implementation": impl,
            "config": spec.config,
            "input": context,
            "inputs": state.context,
            "upstream": {d: state.steps[d].data for d in deps},
            "idempotency_key": tid,
            "item_index": None,
        }
        reply: Future[dict[str, Any]] = Future()
        StepProbe.start(
            self._dispatcher, self._deps.pool, self._deps.timers, task, reply, timeout
        )
        return reply

    @_guard
    def get_workflow(self, execution_id: str) -> Future[dict[str, Any]]:
        return self._read(execution_id, lambda r: GetRecord(r))

    @_guard
    def get_workflow_status(self, execution_id: str) -> Future[dict[str, Any]]:
        return self._read(execution_id, lambda r: GetRecord(r, status_only=True))

    @_guard
    def wait(self, execution_id: str, timeout: float | None = None) -> Future[dict[str, Any]]:
        return self._read(execution_id, lambda r: Wait(r, timeout))

    @_guard
    def list_workflows(
        self,
        *,
        status: list[str] | None = None,
        workflow_id: str | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> Future[list[dict[str, Any]]]:
        ids = [s["id"] for s in self._summaries(status, workflow_id)][
            offset : None if limit is None else offset + limit
        ]
        futures = [self.get_workflow(eid) for eid in ids]
        out: Future[list[dict[str, Any]]] = Future()
        _gather(futures, out)
        return out

    @_guard
    def get_events(
        self, execution_id: str, from_seq: int = 0, limit: int | None = None
    ) -> Future[list[dict[str, Any]]]:
        if self._store.get_summary(execution_id) is None:
            raise UnknownExecution(f"no execution {execution_id!r}")
        return _done(self._store.read_events(execution_id, max(1, from_seq), limit))

    @_guard
    def explain(self, execution_id: str) -> Future[dict[str, Any]]:
        """Why the execution is where it is: a one-line summary, and per step what it
        waits for (see tamma_actors/_explain.py)."""
        offered = self._offered_plugins()
        return self._ask(execution_id, lambda r: Explain(r, offered))

    def _offered_plugins(self) -> frozenset[str] | None:
        workers = (self._health_extra().get("workers") or {}).get("workers")
        if workers is None:
            return None
        return frozenset(p for w in workers for p in w.get("plugins", ()))

    @_guard
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
        return _done(report)

    # -- recovery and shutdown -------------------------------------------------------------

    def drain(self) -> None:
        """Stop intake for a graceful shutdown: new starts and revivals are refused."""
        self._draining = True

    def _check_intake(self, *, draining_too: bool = True) -> None:
        if (self._draining and draining_too) or self._closed:
            raise SupervisionError("the node is shutting down; it accepts no new work")
        blocked = self._write_block()
        if blocked is not None:
            raise blocked

    # -- administration (admin role; see _admin.py) ------------------------------------------

    @_guard
    def admin_verify(self) -> Future[dict[str, Any]]:
        return self._admin.verify()

    @_guard
    def admin_backup(self, dest: str) -> Future[dict[str, Any]]:
        return self._admin.backup(dest)

    @_guard
    def admin_cleanup(self, older_than_days: float) -> Future[dict[str, Any]]:
        return self._admin.cleanup(older_than_days)

    def close(self, timeout: float = 10.0) -> None:
        """Stop taking executions and stop their supervisors (their state is in the store)."""
        self._admin.close()
        self._stop_resting()
        with self._lock:
            self._closed = True
            refs = list(self._live.values())
            self._live.clear()
        for ref in refs:
            with contextlib.suppress(pykka.ActorDeadError, pykka.Timeout):
                ref.stop(block=True, timeout=timeout)
        if self._deps.breakers is not None:
            self._deps.breakers.close()
        self._watchdog.close()

    # -- store access ----------------------------------------------------------------------

    def _summaries(
        self, status: list[str] | None, workflow_id: str | None
    ) -> Iterator[dict[str, Any]]:
        wanted = set(status) if status else None
        for summary in self._store.iter_summaries():
            if wanted is not None and summary.get("status") not in wanted:
                continue
            if workflow_id is not None and summary.get("workflow_id") != workflow_id:
                continue
            yield summary

    def _load(self, execution_id: str) -> ExecutionState:
        records = self._store.read_execution(execution_id)
        if records is None:
            raise UnknownExecution(f"no execution {execution_id!r}")
        return replay(execution_id, records.events, records.snapshot)

    def _definition_of(self, state: ExecutionState) -> WorkflowConfig:
        definition = self._store.get_definition(state.digest)
        if definition is None:
            raise StoreCorrupted(
                f"execution {state.id}: workflow definition {state.digest} is missing"
            )
        return parse_workflow(definition, source=f"definition {state.digest[:12]}")


def _breaker_registry(parts: EngineParts) -> BreakerRegistry:
    """The node's breakers, as the store last saw them."""
    deps = parts.deps
    return BreakerRegistry(
        deps.writer, deps.timers, bus=deps.bus, clock=deps.clock, loaded=parts.store.get_breakers()
    )


def _done_or_refuse(state: ExecutionState, probe: Any) -> Future[dict[str, Any]]:
    """A control request for an execution that is no longer live (terminal)."""
    if isinstance(probe, RetryStep) and probe.step not in state.steps:
        return _failed(UnknownStep(f"execution {state.id} has no step {probe.step!r}"))
    record = to_record(state)
    wanted = {Pause: "paused", Resume: "running", Abort: "aborted"}.get(type(probe))
    if wanted is not None and state.status == wanted:
        return _done(record)  # idempotent: it is already where it was asked to go
    action = type(probe).__name__.lower().replace("retrystep", "retry a step of")
    return _failed(IllegalTransition(f"execution {state.id} is {state.status}; cannot {action} it"))


def _gather(futures: list[Future[dict[str, Any]]], out: Future[list[dict[str, Any]]]) -> None:
    if not futures:
        out.set_result([])
        return
    remaining = [len(futures)]
    lock = threading.Lock()

    def one_done(_: Future[dict[str, Any]]) -> None:
        with lock:
            remaining[0] -= 1
            last = remaining[0] == 0
        if not last:
            return
        results = []
        for fut in futures:
            exc = fut.exception()
            if exc is None:
                results.append(fut.result())
            elif not isinstance(exc, UnknownExecution):  # deleted meanwhile: leave it out
                out.set_exception(exc)
                return
        out.set_result(results)

    for fut in futures:
        fut.add_done_callback(one_done)
