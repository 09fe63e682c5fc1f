"""parse_duration / format_duration: units, rejections, and the round trip."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tamma_actors._durations import MAX_DURATION_S, format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "unit", "seconds"),
    [
        ("250ms", "s", 0.25),
        ("30s", "ms", 30.0),
        ("5m", "s", 300.0),
        ("1h", "s", 3600.0),
        ("1.5s", "m", 1.5),
        (" 2 m ", "s", 120.0),
        ("10", "s", 10.0),
        ("10", "ms", 0.01),
        ("10", "m", 600.0),
        ("1h30m", "s", 5400.0),
        ("1m 30s", "s", 90.0),
        (".5S", "s", 0.5),
        ("1e3ms", "s", 1.0),
        ("0", "s", 0.0),
    ],
)
def test_strings(text: str, unit: str, seconds: float) -> None:
    assert parse_duration(text, unit) == pytest.approx(seconds)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "unit", "seconds"),
    [(3, "s", 3.0), (250, "ms", 0.25), (2, "m", 120.0), (0.5, "s", 0.5)],
)
def test_numbers_use_the_default_unit(value: float, unit: str, seconds: float) -> None:
    assert parse_duration(value, unit) == pytest.approx(seconds)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (-1, "negative"),
        (-0.5, "negative"),
        ("-1s", "negative"),
        (math.nan, "finite"),
        (math.inf, "finite"),
        (10**400, "finite"),
        ("1e400s", "finite"),
        (True, "boolean"),
        (False, "boolean"),
        ("", "invalid duration"),
        ("   ", "invalid duration"),
        ("abc", "invalid duration"),
        ("nan", "invalid duration"),
        ("1s-", "invalid duration"),
        ("5 minutes", "unknown unit 'minutes'"),
        ("3d", "unknown unit 'd'"),
        ("1 2s", "needs a unit"),
        (None, "number or a string"),
        ([1], "number or a string"),
    ],
)
def test_rejections_are_value_errors_with_a_reason(value: object, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        parse_duration(value, "s")  # type: ignore[arg-type]


def test_unknown_default_unit() -> None:
    with pytest.raises(ValueError, match="default unit"):
        parse_duration(1, "d")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0ms"),
        (0.25, "250ms"),
        (0.0001, "0.1ms"),
        (1.5, "1.5s"),
        (60, "1m"),
        (125.5, "2m5.5s"),
        (3600, "1h"),
        (5400, "1h30m"),
        (3661, "1h1m1s"),
    ],
)
def test_format(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf])
def test_format_rejects_nonsense(bad: float) -> None:
    with pytest.raises(ValueError):
        format_duration(bad)


@settings(deadline=None)  # no timing assertions: the box may be busy
@given(st.floats(min_value=0, max_value=MAX_DURATION_S - 1, allow_nan=False))
def test_format_round_trips_within_a_millisecond(seconds: float) -> None:
    assert parse_duration(format_duration(seconds), "s") == pytest.approx(seconds, abs=1e-3)


@settings(deadline=None)  # no timing assertions: the box may be busy
@given(
    st.floats(min_value=0, max_value=1e6, allow_nan=False),
    st.sampled_from(["ms", "s", "m"]),
)
def test_number_and_string_forms_agree(amount: float, unit: str) -> None:
    as_number = parse_duration(amount, unit)  # type: ignore[arg-type]
    as_text = parse_duration(f"{amount!r}{unit}", "s")
    assert as_text == pytest.approx(as_number)
    assert as_number >= 0
