"""What the coordinator-side step types share: their plans, expression context and
failure path. The base of the mixins in :mod:`tamma_actors._step_types`."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import pykka

from tamma_actors._codec import packed_size
from tamma_actors._errors import ExpressionError
from tamma_actors._step_configs import Plan, ancestors
from tamma_actors._timeouts import TimeoutHandling

if TYPE_CHECKING:
    from tamma_actors._execution import ExecutionDeps
    from tamma_actors._step_index import StepIndex, StepScan

__all__ = ["OPEN", "StepTypeBase", "tell"]

OPEN = ("dispatched", "running")
# Room left under the frame cap for the fields around such a value: its event's, and a
# reply's that carries that event alone.
_EVENT_ROOM = 4096


def tell(ref: pykka.ActorRef[Any], msg: Any) -> None:
    with contextlib.suppress(pykka.ActorDeadError):  # the execution may have ended
        ref.tell(msg)


class StepTypeBase(TimeoutHandling):
    _plans: dict[str, Plan]
    _again: bool  # a step finished inside the coordinator: look again

    if TYPE_CHECKING:
        actor_ref: pykka.ActorRef[Any]
        deps: ExecutionDeps
        _deps_of: Mapping[str, tuple[str, ...]]

        def _task(self, name: str, attempt: int, tid: str) -> dict[str, Any]: ...
        def _step_index(self) -> StepIndex | StepScan: ...

    def _expression_context(self, name: str) -> dict[str, Any]:
        """What step ``name``'s expressions read: the inputs, and the steps upstream of it
        only (validation refuses ``steps.X`` for any other; a computed index, ``len(steps)``
        or ``steps`` whole would otherwise see the others in whatever state they are in
        now, and an execution's course would depend on timing)."""
        steps = {
            n: {"output": self.state.steps[n].data, "status": self.state.steps[n].status}
            for n in sorted(ancestors(name, self._deps_of))
        }
        return {"inputs": self.state.context, "steps": steps}

    def _over_cap(self, value: Any, what: str) -> dict[str, Any] | None:
        """A ``FrameTooLarge`` step error if ``value`` (data the coordinator puts together
        from many items' or steps' data) is too big for one event a client can read back;
        None if it fits. Each part passed the cap on its own, their sum need not: stored,
        it would make the execution's events unreadable and its publishing fail."""
        cap = self.deps.max_frame_bytes
        most = cap - _EVENT_ROOM
        if packed_size(value, most) <= most:  # (it stops counting once over)
            return None
        message = (
            f"{what}: more than {most:,} bytes (the {cap:,}-byte frame cap, max_frame_bytes, "
            f"less {_EVENT_ROOM:,} for the event around it)"
        )
        return {"type": "FrameTooLarge", "message": message, "retryable": False}

    def _expression_failed(self, name: str, attempt: int, exc: ExpressionError) -> None:
        error = {"type": "ExpressionError", "message": str(exc), "retryable": False}
        self._on_step_error(name, attempt, error)
