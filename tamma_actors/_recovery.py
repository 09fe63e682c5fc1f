"""Recovery: every execution that was not terminal when the node stopped comes back.

The engine's mixin. The recovery loop reads executions 256 per read transaction and brings
each back through the normal path: a supervisor re-activated with ``Recover`` re-dispatches
whatever was in flight and re-arms its timers. An execution with nothing to do but wait
(its open steps are ``wait`` steps, or pending behind them) *rests* instead, as DESIGN.md
allows for idle executions: no supervisor, only a wake-up timer at its earliest deadline
(a wait step's end or the workflow timeout). Its supervisor is made when that timer fires
(by the ``Waker``, on a dispatcher thread), or as soon as a request other than a read
names it; reads are answered from the store, which is current (nothing writes an
execution while it rests). A restart with thousands of parked executions thus costs a
read and a replay each, not a supervisor and its first turn.

A live execution that comes to have nothing to do but wait rests the same way
(``_rest``, asked by its supervisor: ``_execution_rest``).

The same path brings back, once a store writer is running again, an execution that
stopped because its writer process died before confirming a commit (``_commit_lost``),
and an execution whose supervisor failed (a turn raised: a bug), from what its store
holds once its last commit is in (``_supervisor_failed``): it rests for 0.1, then 1, then
10 seconds (a request brings it back at once) before each of its first three revivals; a
fourth failure leaves it as the store has it, listed in health as unrecoverable with the
error (a restart tries again), rather than reviving a bug in a loop. Failures are counted
over the last hour: one that comes an hour after the one before counts as the first again.

Requests are served while the loop runs: one for an execution the loop has not reached yet
activates it on the spot, and each execution is activated once, whichever comes first.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any, TypeGuard, TypeVar

import pykka

from tamma_actors._dispatch import Dispatcher, PoolActor
from tamma_actors._errors import ShuttingDown, StoreCorrupted, StoreError, TammaError
from tamma_actors._execution import ExecutionDeps, ExecutionSupervisor, Recover
from tamma_actors._execution_rest import rest_until
from tamma_actors._state import ExecutionState, replay
from tamma_actors._store import ExecutionRecords, Store

if TYPE_CHECKING:
    from tamma_actors._models import WorkflowConfig
    from tamma_actors._timers import TimerHandle

__all__ = ["TERMINAL", "EngineRecovery", "Waker", "keep_bounded"]

log = logging.getLogger("tamma_actors._engine")

TERMINAL = frozenset({"completed", "failed", "aborted"})
_RECOVERY_PAGE = 256  # executions read per read transaction while recovering
# Distinct definitions kept parsed for recovery and wakes (oldest out first): one parse per
# definition however many executions share it, and a bound when each has its own (a
# parsed 10-step definition is ~10 KiB, 10 times what a resting execution costs).
_DEFINITIONS_KEPT = 256
# How long an execution whose supervisor failed rests before each revival; one failure
# more than there are entries and it is left to the store (and to the next restart).
_REVIVE_AFTER = (0.1, 1.0, 10.0)
# A failure this long (seconds) after an execution's last one counts as its first again;
# only the failures of the last such span are remembered.
_FAILURES_REMEMBERED = 3600.0


_K = TypeVar("_K")
_V = TypeVar("_V")


def keep_bounded(cache: dict[_K, _V], key: _K, value: _V, size: int) -> None:
    """Keep ``key`` as the newest of at most ``size`` entries (the oldest out first)."""
    cache.pop(key, None)
    if len(cache) >= size:
        cache.pop(next(iter(cache)))
    cache[key] = value


class _Unread:
    """The records of an execution not read yet (``_activate`` reads them itself)."""


_UNREAD = _Unread()
_Read = ExecutionRecords | StoreError | None | _Unread


def _read_alone(records: _Read) -> TypeGuard[ExecutionRecords]:
    """The recovery loop read only this summary, for its ``rest`` time (``rest_alone``)."""
    return (
        isinstance(records, ExecutionRecords)
        and "rest" in records.summary
        and records.summary.get("status") not in TERMINAL
        and records.snapshot is None
        and not records.events
    )


def _rest_in_summary(records: _Read) -> float | None:
    """The ``rest`` time of a summary the recovery loop read alone: the execution may rest
    until then (its last commit said so: ``CommitCycle._rest_hint``), and neither its
    snapshot nor its events need be read, nor its definition parsed. None if there is no
    such time, or it is not a finite number of a running execution."""
    if not _read_alone(records):
        return None
    wake = records.summary["rest"]
    usable = isinstance(wake, int | float) and not isinstance(wake, bool) and math.isfinite(wake)
    return float(wake) if usable and records.summary.get("status") == "running" else None


class Waker(PoolActor):
    """Wakes the resting executions whose timers fired, one message (an execution id)
    each, a dispatcher batch per turn: a flood of waits ending together neither holds up
    the timer thread (other executions' deadlines) nor a dispatcher thread for long."""

    def __init__(self, dispatcher: Dispatcher, wake: Callable[[str], bool]) -> None:
        super().__init__(dispatcher)
        self._wake = wake

    def on_receive(self, message: Any) -> None:
        self._wake(message)


class EngineRecovery:
    """Recovery and resting executions; mixed into :class:`~tamma_actors._engine.Engine`."""

    if TYPE_CHECKING:
        _store: Store
        _dispatcher: Dispatcher
        _deps: ExecutionDeps
        _lock: threading.Lock
        _closed: bool
        _live: dict[str, pykka.ActorRef[Any]]
        _recovering: bool
        _activated: set[str]
        _configs: dict[str, WorkflowConfig]
        _resting: dict[str, TimerHandle]
        _unconfirmed: set[str]
        _failures: dict[str, tuple[int, float]]
        _rest_after: float | None
        _waker: pykka.ActorRef[Any]
        unrecovered: dict[str, str]
        repaired: dict[str, str]

        def _definition_of(self, state: ExecutionState) -> WorkflowConfig: ...
        def _hand_over_waits(self, eid: str, ref: pykka.ActorRef[Any]) -> None: ...
        def _answer_held_of(self, eid: str) -> None: ...

    @property
    def resting_count(self) -> int:
        return len(self._resting)

    def recover(self) -> int:
        """Bring back every execution that was not terminal when the node stopped; returns
        how many (re-activated or resting), whether the loop reached it first or a request
        named it (a subflow's parent, re-attaching to its child, may). An execution whose
        records are damaged is not brought back, and not skipped in silence either: it is
        logged and listed in ``unrecovered`` (and in health) with the reason naming the bad
        key; the node starts and serves the others."""
        self._recovering = True
        try:
            ids = list(self._store.iter_execution_ids())
            for first in range(0, len(ids), _RECOVERY_PAGE):
                page = ids[first : first + _RECOVERY_PAGE]
                found = self._store.read_executions(page, unless=TERMINAL, rest_alone=True)
                for eid, records in zip(page, found, strict=True):
                    try:
                        self._activate(eid, records)
                    except TammaError as exc:
                        log.error("execution %s cannot be recovered: %s", eid, exc)
                        self.unrecovered[eid] = str(exc)
        finally:
            with self._lock:
                count = len(self._activated)  # by the loop or on demand, each once
                self._recovering = False
                self._activated.clear()  # from now on a request finds it live or resting
                if not self._resting:
                    self._configs.clear()
        return count

    def _activate(self, eid: str, records: _Read = _UNREAD) -> bool:
        """Bring ``eid`` back if it is not terminal and not yet back; True if this call did.
        ``records``: what the recovery loop already read of it (only this engine writes an
        execution it has not activated, so they are current). Only the loop lets an
        execution rest: a request activates what it names."""
        with self._lock:
            if eid in self._activated or eid in self._live or eid in self._resting:
                return False
        made = None
        wake = _rest_in_summary(records)
        if wake is None:
            if _read_alone(records):  # a rest time it cannot use: read it all after all
                records = self._store.read_execution(eid, unless=TERMINAL)
            state = self._recovered_state(eid, records)
            if state is None:  # ended (or gone): waits held for its return get its end
                self._answer_held_of(eid)
                return False
            cfg = self._config_of(state)
            wake = None if isinstance(records, _Unread) else rest_until(state, cfg)
            if wake is None:  # made before the lock is taken (see _wake); dropped if it loses
                made = ExecutionSupervisor(self._dispatcher, self._deps, cfg, state)
        with self._lock:
            if self._closed:
                raise ShuttingDown("the engine is shutting down")
            if eid in self._activated or eid in self._live or eid in self._resting:
                return False  # the loop or a request got there first (maybe as it ended)
            if self._recovering:  # what the loop activated, forgotten when it ends
                self._activated.add(eid)
            if made is not None:
                self._start_supervisor(made)
            else:  # it rests until ``wake`` (None only when a supervisor was made)
                self._rest_for(eid, (wake or 0.0) - self._deps.clock())
        return True

    def _rest(
        self,
        ref: pykka.ActorRef[Any],
        state: ExecutionState,
        cfg: WorkflowConfig,
        wake: float,
        idle: Callable[[], bool],
    ) -> bool:
        """A live supervisor with nothing to do but wait until ``wake`` asks to rest
        (``_execution_rest``); True if its execution now rests and the supervisor must
        stop: when ``wake`` is at least ``rest_after`` seconds away (sooner, keeping the
        supervisor costs less than a wake's read). Under the lock, so no request is routed
        to it from here on; ``idle`` says that none was routed to it before either."""
        if self._rest_after is None or wake - self._deps.clock() < self._rest_after:
            return False
        with self._lock:
            if self._closed or self._live.get(state.id) is not ref or not idle():
                return False
            del self._live[state.id]
            self._keep_config(state.digest, cfg)  # a wake need not parse it again
            self._rest_for(state.id, wake - self._deps.clock())
        return True

    def _rest_for(self, eid: str, delay: float) -> None:
        """Under ``_lock``: ``eid`` rests, and its timer wakes it ``delay`` seconds from now."""
        timer = self._deps.timers.call_later(max(0.0, delay), partial(self._woken, eid))
        self._resting[eid] = timer

    def _commit_lost(self, eid: str) -> None:
        """``eid`` stopped: its store writer died before confirming a commit."""
        with self._lock:
            self._unconfirmed.add(eid)

    def _supervisor_failed(self, eid: str, error: BaseException | None) -> None:
        """``eid``'s supervisor stopped on an exception in a turn, and what it committed is
        in the store: it rests until its next revival (see the module's docstring), or,
        past the last one, is reported and left to the store."""
        why = f"{type(error).__name__}: {error}"
        with self._lock:
            if self._closed or eid in self._live or eid in self._resting:
                return  # shutting down, or already back (a request named it meanwhile)
            now = self._deps.clock()
            recent = {e: f for e, f in self._failures.items() if now - f[1] < _FAILURES_REMEMBERED}
            failures = recent.get(eid, (0, now))[0] + 1
            recent[eid] = (failures, now)
            self._failures = recent
            if failures > len(_REVIVE_AFTER):
                said = self.unrecovered[eid] = (
                    f"its supervisor failed {failures} times, the last with {why}; "
                    "it stays as the store has it until the node restarts"
                )
            else:
                delay = _REVIVE_AFTER[failures - 1]
                self._rest_for(eid, delay)
                said = (f"its supervisor failed ({why}); it is brought back from the store "
                        f"in {delay:g}s (revival {failures} of {len(_REVIVE_AFTER)})")  # fmt: skip
        log.error("execution %s: %s", eid, said)

    def _readmit(self, eid: str) -> None:
        """An abort asked for an execution given up after its supervisor kept failing:
        brought back from the store once more, so that a supervisor records the abort (one
        whose records cannot be read stays given up, and the abort is refused)."""
        if eid not in self.unrecovered:
            return
        try:
            self._activate(eid)
        except TammaError as exc:
            log.warning("execution %s cannot be brought back to abort it: %s", eid, exc)
            return
        self.unrecovered.pop(eid, None)

    def reactivate_unconfirmed(self) -> int:
        """A store writer is back: bring back, from what the store has, each execution
        that stopped because its writer could not confirm a commit; returns how many."""
        with self._lock:
            ids, self._unconfirmed = self._unconfirmed, set()
        count = 0
        for eid in sorted(ids):
            try:
                count += self._activate(eid)
            except TammaError as exc:
                log.error("execution %s cannot be brought back: %s", eid, exc)
                self.unrecovered[eid] = str(exc)
        if count:
            log.warning("%d execution(s) re-read from the store after the writer restarted", count)
        return count

    def _config_of(self, state: ExecutionState) -> WorkflowConfig:
        """The parsed definition, once per definition while recovering or resting (up to
        ``_DEFINITIONS_KEPT`` distinct ones)."""
        cfg = self._configs.get(state.digest)
        if cfg is None:
            cfg = self._definition_of(state)
            with self._lock:
                self._keep_config(state.digest, cfg)
        return cfg

    def _keep_config(self, digest: str, cfg: WorkflowConfig) -> None:
        """Under ``_lock``: remember a parsed definition, the oldest out beyond the bound."""
        keep_bounded(self._configs, digest, cfg, _DEFINITIONS_KEPT)

    def _start_supervisor(self, supervisor: ExecutionSupervisor) -> None:
        """Under ``_lock``: start a recovered state's supervisor (made before the lock was
        taken: see ``_wake``), through the normal path."""
        ref = supervisor.started()
        self._live[supervisor.state.id] = ref
        ref.tell(Recover())
        self._hand_over_waits(supervisor.state.id, ref)

    def _wake(self, eid: str) -> bool:
        """A resting execution's supervisor, made now (its timer fired, or a request came);
        False if it was not resting.

        Its records are read and replayed, and its supervisor made, before the lock is
        taken (a store read gives up the GIL at every step, and so would a wait for the
        lock behind it): nothing writes a resting execution, only its own supervisor
        would. Under the lock it then goes from resting to live at once, so a request
        racing the timer finds it either resting or live, never in between. If another
        thread woke it meanwhile (it may even rest again, with another timer), what was
        read is dropped and it is looked at again."""
        while True:
            with self._lock:
                handle = self._resting.get(eid)
            if handle is None:
                return False
            error: TammaError | None = None
            made: ExecutionSupervisor | None = None
            try:
                state = self._recovered_state(eid)
                if state is not None:
                    cfg = self._config_of(state)
                    made = ExecutionSupervisor(self._dispatcher, self._deps, cfg, state)
            except TammaError as exc:
                error = exc
            with self._lock:
                if self._resting.get(eid) is not handle:
                    continue
                del self._resting[eid]
                handle.cancel()
                if error is not None:
                    log.error("execution %s cannot be woken: %s", eid, error)
                    self.unrecovered[eid] = str(error)
                elif made is not None and not self._closed:
                    self._start_supervisor(made)
                if not self._resting and not self._recovering:
                    self._configs.clear()
            return True

    def _woken(self, eid: str) -> None:
        """Its timer fired: the waker wakes it on a dispatcher thread (a wake reads the
        store and replays; the timer thread only tells)."""
        with contextlib.suppress(pykka.ActorDeadError):  # closing: it stays in the store
            self._waker.tell(eid)

    def _is_resting(self, eid: str) -> bool:
        return eid in self._resting

    def _activated_on_demand(self, eid: str) -> bool:
        """Make sure ``eid`` is live before a request is routed to it: a resting execution
        is woken; during recovery, one the loop has not reached yet is activated. True
        also when it became live meanwhile (the waker woke it after the request looked)."""
        if self._wake(eid) or eid in self._live:
            return True
        if not self._recovering:
            return False
        try:
            self._activate(eid)
        except TammaError:
            return False  # the recovery loop reports it; the request goes to the store
        return True

    def _stop_resting(self) -> None:
        """Shutting down: resting executions stay as the store has them."""
        with self._lock:
            handles = list(self._resting.values())
            self._resting.clear()
        for handle in handles:
            handle.cancel()
        with contextlib.suppress(pykka.ActorDeadError, pykka.Timeout):
            self._waker.stop(block=True, timeout=5.0)

    def _recovered_state(self, eid: str, records: _Read = _UNREAD) -> ExecutionState | None:
        """The state from the snapshot path, or, when the snapshot is damaged, from a
        replay of the whole event log (reported, never silent); None when there is
        nothing to recover (no summary, or a terminal one)."""
        try:
            if isinstance(records, _Unread):
                records = self._store.read_execution(eid, unless=TERMINAL)
            if isinstance(records, StoreError):
                raise records
            if records is None or records.summary.get("status") in TERMINAL:
                return None
            return replay(eid, records.events, records.snapshot)
        except StoreCorrupted as exc:
            self._store.get_summary(eid)  # a damaged summary is not repaired: it raises
            state = replay(eid, self._store.read_events(eid, 1))  # raises if the log is bad
            log.error("execution %s: %s; recovered from its full event log", eid, exc)
            self.repaired[eid] = str(exc)
            return state
