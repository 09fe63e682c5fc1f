"""Circuit breaker arithmetic: pure functions of (state, policy, outcome, now).

``closed`` → ``open`` after ``failure_threshold`` consecutive failed attempts; ``open``
reads as ``half_open`` once ``reset_timeout`` has passed (no timer is needed to know it);
``half_open`` admits at most ``half_open_max_calls`` probes at a time; a probe's success
closes the breaker, its failure opens it again for another ``reset_timeout``. A success
that arrives while open (a call admitted before the breaker opened) changes nothing: only
a probe may close an open breaker.

No I/O and no clock of its own: the node's registry (``_breakers.py``) holds the states,
persists them and wakes the executions waiting for one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal, Protocol

from tamma_actors._errors import StoreCorrupted

__all__ = [
    "BreakerPolicyLike",
    "BreakerState",
    "acquire",
    "current",
    "readmit",
    "record_failure",
    "record_success",
    "release",
]

Phase = Literal["closed", "open", "half_open"]


class BreakerPolicyLike(Protocol):
    """The fields of :class:`tamma_actors._models.CircuitBreakerPolicy` read here."""

    @property
    def failure_threshold(self) -> int: ...
    @property
    def reset_timeout(self) -> float: ...  # seconds
    @property
    def half_open_max_calls(self) -> int: ...


@dataclass(frozen=True, slots=True)
class BreakerState:
    phase: Phase = "closed"
    failures: int = 0  # consecutive failed attempts (while closed), or the ones that opened it
    opened_at: float | None = None
    until: float | None = None  # open until (then half-open)
    probes: int = 0  # probes admitted and not yet finished while half-open
    changed_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # the store adds the record schema

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BreakerState:
        """A persisted state; probes in flight did not survive the restart."""
        try:
            state = cls(
                phase=data["phase"],
                failures=int(data.get("failures", 0)),
                opened_at=data.get("opened_at"),
                until=data.get("until"),
                changed_at=data.get("changed_at"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise StoreCorrupted(f"breaker state {dict(data)!r} does not decode: {exc}") from exc
        if state.phase not in ("closed", "open", "half_open"):
            raise StoreCorrupted(f"breaker state has an unknown phase {state.phase!r}")
        return state


def current(state: BreakerState, now: float) -> BreakerState:
    """The state as of ``now``: an open breaker past its cool-down is half-open."""
    if state.phase == "open" and state.until is not None and now >= state.until:
        return replace(state, phase="half_open", probes=0, changed_at=state.until)
    return state


def acquire(
    state: BreakerState, policy: BreakerPolicyLike, now: float
) -> tuple[bool, BreakerState]:
    """May a call go through now? Half-open admissions count as probes."""
    state = current(state, now)
    if state.phase == "closed":
        return True, state
    if state.phase == "half_open" and state.probes < policy.half_open_max_calls:
        return True, replace(state, probes=state.probes + 1)
    return False, state


def readmit(state: BreakerState, now: float) -> tuple[bool, BreakerState]:
    """A call admitted before a restart is in flight again: while half-open it is one of
    the probes (their count is not persisted), whatever the limit, since it runs already."""
    state = current(state, now)
    if state.phase == "half_open":
        return True, replace(state, probes=state.probes + 1)
    return False, state


def release(state: BreakerState, now: float) -> BreakerState:
    """A probe ended without an outcome (cancelled): its slot is free again."""
    state = current(state, now)
    if state.phase == "half_open" and state.probes > 0:
        return replace(state, probes=state.probes - 1)
    return state


def record_success(state: BreakerState, policy: BreakerPolicyLike, now: float) -> BreakerState:
    state = current(state, now)
    if state.phase == "half_open":
        return BreakerState(changed_at=now)
    if state.phase == "closed" and state.failures:
        return replace(state, failures=0)
    return state


def record_failure(state: BreakerState, policy: BreakerPolicyLike, now: float) -> BreakerState:
    state = current(state, now)
    if state.phase == "open":
        return state
    failures = state.failures + 1
    if state.phase == "half_open" or failures >= policy.failure_threshold:
        return BreakerState(
            phase="open",
            failures=failures,
            opened_at=now,
            until=now + policy.reset_timeout,
            changed_at=now,
        )
    return replace(state, failures=failures)
