"""The circuit breaker arithmetic: examples and properties over random outcome sequences."""

from __future__ import annotations

from dataclasses import dataclass

import pykka
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tamma_actors._breaker import (
    BreakerState,
    acquire,
    current,
    record_failure,
    record_success,
    release,
)
from tamma_actors._breakers import BreakerRegistry
from tamma_actors._errors import StoreCorrupted
from tamma_actors._timers import ManualTimers


@dataclass(frozen=True)
class Policy:
    failure_threshold: int = 3
    reset_timeout: float = 10.0
    half_open_max_calls: int = 1


P = Policy()


def test_opens_after_n_consecutive_failures_and_a_success_resets_the_count() -> None:
    s = BreakerState()
    s = record_failure(s, P, 1.0)
    s = record_failure(s, P, 2.0)
    s = record_success(s, P, 3.0)
    assert s.phase == "closed" and s.failures == 0
    for t in (4.0, 5.0, 6.0):
        s = record_failure(s, P, t)
    assert (s.phase, s.opened_at, s.until) == ("open", 6.0, 16.0)
    assert acquire(s, P, 15.9) == (False, s)


def test_half_opens_after_the_cool_down_with_limited_probes_then_closes() -> None:
    s = BreakerState(phase="open", failures=3, opened_at=0.0, until=10.0)
    ok, s = acquire(s, P, 10.0)
    assert ok and s.phase == "half_open" and s.probes == 1
    assert acquire(s, P, 10.5)[0] is False  # one probe at a time
    assert release(s, 11.0).probes == 0
    s = record_success(s, P, 12.0)
    assert s == BreakerState(changed_at=12.0)


def test_a_failed_probe_opens_it_again_and_a_late_success_does_not_close_it() -> None:
    s = current(BreakerState(phase="open", failures=3, opened_at=0.0, until=10.0), 10.0)
    s = record_failure(s, P, 11.0)
    assert (s.phase, s.until) == ("open", 21.0)
    assert record_success(s, P, 12.0) == s
    assert record_failure(s, P, 12.0) == s


def test_the_persisted_form_round_trips_and_drops_probes() -> None:
    s = BreakerState(phase="half_open", failures=4, opened_at=1.0, until=2.0, probes=1)
    back = BreakerState.from_dict(s.to_dict())
    assert back == BreakerState(phase="half_open", failures=4, opened_at=1.0, until=2.0)
    with pytest.raises(StoreCorrupted, match="phase"):
        BreakerState.from_dict({"phase": "ajar"})
    with pytest.raises(StoreCorrupted):
        BreakerState.from_dict({"failures": 1})


outcomes = st.lists(
    st.tuples(st.sampled_from(["ok", "fail", "acquire", "release"]), st.floats(0, 5)),
    max_size=60,
)
policies = st.builds(
    Policy,
    failure_threshold=st.integers(1, 5),
    reset_timeout=st.floats(0.5, 20),
    half_open_max_calls=st.integers(1, 3),
)


@given(policies, outcomes)
def test_properties_over_any_sequence(policy: Policy, steps: list[tuple[str, float]]) -> None:
    s, now, streak = BreakerState(), 0.0, 0
    for op, dt in steps:
        now += dt
        before = current(s, now)
        if op == "ok":
            s = record_success(s, policy, now)
            if before.phase == "half_open":
                assert s.phase == "closed"  # a probe's success closes it
            if before.phase != "open":
                streak = 0
        elif op == "fail":
            s = record_failure(s, policy, now)
            if before.phase == "closed":
                streak += 1
                # closed until exactly the threshold of consecutive failures
                assert (s.phase == "open") == (streak >= policy.failure_threshold)
            if s.phase == "open":
                assert s.until is not None and s.until > now - 1e-9
                if before.phase != "open":
                    streak = 0
        elif op == "acquire":
            ok, s = acquire(s, policy, now)
            if before.phase == "open":
                assert not ok  # never admits while open
            if before.phase == "closed":
                assert ok
        else:
            s = release(s, now)
        # invariants of every state
        assert 0 <= s.probes <= policy.half_open_max_calls
        assert s.phase != "closed" or s.until is None
        assert s.phase != "open" or (s.until is not None and s.opened_at is not None)
        # time alone only ever turns open into half-open
        later = current(s, now + policy.reset_timeout)
        assert later.phase == ("half_open" if s.phase != "closed" else "closed")


class _Writes:
    def submit(self, write: object, done: object = None) -> None:
        if callable(done):
            done(None)


def test_a_probe_slot_is_counted_once_per_call_whoever_sends_it_again() -> None:
    """The registry knows which call holds each probe slot: an execution brought back
    while the node runs sends its call again without taking a second slot, a node that
    restarted (the count is not persisted) takes it anew, and a release gives back once."""
    now = [0.0]
    registry = BreakerRegistry(_Writes(), ManualTimers(), clock=lambda: now[0])
    policy = Policy(failure_threshold=1, half_open_max_calls=2)
    registry.record("svc", policy, False)
    now[0] = 10.0  # half-open
    waiter = pykka.ThreadingActor.start()  # never told: every call here is admitted
    try:
        assert registry.acquire("svc", policy, waiter, "e1/a")[0]
    finally:
        waiter.stop()
    assert registry.readmit("svc", "e1/a")  # the same call, sent again: one slot still
    assert registry.state("svc").probes == 1
    assert registry.readmit("svc", "e2/b")  # in flight when the node restarted
    assert registry.state("svc").probes == 2
    registry.release("svc", "e1/a")
    registry.release("svc", "e1/a")  # released once only
    assert registry.state("svc").probes == 1
    registry.record("svc", policy, True)  # a probe's success closes it: no probes left
    assert registry.state("svc").phase == "closed"
    assert not registry.readmit("svc", "e2/b")
