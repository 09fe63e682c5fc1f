"""Resting: an execution with nothing to do but wait gives its supervisor back (a mixin of
:class:`~tamma_actors._execution.ExecutionSupervisor`).

An execution *may rest* when it runs, at least one ``wait`` step runs, and every other
open step is pending behind an unfinished step (:func:`rest_until`): until its earliest
deadline (a wait's end, or the workflow timeout) its supervisor would only hold timers.
Recovery lets such executions rest at once (``_recovery``); a live one offers to after a
commit that leaves it so: the commit's callback tells the supervisor :class:`MayRest`. If
nothing changed meanwhile (nothing in flight, to commit or waiting on its end) and its
inbox is empty (else it asks again after those messages), it asks the engine
(``ExecutionDeps.rest``), which lets it rest when the wake is far enough away (the node's
``rest_after``) and swaps it, under the engine's lock, for a wake-up timer; the
supervisor stops. Its state is the store's: every batch it decided is committed. The
timer, or any request other than a read, makes a new supervisor from the store.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tamma_actors._deadlines import WAIT_IMPLEMENTATION
from tamma_actors._state import step_is_terminal
from tamma_actors._step_base import tell

if TYPE_CHECKING:
    from concurrent.futures import Future

    import pykka

    from tamma_actors._deadlines import Deadlines
    from tamma_actors._execution import ExecutionDeps
    from tamma_actors._execution_commit import Batch
    from tamma_actors._models import WorkflowConfig
    from tamma_actors._state import ExecutionState

__all__ = ["MayRest", "RestRequest", "Resting", "rest_until"]


@dataclass(frozen=True)
class MayRest:
    """Told by the callback of a commit that left the execution only waiting."""


def rest_until(state: ExecutionState, cfg: WorkflowConfig) -> float | None:
    """The wall-clock time the execution next needs its supervisor, if it may rest until
    then: it is running, at least one ``wait`` step runs, and every other open step is
    pending behind an unfinished step (so a new supervisor's first turn would only re-arm
    timers). None when it has anything else to do or to watch (a step in flight, a retry,
    a fan-out or subflow, a step whose dependencies are all done)."""
    if state.status != "running":
        return None
    wakes: list[float] = []
    for name in state.order:
        st = state.steps[name]
        if step_is_terminal(st):
            continue
        step = cfg.step(name)
        waiting = step.type == "task" and step.implementation == WAIT_IMPLEMENTATION
        if st.status == "running" and waiting and st.deadline is not None:
            wakes.append(st.deadline)
            continue
        if st.status == "pending" and any(
            not step_is_terminal(state.steps[dep]) for dep in cfg.dependency_map()[name]
        ):
            continue
        return None
    if not wakes:
        return None
    if state.deadline is not None:
        wakes.append(state.deadline)
    return min(wakes)


# The engine's side: (supervisor, state, definition, wake time, "is its inbox empty?") ->
# True if the execution now rests (the supervisor must stop).
RestRequest = Callable[
    ["pykka.ActorRef[Any]", "ExecutionState", "WorkflowConfig", float, Callable[[], bool]],
    bool,
]


class Resting:
    if TYPE_CHECKING:
        state: ExecutionState
        cfg: WorkflowConfig
        deps: ExecutionDeps
        actor_ref: pykka.ActorRef[Any]
        actor_inbox: Any
        _batch: Batch
        _tail: Batch | None
        _waiters: list[Future[dict[str, Any]]]
        _inflight: dict[str, str]
        _retry_timers: dict[str, Any]
        _probes: dict[str, str]
        _comp_tasks: dict[str, str]
        _deadlines: Deadlines

        def _stop(self) -> None: ...

    def _offer_rest(self, flushed: Batch | None) -> None:
        """After a turn's flush: once ``flushed`` (the batch it handed to the writer, if
        any) is committed, ask whether to rest, if only waits are timed now."""
        if flushed is None or self.deps.rest is None or not self._deadlines.only_waits():
            return
        ref = self.actor_ref

        def committed(exc: BaseException | None) -> None:
            if exc is None:
                tell(ref, MayRest())

        flushed.then(committed)

    def _on_may_rest(self, _msg: MayRest) -> None:
        wake = self._may_rest_until()
        if wake is None or self.deps.rest is None:
            return
        inbox = self.actor_inbox
        if inbox.empty() and self.deps.rest(
            self.actor_ref, self.state, self.cfg, wake, inbox.empty
        ):
            self._stop()
        elif not inbox.empty():  # the messages before it first (a watchdog look, a request)
            tell(self.actor_ref, MayRest())

    def _may_rest_until(self) -> float | None:
        """When to wake, if this execution may rest now: nothing in flight, to commit,
        timed or waiting on its end but its waits."""
        tail = self._tail
        if (
            self._waiters
            or self._inflight
            or self._retry_timers
            or self._probes
            or self._comp_tasks
            or self._batch.events
            or self._batch.effects
            or self._batch.replies
            or (tail is not None and not tail.settled)
            or not self._deadlines.only_waits()
        ):
            return None
        return rest_until(self.state, self.cfg)
