"""The node's circuit breakers: one registry shared by every execution.

Breakers are keyed by step implementation (``name``) or by implementation and integration
target (``name@target``, from a step's ``config.target``). The arithmetic is the pure
``_breaker`` module; this registry holds the current states under a lock (executions run
on several dispatcher threads), persists every change in the store's ``breakers``
sub-database through the StoreWriter (in submission order), publishes ``breaker.opened``,
``breaker.half_opened`` and ``breaker.closed`` on the EventBus once that write is
committed, and wakes the executions whose steps wait for a breaker — with one TimerService
entry per open breaker, never a poll.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import pykka

from tamma_actors._breaker import (
    BreakerPolicyLike,
    BreakerState,
    acquire,
    current,
    readmit,
    record_failure,
    record_success,
    release,
)
from tamma_actors._errors import TammaError
from tamma_actors._eventbus import Publish
from tamma_actors._store import Write
from tamma_actors._timers import TimerHandle, TimerService

__all__ = ["BreakerChanged", "BreakerRegistry"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BreakerChanged:
    """Told to a waiting execution: breaker ``key`` may admit a call now."""

    key: str


class _Submit(Protocol):
    def submit(
        self, write: Write, done: Callable[[BaseException | None], None] | None = None
    ) -> None: ...


class BreakerRegistry:
    def __init__(
        self,
        writer: _Submit,
        timers: TimerService,
        *,
        bus: pykka.ActorRef[Any] | None = None,
        clock: Callable[[], float] = time.time,
        loaded: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        self._writer = writer
        self._timers = timers
        self._bus = bus
        self._clock = clock
        self._lock = threading.Lock()
        self._states: dict[str, BreakerState] = {}
        self._waiters: dict[str, dict[str, pykka.ActorRef[Any]]] = {}
        self._wakeups: dict[str, TimerHandle] = {}
        # who holds each half-open breaker's probe slots (not persisted, as the count):
        # a call counted once, whether admitted, or sent again by a revived execution
        self._probing: dict[str, set[str]] = {}
        for key, data in (loaded or {}).items():
            try:
                self._states[key] = BreakerState.from_dict(data)
            except TammaError:
                log.exception("breaker %s: persisted state ignored; it starts closed", key)

    def state(self, key: str) -> BreakerState:
        with self._lock:
            return current(self._states.get(key, BreakerState()), self._clock())

    def acquire(
        self,
        key: str,
        policy: BreakerPolicyLike,
        waiter: pykka.ActorRef[Any],
        holder: str | None = None,
    ) -> tuple[bool, BreakerState]:
        """Admit a call, or remember ``waiter`` to tell it when the breaker may admit one.
        ``holder`` names the call (a probe slot is then known to be its)."""
        with self._lock:
            now = self._clock()
            old = self._states.get(key, BreakerState())
            allowed, new = acquire(old, policy, now)
            self._states[key] = new
            if not allowed:
                self._waiters.setdefault(key, {})[waiter.actor_urn] = waiter
                self._arm(key, new, now)
            elif new.phase == "half_open" and holder is not None:
                self._probing.setdefault(key, set()).add(holder)
            return allowed, new

    def readmit(self, key: str, holder: str) -> bool:
        """A call in flight goes out again (after a restart of the node, or from an execution
        brought back while it runs): True when it is one of the half-open breaker's
        probes. It takes a slot only if it does not hold one already."""
        with self._lock:
            if holder in self._probing.get(key, ()):  # only while half-open: see record
                return True
            probe, self._states[key] = readmit(self._states.get(key, BreakerState()), self._clock())
            if probe:
                self._probing.setdefault(key, set()).add(holder)
            return probe

    def release(self, key: str, holder: str | None = None) -> None:
        """A probe ended without an outcome: another waiter may take its place (once per
        probe: a ``holder`` that holds no slot gives nothing back)."""
        with self._lock:
            if holder is not None:
                holders = self._probing.get(key, set())
                if holder not in holders:
                    return
                holders.discard(holder)
            now = self._clock()
            self._states[key] = release(self._states.get(key, BreakerState()), now)
            self._wake(key)

    def record(
        self, key: str, policy: BreakerPolicyLike, ok: bool, execution_id: str | None = None
    ) -> BreakerState:
        """An attempt's outcome; persists and announces any change of phase."""
        with self._lock:
            now = self._clock()
            old = current(self._states.get(key, BreakerState()), now)
            fn = record_success if ok else record_failure
            new = fn(old, policy, now)
            self._states[key] = new
            if new.phase != "half_open":  # its probes have ended with it
                self._probing.pop(key, None)
            if new == old:
                return new
            events = []
            if new.phase != old.phase:
                etype = {"open": "breaker.opened", "closed": "breaker.closed"}[new.phase]
                events.append(self._event(etype, key, new, now, execution_id))
                log.warning("breaker %s %s", key, "opened" if new.phase == "open" else "closed")
            self._persist(key, new, events)
            if new.phase == "open":
                self._arm(key, new, now)
            elif new.phase == "closed" and old.phase != "closed":
                self._wake(key)
            return new

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Every breaker as of now, with how many executions wait for it (for health)."""
        with self._lock:
            now = self._clock()
            return {
                key: {
                    **current(st, now).to_dict(),
                    "waiting": len(self._waiters.get(key, {})),
                }
                for key, st in sorted(self._states.items())
            }

    def close(self) -> None:
        with self._lock:
            for handle in self._wakeups.values():
                handle.cancel()
            self._wakeups.clear()
            self._waiters.clear()

    # -- under the lock --------------------------------------------------------------------

    def _arm(self, key: str, state: BreakerState, now: float) -> None:
        """One timer per open breaker: it wakes the waiters when the cool-down ends."""
        if state.phase != "open" or state.until is None:
            return
        old = self._wakeups.pop(key, None)
        if old is not None:
            old.cancel()
        delay = max(0.0, state.until - now)
        self._wakeups[key] = self._timers.call_later(delay, lambda: self._half_open(key))

    def _half_open(self, key: str) -> None:  # on the timer thread
        with self._lock:
            self._wakeups.pop(key, None)
            now = self._clock()
            state = current(self._states.get(key, BreakerState()), now)
            if state.phase != "half_open":
                return
            self._persist(key, state, [self._event("breaker.half_opened", key, state, now)])
            self._wake(key)

    def _wake(self, key: str) -> None:
        waiters = self._waiters.pop(key, {})
        for ref in waiters.values():
            with contextlib.suppress(pykka.ActorDeadError):
                ref.tell(BreakerChanged(key))

    def _persist(self, key: str, state: BreakerState, events: list[dict[str, Any]]) -> None:
        bus = self._bus

        def done(exc: BaseException | None) -> None:
            if exc is not None:
                log.error("breaker %s: state not persisted: %s", key, exc)
            elif events and bus is not None:
                with contextlib.suppress(pykka.ActorDeadError):
                    bus.tell(Publish(events))

        try:
            self._writer.submit(Write(execution_id="", breakers={key: state.to_dict()}), done)
        except TammaError as exc:  # the writer is stopping: the state lives on in memory
            log.error("breaker %s: state not persisted: %s", key, exc)

    @staticmethod
    def _event(
        etype: str, key: str, state: BreakerState, now: float, execution_id: str | None = None
    ) -> dict[str, Any]:
        return {
            "type": etype,
            # not an execution's event: no sequence number; the execution whose attempt
            # changed the breaker, when there is one (so breaker.*@ID subscriptions work)
            "execution_id": execution_id or "",
            "seq": 0,
            "timestamp": now,
            "data": {
                "breaker": key,
                "phase": state.phase,
                "failures": state.failures,
                "until": state.until,
            },
        }
