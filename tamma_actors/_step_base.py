"""What the coordinator-side step types share: their plans, expression context and
failure path. The base of the mixins in :mod:`tamma_actors._step_types`."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import pykka

from tamma_actors._errors import ExpressionError
from tamma_actors._step_configs import Plan, ancestors
from tamma_actors._timeouts import TimeoutHandling

if TYPE_CHECKING:
    from tamma_actors._step_index import StepIndex, StepScan

__all__ = ["OPEN", "StepTypeBase", "tell"]

OPEN = ("dispatched", "running")


def tell(ref: pykka.ActorRef[Any], msg: Any) -> None:
    with contextlib.suppress(pykka.ActorDeadError):  # the execution may have ended
        ref.tell(msg)


class StepTypeBase(TimeoutHandling):
    _plans: dict[str, Plan]
    _again: bool  # a step finished inside the coordinator: look again

    if TYPE_CHECKING:
        actor_ref: pykka.ActorRef[Any]
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

    def _expression_failed(self, name: str, attempt: int, exc: ExpressionError) -> None:
        error = {"type": "ExpressionError", "message": str(exc), "retryable": False}
        self._on_step_error(name, attempt, error)
