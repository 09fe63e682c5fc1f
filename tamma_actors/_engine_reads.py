"""The engine's read side (a mixin of :class:`~tamma_actors._engine.Engine`): records,
statuses, waits, lists, events and explanations. A live execution's supervisor answers
(after its pending commits); one that is not live, resting or stopped on a failed commit
is answered from the store, which holds its committed state.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from tamma_actors._errors import (
    ActorStopped,
    IllegalTransition,
    StoreCorrupted,
    StoreError,
    TammaError,
    UnknownExecution,
    UnknownStep,
)
from tamma_actors._execution import Abort, GetRecord, Pause, Resume, RetryStep, Wait
from tamma_actors._explain import Explain, explain
from tamma_actors._futures import done, failed, gather, guarded, relay
from tamma_actors._models import WorkflowConfig
from tamma_actors._state import ExecutionState, replay, to_record, to_status
from tamma_actors._workflow_file import parse_workflow

if TYPE_CHECKING:
    from tamma_actors._store import Store

__all__ = ["EngineReads", "done_or_refuse"]


class EngineReads:
    """Reads; mixed into the engine, which routes (``_ask``) and knows who rests."""

    if TYPE_CHECKING:
        _store: Store
        _health_extra: Callable[[], dict[str, Any]]
        unrecovered: dict[str, str]

        def _ask(self, execution_id: str, make: Callable[[Future[Any]], Any]) -> Future[Any]: ...
        def _is_resting(self, eid: str) -> bool: ...

    def _read(
        self, execution_id: str, make: Callable[[Future[Any]], Any], again: int = 3
    ) -> Future[Any]:
        """A read, answered by the live supervisor; if that one stopped on a failed commit
        (a full or failing disk), the store's committed state answers instead. A resting
        execution is read from the store (current while it rests), unless the read waits
        for its end. A wait whose supervisor stopped under it (a turn raised: the
        execution rests until it is brought back) is asked again, up to ``again`` times,
        so that it waits where the execution is now."""
        waits = isinstance(make(Future()), Wait)
        if self._is_resting(execution_id) and not waits:
            return self._from_store_or_refuse(execution_id, make)
        live = self._ask(execution_id, make)
        out: Future[Any] = Future()

        def settle(fut: Future[Any]) -> None:
            exc = fut.exception()
            if exc is None:
                out.set_result(fut.result())
            elif not isinstance(exc, StoreError | ActorStopped):
                out.set_exception(exc)
            elif waits and again > 0 and isinstance(exc, ActorStopped):
                try:
                    relay(self._read(execution_id, make, again - 1), out)
                except TammaError as err:  # the engine is closing, say
                    out.set_exception(err)
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
            return done(to_status(state) if probe.status_only else to_record(state))
        if isinstance(probe, Wait):
            return done(to_record(state))
        if isinstance(probe, Explain):
            why = explain(state, self._definition_of(state), time.time())
            stuck = self.unrecovered.get(execution_id)
            if stuck is not None and not state.terminal:  # nothing drives it: say so first
                why["summary"] = f"not driven by this node: {stuck}; {why['summary']}"
            return done(why)
        return done_or_refuse(state, probe)

    @guarded
    def get_workflow(self, execution_id: str) -> Future[dict[str, Any]]:
        return self._read(execution_id, lambda r: GetRecord(r))

    @guarded
    def get_workflow_status(self, execution_id: str) -> Future[dict[str, Any]]:
        return self._read(execution_id, lambda r: GetRecord(r, status_only=True))

    @guarded
    def wait(self, execution_id: str, timeout: float | None = None) -> Future[dict[str, Any]]:
        if timeout is None:
            return self._read(execution_id, lambda r: Wait(r, None))
        # Asked again after a supervisor stopped under it (see _read): only for what is left
        deadline = time.monotonic() + timeout
        return self._read(execution_id, lambda r: Wait(r, max(0.0, deadline - time.monotonic())))

    @guarded
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
        gather(futures, out)
        return out

    @guarded
    def get_events(
        self, execution_id: str, from_seq: int = 0, limit: int | None = None
    ) -> Future[list[dict[str, Any]]]:
        if self._store.get_summary(execution_id) is None:
            raise UnknownExecution(f"no execution {execution_id!r}")
        return done(self._store.read_events(execution_id, max(1, from_seq), limit))

    @guarded
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


def done_or_refuse(state: ExecutionState, probe: Any) -> Future[dict[str, Any]]:
    """A control request for an execution that is no longer live (terminal)."""
    if isinstance(probe, RetryStep) and probe.step not in state.steps:
        return failed(UnknownStep(f"execution {state.id} has no step {probe.step!r}"))
    record = to_record(state)
    wanted = {Pause: "paused", Resume: "running", Abort: "aborted"}.get(type(probe))
    if wanted is not None and state.status == wanted:
        return done(record)  # idempotent: it is already where it was asked to go
    action = type(probe).__name__.lower().replace("retrystep", "retry a step of")
    return failed(IllegalTransition(f"execution {state.id} is {state.status}; cannot {action} it"))
