"""Backoff arithmetic and retryability, against tenacity's semantics where they overlap."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tenacity import wait_exponential

from tamma_actors._models import RetryPolicy
from tamma_actors._retry import compute_delay, is_retryable, plan_retry, should_retry


@dataclass(frozen=True)
class _RetryState:
    attempt_number: int


def policy(**kw: object) -> RetryPolicy:
    return RetryPolicy.model_validate(kw)


def test_story_formula_without_jitter() -> None:
    p = policy(base_delay=100, max_delay=1000, backoff_multiplier=2, jitter=0)
    assert [compute_delay(p, n) for n in range(1, 7)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]


@settings(deadline=None)  # no timing assertions: the box may be busy
@given(
    st.integers(min_value=1, max_value=60),
    st.floats(min_value=1, max_value=10),
    st.floats(min_value=1, max_value=5000),
)
def test_matches_tenacity_wait_exponential(attempt: int, multiplier: float, base: float) -> None:
    p = policy(base_delay=base, max_delay=60_000, backoff_multiplier=multiplier, jitter=0)
    # tenacity: multiplier * exp_base ** (attempt - 1), clamped to [min, max] (seconds).
    reference = wait_exponential(
        multiplier=base / 1000, exp_base=multiplier, min=base / 1000, max=60
    )
    assert compute_delay(p, attempt) == pytest.approx(reference(_RetryState(attempt)))  # type: ignore[arg-type]


def test_jitter_spreads_around_the_raw_delay() -> None:
    p = policy(base_delay=100, max_delay=10_000, backoff_multiplier=2, jitter=0.5)
    assert compute_delay(p, 3, rand=0.5) == pytest.approx(0.4)
    assert compute_delay(p, 3, rand=0.0) == pytest.approx(0.2)
    assert compute_delay(p, 3, rand=1.0) == pytest.approx(0.6)
    # The spread never goes below the base delay.
    assert compute_delay(p, 1, rand=0.0) == pytest.approx(0.1)


def test_huge_attempt_numbers_do_not_overflow() -> None:
    p = policy(base_delay=100, max_delay=5000, backoff_multiplier=10, jitter=1)
    assert compute_delay(p, 10**9, rand=0.0) == 0.1  # full jitter, clamped to base
    assert compute_delay(p, 10**9, rand=1.0) == 5.0


def test_zero_base_and_unit_multiplier() -> None:
    assert compute_delay(policy(base_delay=0, max_delay=0, jitter=0.3), 50, rand=0.9) == 0.0
    assert compute_delay(policy(base_delay=200, backoff_multiplier=1), 40) == pytest.approx(0.2)


@pytest.mark.parametrize(("attempt", "rand"), [(0, 0.5), (-3, 0.5), (1, -0.1), (1, 1.5)])
def test_bad_arguments(attempt: int, rand: float) -> None:
    with pytest.raises(ValueError):
        compute_delay(policy(), attempt, rand)


policies = st.builds(
    lambda base, extra, mult, jitter: policy(
        base_delay=base, max_delay=base + extra, backoff_multiplier=mult, jitter=jitter
    ),
    st.floats(min_value=0, max_value=1e6),
    st.floats(min_value=0, max_value=1e7),
    st.floats(min_value=1, max_value=100),
    st.floats(min_value=0, max_value=1),
)


@settings(deadline=None)  # no timing assertions: the box may be busy
@given(policies, st.integers(min_value=1, max_value=10**6), st.floats(min_value=0, max_value=1))
def test_delay_stays_within_base_and_max(p: RetryPolicy, attempt: int, rand: float) -> None:
    delay = compute_delay(p, attempt, rand)
    assert p.base_delay / 1000 - 1e-12 <= delay <= p.max_delay / 1000 + 1e-12


@settings(deadline=None)  # no timing assertions: the box may be busy
@given(policies, st.integers(min_value=1, max_value=10**4))
def test_without_jitter_delay_never_shrinks(p: RetryPolicy, attempt: int) -> None:
    flat = p.model_copy(update={"jitter": 0.0})
    assert compute_delay(flat, attempt) <= compute_delay(flat, attempt + 1)


def test_not_retryable_always_wins_and_retryable_must_still_pass_the_policy() -> None:
    never = policy(retryable_errors=[])
    rate = policy(retryable_errors=["Rate*"])
    assert not is_retryable(policy(), "TimeoutError", "slow", explicit=False)
    assert not is_retryable(rate, "RateLimited", "429", explicit=False)
    assert not is_retryable(never, "TimeoutError", "slow", explicit=None)
    # the operator's list filters what a step (or the engine: a StepTimeout) calls retryable
    assert not is_retryable(never, "IOError", "boom", explicit=True)
    assert not is_retryable(rate, "StepTimeout", "step 's' did not finish", explicit=True)
    assert is_retryable(rate, "RateLimited", "429", explicit=True)
    assert is_retryable(policy(), "IOError", "boom", explicit=True)


def test_no_patterns_means_everything_retries() -> None:
    assert is_retryable(policy(), "AnyError", "anything", explicit=None)


@pytest.mark.parametrize(
    ("error_type", "message", "expected"),
    [
        ("TimeoutError", "", True),  # glob on the type
        ("ConnectionRefusedError", "", True),  # plain pattern inside the type (includes())
        ("ReadTimeoutError", "", False),  # a glob matches the whole type name
        ("ValueError", "gateway Timeout after 3s", True),  # glob inside the message
        ("OSError", "ECONNRESET by peer", True),  # plain pattern inside the message
        ("ValueError", "bad input", False),
        ("KeyError", "timeout", False),  # matching is case-sensitive
    ],
)
def test_patterns(error_type: str, message: str, expected: bool) -> None:
    p = policy(retryable_errors=["Timeout*", "ECONNRESET", "Refused", ""])
    assert is_retryable(p, error_type, message, explicit=None) is expected


def test_should_retry_counts_attempts() -> None:
    p = policy(max_attempts=3)
    assert should_retry(p, 1, "E", "m", None)
    assert should_retry(p, 2, "E", "m", None)
    assert not should_retry(p, 3, "E", "m", None)
    assert not should_retry(p, 1, "E", "m", False)
    assert not should_retry(policy(max_attempts=1), 1, "E", "m", True)


class _Rand:
    """An injected random source that counts its draws."""

    def __init__(self, value: float = 0.5) -> None:
        self.value, self.draws = value, 0

    def __call__(self) -> float:
        self.draws += 1
        return self.value


def test_plan_retry_uses_the_policy_backoff_and_records_the_error() -> None:
    p = policy(max_attempts=3, base_delay=100, max_delay=1000, jitter=0)
    rand = _Rand()
    info, delay = plan_retry(p, 1, {"type": "Flaky", "message": "again"}, rand)
    assert info == {"type": "Flaky", "message": "again", "retryable": None}
    assert (delay, rand.draws) == (0.1, 1)
    assert plan_retry(p, 2, {"type": "Flaky"}, rand)[1] == 0.2


def test_plan_retry_stops_when_attempts_run_out_or_the_error_is_final() -> None:
    p = policy(max_attempts=3, retryable_errors=["Timeout*"])
    rand = _Rand()
    assert plan_retry(p, 3, {"type": "TimeoutError"}, rand) == (
        {"type": "TimeoutError", "message": "", "retryable": None},
        None,
    )
    assert plan_retry(p, 1, {"type": "ValueError"}, rand)[1] is None
    assert plan_retry(p, 1, {"type": "TimeoutError", "retryable": False}, rand)[1] is None
    assert plan_retry(p, 1, {}, rand)[0]["type"] == "StepFailure"  # a bare failure
    assert rand.draws == 0  # nothing to wait for, nothing drawn


def test_a_steps_own_retry_after_wins_unless_it_is_not_a_duration() -> None:
    p = policy(max_attempts=5, base_delay=100, jitter=0)
    rand = _Rand()
    assert plan_retry(p, 1, {"type": "Busy", "retry_after": 7}, rand)[1] == 7.0
    assert plan_retry(p, 1, {"type": "Busy", "retry_after": 0.0}, rand)[1] == 0.0
    assert rand.draws == 0
    odds = (-1, "soon", True, None, math.nan, math.inf, 1e300)  # the last three overflowed
    for odd in odds:
        assert plan_retry(p, 1, {"type": "Busy", "retry_after": odd}, rand)[1] == 0.1
    assert rand.draws == len(odds)


@given(
    attempt=st.integers(min_value=1, max_value=8),
    explicit=st.sampled_from([None, True, False]),
    retry_after=st.one_of(st.none(), st.floats(min_value=-5, max_value=60)),
)
def test_plan_retry_agrees_with_should_retry(
    attempt: int, explicit: bool | None, retry_after: float | None
) -> None:
    p = policy(max_attempts=4, base_delay=10, max_delay=500)
    error = {"type": "E", "message": "m", "retryable": explicit, "retry_after": retry_after}
    _, delay = plan_retry(p, attempt, error, _Rand(0.3))
    assert (delay is not None) == should_retry(p, attempt, "E", "m", explicit)
    if delay is not None:
        assert delay >= 0
        if retry_after is not None and retry_after >= 0:
            assert delay == retry_after
