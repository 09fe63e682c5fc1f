"""Retry policy arithmetic: how long to wait, and whether a failure may be retried.

Pure functions; the execution supervisor schedules a timer with the delay, it never
sleeps. The delay follows tenacity's ``wait_exponential`` (base * multiplier ** n,
capped) with a proportional jitter whose randomness is injected, so tests and replays
are deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from fnmatch import fnmatchcase
from typing import Any, Protocol

from tamma_actors._durations import MAX_DURATION_S

__all__ = ["RetryPolicyLike", "compute_delay", "is_retryable", "plan_retry", "should_retry"]

_GLOB_CHARS = frozenset("*?[")


class RetryPolicyLike(Protocol):
    """The fields of :class:`tamma_actors._models.RetryPolicy` the arithmetic reads."""

    @property
    def max_attempts(self) -> int: ...
    @property
    def base_delay(self) -> float: ...  # milliseconds
    @property
    def max_delay(self) -> float: ...  # milliseconds
    @property
    def backoff_multiplier(self) -> float: ...
    @property
    def jitter(self) -> float: ...
    @property
    def retryable_errors(self) -> Sequence[str] | None: ...


def compute_delay(policy: RetryPolicyLike, attempt: int, rand: float = 0.5) -> float:
    """Seconds to wait after attempt number ``attempt`` (1-based) failed.

    ``rand`` in [0, 1] is the caller's random draw; 0.5 means "no jitter offset".
    The result always lies in [base_delay, max_delay] and never overflows, however large
    ``attempt`` is.
    """
    if attempt < 1:
        raise ValueError(f"attempt numbers start at 1, got {attempt}")
    if not 0.0 <= rand <= 1.0:
        raise ValueError(f"rand must be in [0, 1], got {rand}")
    base, cap = float(policy.base_delay), float(policy.max_delay)
    raw = _capped_exponential(base, policy.backoff_multiplier, attempt - 1, cap)
    spread = raw * (1.0 + policy.jitter * (2.0 * rand - 1.0))
    return min(max(spread, base), cap) / 1000.0


def _capped_exponential(base: float, multiplier: float, exponent: int, cap: float) -> float:
    # Compare in log space first: multiplier ** exponent overflows long before the cap
    # stops mattering (attempt 2000 with multiplier 2 is already inf).
    if base <= 0.0 or multiplier <= 1.0 or exponent == 0:
        return min(base, cap)
    if exponent * math.log(multiplier) >= math.log(cap / base):
        return cap
    return min(base * multiplier**exponent, cap)


def is_retryable(
    policy: RetryPolicyLike, error_type: str, message: str, explicit: bool | None
) -> bool:
    """Whether a failure may be retried at all.

    An error its step marks not retryable (``explicit`` False) never is. Otherwise a
    policy without ``retryable_errors`` retries everything, and a policy with patterns
    retries an error when some pattern matches its type name (exactly, as a substring, or
    as an fnmatch glob such as ``"Timeout*"``) or occurs in its message: the policy is the
    operator's filter, so an error marked retryable (a ``StepTimeout``, say) must match too.
    """
    if explicit is False:
        return False
    if policy.retryable_errors is None:
        return True
    return any(_matches(p, error_type, message) for p in policy.retryable_errors)


def _matches(pattern: str, error_type: str, message: str) -> bool:
    if not pattern:
        return False
    if pattern in error_type or pattern in message:
        return True
    if _GLOB_CHARS.isdisjoint(pattern):
        return False
    return fnmatchcase(error_type, pattern) or fnmatchcase(message, f"*{pattern}*")


def should_retry(
    policy: RetryPolicyLike,
    attempt: int,
    error_type: str,
    message: str,
    explicit: bool | None,
) -> bool:
    """Retry after attempt ``attempt`` failed: the error is retryable and attempts remain."""
    return attempt < policy.max_attempts and is_retryable(policy, error_type, message, explicit)


def plan_retry(
    policy: RetryPolicyLike,
    attempt: int,
    error: Mapping[str, Any],
    rand: Callable[[], float],
) -> tuple[dict[str, Any], float | None]:
    """After attempt ``attempt`` (counted within its budget) failed with the worker's
    ``error`` map: the error as recorded, and the seconds to wait before the next attempt,
    or None when there is none. A step's own ``retry_after`` (seconds) wins over the
    policy's backoff; ``rand`` is drawn only when the backoff is used."""
    etype = str(error.get("type") or "StepFailure")
    message = str(error.get("message") or "")
    explicit = error.get("retryable")
    info = {"type": etype, "message": message, "retryable": explicit}
    if not should_retry(policy, attempt, etype, message, explicit):
        return info, None
    given = _seconds(error.get("retry_after"))
    return info, compute_delay(policy, attempt, rand()) if given is None else given


def _seconds(value: Any) -> float | None:
    """A step's ``retry_after`` if it is a duration the node can keep (a worker checks its
    step's ``RetryAfter``; an older or foreign one may send anything: nan, 1e300...)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if 0 <= value <= MAX_DURATION_S else None
