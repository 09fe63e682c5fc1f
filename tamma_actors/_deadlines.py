"""The coordinator's deadlines for one execution: wait steps, step timeouts, workflow timeout.

Every deadline is a wall-clock time recorded in an event (so the reducer knows it and a
recovered execution re-arms it with the time it has left) and one TimerService entry while
it is live; nothing sleeps and nothing polls. A timer only ``tell``s the supervisor a
:class:`DeadlineDue`; the supervisor checks it still applies (same step status, same
attempt) before acting, so a timer that lost a race with a result is harmless.

Kinds:

- ``wait``: the end of a built-in ``wait`` step (frozen while paused);
- ``queue``: schedule-to-start, from dispatch until a worker starts it (frozen while paused);
- ``run``: start-to-close (``timeout``); a running step keeps running while paused, so this
  one does not freeze, except a fan-out's or a subflow's (pause holds the items not yet
  sent, or the child);
- ``heartbeat``: re-armed on every progress report of a running step;
- ``workflow``: the workflow ``timeout`` (frozen while paused).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from tamma_actors._durations import MAX_DURATION_S
from tamma_actors._timers import TimerHandle, TimerService

__all__ = [
    "COORDINATOR_IMPLEMENTATIONS",
    "FROZEN_KINDS",
    "WAIT_IMPLEMENTATION",
    "DeadlineDue",
    "Deadlines",
    "timeout_error",
    "wait_seconds",
]

Kind = Literal["wait", "queue", "run", "heartbeat", "workflow"]
# The coordinator runs these itself: workflow validation must know the name, no worker
# ever sees the step.
WAIT_IMPLEMENTATION = "wait"
COORDINATOR_IMPLEMENTATIONS: frozenset[str] = frozenset({WAIT_IMPLEMENTATION})
FROZEN_KINDS: frozenset[str] = frozenset({"wait", "queue", "workflow"})


@dataclass(frozen=True)
class DeadlineDue:
    kind: Kind
    step: str | None
    attempt: int
    token: int = 0  # which arming of (kind, step) this is


class Deadlines:
    """The live timers of one execution, one per (kind, step); arming replaces."""

    def __init__(
        self,
        timers: TimerService,
        clock: Callable[[], float],
        notify: Callable[[DeadlineDue], None],
    ) -> None:
        self._timers = timers
        self._clock = clock
        self._notify = notify
        self._handles: dict[tuple[str, str | None], tuple[int, TimerHandle]] = {}
        self._tokens = 0

    def arm(self, kind: Kind, step: str | None, attempt: int, at_wall: float) -> None:
        self.cancel(kind, step)
        self._tokens += 1
        due = DeadlineDue(kind, step, attempt, self._tokens)
        notify = self._notify
        delay = max(0.0, at_wall - self._clock())
        handle = self._timers.call_later(delay, lambda: notify(due))
        self._handles[(kind, step)] = (self._tokens, handle)

    def cancel(self, kind: Kind, step: str | None = None) -> None:
        entry = self._handles.pop((kind, step), None)
        if entry is not None:
            entry[1].cancel()

    def cancel_step(self, step: str) -> None:
        if not self._handles:  # a step without deadlines: every step ends here, twice
            return
        for kind in ("wait", "queue", "run", "heartbeat"):
            self.cancel(kind, step)

    def fired(self, due: DeadlineDue) -> bool:
        """Forget the timer that fired; False when it was cancelled or re-armed meanwhile
        (its notice raced with the change and must be ignored)."""
        entry = self._handles.get((due.kind, due.step))
        if entry is None or entry[0] != due.token:
            return False
        del self._handles[(due.kind, due.step)]
        return True

    def armed(self, kind: Kind, step: str | None = None) -> bool:
        return (kind, step) in self._handles

    def only_waits(self) -> bool:
        """A wait step's timer is armed, and no timer but waits and the workflow's."""
        if not self._handles:  # most executions, at most commits: nothing timed
            return False
        kinds = {kind for kind, _ in self._handles}
        return "wait" in kinds and kinds <= {"wait", "workflow"}

    def cancel_all(self) -> None:
        for _, handle in self._handles.values():
            handle.cancel()
        self._handles.clear()

    def close(self) -> None:
        """Its supervisor stopped: cancel every timer and let go of the callback (a bound
        method of the supervisor, which holds this: a cycle the collector would have to
        find). A timer armed after this notifies nobody."""
        self.cancel_all()
        self._notify = _nobody


def _nobody(due: DeadlineDue) -> None:
    """The callback of closed deadlines."""


def wait_seconds(config: Mapping[str, Any]) -> float:
    """The ``seconds`` of a wait step's config (validated when the workflow is loaded; one
    stored before the bound on durations is kept at it)."""
    value = config.get("seconds")
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError(f"a wait step needs config.seconds >= 0, got {value!r}")
    return min(float(value), MAX_DURATION_S)


def timeout_error(kind: str, step: str, seconds: float | None) -> dict[str, Any]:
    """The error recorded when a step overruns one of its deadlines (retryable)."""
    what = {
        "queue": "was not started by a worker within",
        "run": "did not finish within",
        "heartbeat": "sent no heartbeat for",
    }[kind]
    limit = "its deadline" if seconds is None else f"{seconds:g}s"
    return {
        "type": "StepTimeout",
        "message": f"step {step!r} {what} {limit}",
        "retryable": True,
        "kind": kind,
    }
