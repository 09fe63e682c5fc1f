"""How an execution's steps pass the node's circuit breakers (a supervisor mixin).

Only workflows that set ``circuit_breaker`` use breakers. A ready task step asks the
registry before it is dispatched: refused, it stays ``ready`` with a ``step.held`` event
naming the breaker and until when it is open — no attempt is used — and the registry tells
the execution (:class:`BreakerChanged`) when the breaker half-opens or closes. Every
attempt's outcome (result, error, timeout, repeated worker loss) is reported to the
registry; a cancelled probe gives its slot back.

Each item of a parallel step is a call of its own through the breaker of the step's
implementation (and target): the same questions, asked per item (``items=True``), with
the item's probe key (``step[i]``: no step name holds a ``[``) in ``_probes``. A refused
item stays pending and its step records one ``step.held``; see ``_parallel._pump``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tamma_actors._breakers import BreakerChanged, BreakerRegistry

if TYPE_CHECKING:
    import pykka

    from tamma_actors._breaker import BreakerState
    from tamma_actors._execution import ExecutionDeps
    from tamma_actors._models import WorkflowConfig
    from tamma_actors._state import ExecutionState

__all__ = ["BreakerGate", "breaker_key", "item_probe"]


def breaker_key(implementation: str, config: dict[str, Any]) -> str:
    target = config.get("target")
    return f"{implementation}@{target}" if isinstance(target, str) and target else implementation


def item_probe(step: str, index: int) -> str:
    """The ``_probes`` key of one parallel item (never a step name)."""
    return f"{step}[{index}]"


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

    def _breaker_of(self, name: str, *, items: bool = False) -> tuple[BreakerRegistry, str] | None:
        """The breaker a task step's attempts pass (``items``: a parallel step's items)."""
        registry = self.deps.breakers
        if registry is None or self.cfg.circuit_breaker is None:
            return None  # the common case, checked first: this runs twice per step
        step = self.cfg.step(name)
        if step.type != ("parallel" if items else "task") or not step.implementation:
            return None
        if not items and self._is_wait(name):
            return None
        return registry, breaker_key(step.implementation, step.config)

    def _breaker_admits(self, name: str) -> bool:
        if self.cfg.circuit_breaker is None:
            return True  # the common case, on every step's path: no call further down
        refused = self._breaker_refuses(name)
        if refused is None:
            return True
        self._note_held(name, refused)
        return False

    def _breaker_refuses(
        self, name: str, probe: str | None = None
    ) -> tuple[str, BreakerState] | None:
        """Ask for one call (``probe``: an item's key); None when it may go, or the
        breaker and its state when it may not (the registry then wakes us later)."""
        found = self._breaker_of(name, items=probe is not None)
        if found is None:
            return None
        registry, key = found
        assert self.cfg.circuit_breaker is not None
        allowed, state = registry.acquire(
            key, self.cfg.circuit_breaker, self.actor_ref, self._holder(probe or name)
        )
        if not allowed:
            return key, state
        if state.phase == "half_open":
            self._probes[probe or name] = key
        return None

    def _holder(self, probe: str) -> str:
        """How the registry knows one call of this execution (a step, or an item)."""
        return f"{self.state.id}/{probe}"

    def _note_held(self, name: str, refused: tuple[str, BreakerState]) -> None:
        """Record, once, that the step (or its pending items) waits for this breaker."""
        key, state = refused
        hold = {"breaker": key, "until": state.until}
        if self.state.steps[name].hold != hold:
            self._emit("step.held", step=name, breaker=key, until=state.until)

    def _breaker_readmit(self, name: str) -> None:
        """A step in flight before a restart is sent again: while its breaker is half-open
        it is one of the probes, and holds a slot until its outcome or cancel."""
        self._readmit(name, name, items=False)

    def _item_readmit(self, name: str, index: int) -> None:
        self._readmit(name, item_probe(name, index), items=True)

    def _readmit(self, name: str, probe: str, *, items: bool) -> None:
        found = self._breaker_of(name, items=items)
        if found is not None and found[0].readmit(found[1], self._holder(probe)):
            self._probes[probe] = found[1]

    def _breaker_outcome(self, name: str, ok: bool) -> None:
        if self.cfg.circuit_breaker is not None:  # else nothing to record (nor a probe)
            self._outcome(name, name, ok, items=False)

    def _item_outcome(self, name: str, index: int, ok: bool) -> None:
        if self.cfg.circuit_breaker is not None:  # else nothing to record, nor to format
            self._outcome(name, item_probe(name, index), ok, items=True)

    def _outcome(self, name: str, probe: str, ok: bool, *, items: bool) -> None:
        self._probes.pop(probe, None)
        found = self._breaker_of(name, items=items)
        if found is not None:
            registry, key = found
            assert self.cfg.circuit_breaker is not None
            registry.record(key, self.cfg.circuit_breaker, ok, self.state.id)

    def _breaker_release(self, name: str) -> None:
        """A call ended without an outcome (``name``: a step, or an item's probe key)."""
        key = self._probes.pop(name, None)
        if key is not None and self.deps.breakers is not None:
            self.deps.breakers.release(key, self._holder(name))

    def _pump_held(self, key: str) -> None:
        """Dispatch the parallel items that wait for breaker ``key`` (see _parallel)."""

    def _on_breaker_changed(self, msg: BreakerChanged) -> None:
        self._pump_held(msg.key)
        self._advance()
