"""The engine's read side (a mixin of :class:`~tamma_actors._engine.Engine`): records,
statuses, waits, lists, events and explanations. A live execution's supervisor answers
(after its pending commits); one that is not live, resting or stopped on a failed commit
is answered from the store, which holds its committed state, except a wait for the end of
an unfinished one: that is held until the execution is driven again or its time is up.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from itertools import islice
from typing import TYPE_CHECKING, Any, TypeVar

import pykka

from tamma_actors._errors import (
    ActorStopped,
    FrameTooLarge,
    IllegalTransition,
    ShuttingDown,
    StoreCorrupted,
    StoreError,
    TammaError,
    UnknownExecution,
    UnknownStep,
)
from tamma_actors._execution import Abort, GetRecord, Pause, Resume, RetryStep, Wait
from tamma_actors._execution_commit import fail, resolve
from tamma_actors._explain import Explain, explain
from tamma_actors._futures import done, failed, gather, guarded, relay
from tamma_actors._keys import MAX_SEQ
from tamma_actors._models import WorkflowConfig
from tamma_actors._state import ExecutionState, replay, to_record, to_status
from tamma_actors._workflow_file import parse_workflow

if TYPE_CHECKING:
    from tamma_actors._execution import ExecutionDeps
    from tamma_actors._store import Store
    from tamma_actors._timers import TimerHandle

__all__ = ["SUMMARY_KEYS", "EngineReads", "HeldWait", "done_or_refuse"]

_T = TypeVar("_T")


@dataclass(eq=False)
class HeldWait:
    """A wait for the end of an execution that nothing drives at the moment (see
    ``EngineReads._hold_wait``): its reply, when its time is up (``deps.clock``), and the
    timer that answers it then."""

    reply: Future[dict[str, Any]]
    deadline: float | None
    timer: TimerHandle | None = None


# Records a list builds before it lets the node's other threads have the GIL (~0.15 ms
# each): without that, a request that came meanwhile waited for its forced switch
# interval again at each of its hand-offs.
_LIST_YIELD_EVERY = 16


# What a summary shows of the stored one (``_state_views.to_summary``, less its internals).
SUMMARY_KEYS = ("id", "workflow_id", "status", "start_time", "end_time", "current_step", "seq")


def _page(items: Iterator[_T], offset: int, limit: int | None, most: int | None) -> list[_T]:
    """``items[offset:offset + limit]``; more than ``most`` raises ``FrameTooLarge``."""
    upto = _upto(limit, most)  # only as far as the page
    offset = min(offset, sys.maxsize)  # past any count there is: an empty page
    stop = None if upto is None else min(offset + upto, sys.maxsize)
    page = list(islice(items, offset, stop))
    if most is not None and len(page) > most:
        raise FrameTooLarge(
            f"more than {most:,} executions match, and one 'list' reply holds at most "
            f"{most:,}: page through them with limit and offset"
        )
    return page


def _upto(limit: int | None, most: int | None) -> int | None:
    """How many records to read for a request: its limit, or without one a bound's one
    more than ``most`` (which tells there are too many)."""
    return most + 1 if limit is None and most is not None else limit


class EngineReads:
    """Reads; mixed into the engine, which routes (``_ask``) and knows who rests."""

    if TYPE_CHECKING:
        _store: Store
        _deps: ExecutionDeps
        _lister: ThreadPoolExecutor
        _health_extra: Callable[[], dict[str, Any]]
        _lock: threading.Lock
        _live: dict[str, pykka.ActorRef[Any]]
        _resting: dict[str, TimerHandle]
        _held: dict[str, list[HeldWait]]
        _closed: bool
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
                    relay(self._from_store_or_refuse(execution_id, make), out)
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
            return done(to_record(state)) if state.terminal else self._hold_wait(state, make)
        if isinstance(probe, Explain):
            why = explain(
                state,
                self._definition_of(state),
                time.time(),
                offered=probe.offered,
                child_status=probe.child_status,
            )
            stuck = self.unrecovered.get(execution_id)
            if stuck is not None and not state.terminal:  # nothing drives it: say so first
                why["summary"] = f"not driven by this node: {stuck}; {why['summary']}"
            return done(why)
        return done_or_refuse(state, probe)

    def _hold_wait(
        self, state: ExecutionState, make: Callable[[Future[Any]], Any]
    ) -> Future[dict[str, Any]]:
        """A wait for the end of an execution that is neither terminal nor driven by a
        supervisor (its supervisor failed and it is not back yet, its store writer died,
        or it was given up): held until its time is up, then answered with what the store
        has, or until the execution is brought back, then handed to its new supervisor
        (``_hand_over_waits``). Answering the unfinished record at once would make a
        client's wait loop ask again and again until its own deadline."""
        reply: Future[dict[str, Any]] = Future()
        probe = make(reply)
        eid = state.id
        with self._lock:
            if self._closed:
                return done(to_record(state))
            if eid not in self._live and eid not in self._resting:
                clock = self._deps.clock
                deadline = None if probe.timeout is None else clock() + probe.timeout
                held = HeldWait(reply, deadline)
                self._held.setdefault(eid, []).append(held)
                if probe.timeout is not None:
                    due = partial(self._held_wait_due, eid, held)
                    held.timer = self._deps.timers.call_later(probe.timeout, due)
                return reply
        return self._read(eid, make)  # it came back meanwhile: wait there

    def _held_wait_due(self, eid: str, held: HeldWait) -> None:
        """A held wait's time is up (on the timer thread): the store's record answers."""
        with self._lock:
            waits = self._held.get(eid, [])
            if held not in waits:
                return  # handed over, or answered on close
            waits.remove(held)
            if not waits:
                del self._held[eid]
        self._answer_from_store(eid, [held])

    def _hand_over_waits(self, eid: str, ref: pykka.ActorRef[Any]) -> None:
        """Under ``_lock``: ``eid`` is live again; its held waits wait on ``ref`` now,
        for the time each had left."""
        now = self._deps.clock()
        for held in self._held.pop(eid, ()):
            if held.timer is not None:
                held.timer.cancel()
            left = None if held.deadline is None else max(0.0, held.deadline - now)
            ref.tell(Wait(held.reply, left))

    def _answer_held_of(self, eid: str) -> None:
        """``eid`` has nothing to bring back (the store has its end: a writer that died
        after its last commit reached the file, before saying so, left the reads of the
        time one commit behind): the waits held for its return get what the store has."""
        with self._lock:
            if eid in self._live or eid in self._resting:
                return  # back after all: its waits were handed over
            waits = self._held.pop(eid, [])
        if waits:
            self._answer_from_store(eid, waits)

    def _answer_held_waits(self) -> None:
        """Closing: every held wait gets what the store has."""
        with self._lock:
            held, self._held = self._held, {}
        for eid, waits in held.items():
            self._answer_from_store(eid, waits)

    def _answer_from_store(self, eid: str, waits: list[HeldWait]) -> None:
        """Held ``waits`` (no longer in ``_held``) get the store's record of ``eid``."""
        for wait in waits:
            if wait.timer is not None:
                wait.timer.cancel()  # (when it is the timer that called: a no-op)
        try:
            record = to_record(self._load(eid))
        except TammaError as exc:
            for wait in waits:
                fail(wait.reply, exc)
            return
        for wait in waits:
            resolve(wait.reply, record)

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
        most: int | None = None,
        view: str = "record",
    ) -> Future[list[dict[str, Any]]]:
        """The matching executions' records in id order (oldest first for the ids the node
        makes; a client's own id sorts by its text), ``offset`` and ``limit`` paging
        them; more than ``most`` (when given) is refused before any record is built, with
        FrameTooLarge: the control server bounds one reply that way. Built on the list
        thread: the caller's thread (the control server's) goes on serving meanwhile.

        ``view="summary"``: the summaries the store keeps for listing instead (as of each
        execution's last commit, ``SUMMARY_KEYS``): no record is built or replayed, so a
        list costs a read per execution, and an execution whose record is over the frame
        cap lists too."""

        def records(out: Future[list[dict[str, Any]]]) -> None:
            ids = _page(self._matching_ids(status, workflow_id), offset, limit, most)
            found = []
            for i, eid in enumerate(ids, 1):
                found.append(self.get_workflow(eid))
                if i % _LIST_YIELD_EVERY == 0:
                    time.sleep(0)  # let the threads that wait for the GIL have it
            gather(found, out)

        def summaries(out: Future[list[dict[str, Any]]]) -> None:
            found = _page(self._matching_summaries(status, workflow_id), offset, limit, most)
            out.set_result([{key: s.get(key) for key in SUMMARY_KEYS} for s in found])

        build = summaries if view == "summary" else records
        out: Future[list[dict[str, Any]]] = Future()

        def run() -> None:
            try:
                build(out)
            except Exception as exc:
                out.set_exception(exc)

        def dropped(job: Future[None]) -> None:
            if job.cancelled():
                out.set_exception(ShuttingDown("the node is shutting down"))

        try:
            self._lister.submit(run).add_done_callback(dropped)
        except RuntimeError as exc:  # after close()
            raise ShuttingDown("the node is shutting down") from exc
        return out

    @guarded
    def get_events(
        self,
        execution_id: str,
        from_seq: int = 0,
        limit: int | None = None,
        most: int | None = None,
    ) -> Future[list[dict[str, Any]]]:
        """The events from ``from_seq`` on; without a limit, more than ``most`` (when
        given) is refused with FrameTooLarge, as a list's records are."""
        if self._store.get_summary(execution_id) is None:
            raise UnknownExecution(f"no execution {execution_id!r}")
        if from_seq > MAX_SEQ:  # past any event there can be
            return done([])
        upto = _upto(limit, most)
        upto = None if upto is None else min(upto, sys.maxsize)  # more than any count: all
        events = self._store.read_events(execution_id, max(1, from_seq), upto)
        if limit is None and most is not None and len(events) > most:
            raise FrameTooLarge(
                f"the execution has more than {most:,} events from there on, and one reply "
                f"holds at most {most:,}: page through them with from_seq and limit"
            )
        return done(events)

    @guarded
    def explain(self, execution_id: str) -> Future[dict[str, Any]]:
        """Why the execution is where it is: a one-line summary, and per step what it
        waits for (see tamma_actors/_explain.py)."""
        offered = self._offered_plugins()
        # leaves it resting
        return self._read(execution_id, lambda r: Explain(r, offered, self._child_status))

    def _child_status(self, child_id: str) -> str | None:
        summary = self._store.get_summary(child_id)
        return None if summary is None else str(summary["status"])

    def _offered_plugins(self) -> frozenset[str] | None:
        workers = (self._health_extra().get("workers") or {}).get("workers")
        if workers is None:
            return None
        return frozenset(p for w in workers for p in w.get("plugins", ()))

    def _matching_ids(self, status: list[str] | None, workflow_id: str | None) -> Iterator[str]:
        """The ids of the executions that match, in id order; without a filter from the
        keys alone (a fifth of the time: no summary is decoded)."""
        if not status and workflow_id is None:
            yield from self._store.iter_execution_ids()
            return
        for summary in self._matching_summaries(status, workflow_id):
            yield summary["id"]

    def _matching_summaries(
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
        return parse_workflow(definition, source=f"definition {state.digest[:12]}", stored=True)


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
