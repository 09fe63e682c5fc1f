"""How an execution's steps pass the node's circuit breakers (a supervisor mixin).

Only workflows that set ``circuit_breaker`` use breakers. A ready task step asks the
registry before it is dispatched: refused, it stays ``ready`` with a ``step.held`` event
naming the breaker and until when it is open — no attempt is used — and the registry tells
the execution (:class:`BreakerChanged`) when the breaker half-opens or closes. Every
attempt's outcome (result, error, timeout, repeated worker loss) is reported to the
registry; a cancelled probe gives its slot back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tamma_actors._breakers import BreakerChanged, BreakerRegistry

if TYPE_CHECKING:
    import pykka

    from tamma_actors._execution import ExecutionDeps
    from tamma_actors._models import WorkflowConfig
    from tamma_actors._state import ExecutionState

__all__ = ["BreakerGate", "breaker_key"]


def breaker_key(implementation: str, config: dict[str, Any]) -> str:
    target = config.get("target")
    return f"{implementation}@{target}" if isinstance(target, str) and target else implementation


class BreakerGate:
    if TYPE_CHECKING:
        state: ExecutionState
        cfg: WorkflowConfig
        deps: ExecutionDeps
        _probes: dict[str, str]

        @property
        def actor_ref(self) -> pykka.ActorRef[Any]: ...
        def _emit(self, etype: str, **data: Any) -> None: ...
        def _advance(self) -> None: ...
        def _is_wait(self, name: str) -> bool: ...

    def _breaker_of(self, name: str) -> tuple[BreakerRegistry, str] | None:
        registry = self.deps.breakers
        if registry is None or self.cfg.circuit_breaker is None:
            return None  # the common case, checked first: this runs twice per step
        step = self.cfg.step(name)
        if step.type != "task" or not step.implementation or self._is_wait(name):
            return None
        return registry, breaker_key(step.implementation, step.config)

    def _breaker_admits(self, name: str) -> bool:
        found = self._breaker_of(name)
        if found is None:
            return True
        registry, key = found
        assert self.cfg.circuit_breaker is not None
        allowed, state = registry.acquire(key, self.cfg.circuit_breaker, self.actor_ref)
        if allowed:
            if state.phase == "half_open":
                self._probes[name] = key
            return True
        hold = {"breaker": key, "until": state.until}
        if self.state.steps[name].hold != hold:
            self._emit("step.held", step=name, breaker=key, until=state.until)
        return False

    def _breaker_readmit(self, name: str) -> None:
        """A step in flight before a restart is sent again: while its breaker is half-open
        it is one of the probes, and holds a slot until its outcome or cancel."""
        found = self._breaker_of(name)
        if found is not None and found[0].readmit(found[1]):
            self._probes[name] = found[1]

    def _breaker_outcome(self, name: str, ok: bool) -> None:
        self._probes.pop(name, None)
        found = self._breaker_of(name)
        if found is not None:
            registry, key = found
            assert self.cfg.circuit_breaker is not None
            registry.record(key, self.cfg.circuit_breaker, ok, self.state.id)

    def _breaker_release(self, name: str) -> None:
        key = self._probes.pop(name, None)
        if key is not None and self.deps.breakers is not None:
            self.deps.breakers.release(key)

    def _on_breaker_changed(self, msg: BreakerChanged) -> None:
        self._advance()
