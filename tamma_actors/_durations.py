"""Durations as people write them in workflow files and node config ("250ms", "5m", 30)."""

from __future__ import annotations

import argparse
import math
import re
from typing import Literal

__all__ = [
    "DURATION_PATTERN",
    "MAX_DURATION_S",
    "MAX_DURATION_TEXT",
    "DurationUnit",
    "format_duration",
    "parse_duration",
    "positive_days",
    "positive_seconds",
    "wait_seconds",
]

DurationUnit = Literal["ms", "s", "m"]

# The longest duration a workflow file or the node's config may give (10 years of 365
# days): far beyond any real wait, timeout or retry delay, and far enough below what a
# datetime, a timer or a poll timeout can hold that adding one to "now" never overflows.
MAX_DURATION_S = 10 * 365 * 86400
MAX_DURATION_TEXT = "10 years (315,360,000 s)"

_SECONDS_PER_UNIT: dict[str, float] = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_NUMBER = r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:e[+-]?[0-9]+)?"
_PART_RE = re.compile(rf"\s*({_NUMBER})\s*([a-z]*)\s*")

# The strings parse_duration takes, as a JSON Schema (ECMA 262) pattern: one number with an
# optional unit, or a compound whose every part has one; any case ("5M" is five minutes).
_ANY_CASE_NUMBER = _NUMBER.replace("e[+-]", "[eE][+-]")
_ANY_CASE_UNIT = "(?:[mM][sS]|[sShHmM])"
DURATION_PATTERN = (
    rf"^\s*(?:{_ANY_CASE_NUMBER}\s*{_ANY_CASE_UNIT}?"
    rf"|(?:{_ANY_CASE_NUMBER}\s*{_ANY_CASE_UNIT}\s*){{2,}})\s*$"
)


def parse_duration(
    value: float | int | str, default_unit: DurationUnit, *, cap: bool = False
) -> float:
    """Seconds for ``value``: a number in ``default_unit`` or a string such as ``"1.5s"``.

    Accepted units are ``ms``, ``s``, ``m`` and ``h``; a bare number string uses
    ``default_unit``. Negative, non-finite, boolean or unparsable values, and durations
    above MAX_DURATION_S, raise ValueError (with ``cap``, one above it is MAX_DURATION_S:
    a definition stored before the bound must still load).
    """
    if default_unit not in _SECONDS_PER_UNIT:
        raise ValueError(f"unknown default unit {default_unit!r}")
    # bool is an int subclass; `timeout: true` is a typo, not one millisecond.
    if isinstance(value, bool):
        raise ValueError(f"a duration cannot be a boolean ({value!r})")
    if isinstance(value, int | float):
        try:
            amount = float(value)
        except OverflowError as exc:  # an int too large for a float
            raise ValueError(f"a duration must be finite, got {value!r}") from exc
        return _checked(amount * _SECONDS_PER_UNIT[default_unit], value, cap)
    if not isinstance(value, str):
        raise ValueError(f"a duration must be a number or a string, not {type(value).__name__}")
    return _parse_text(value, default_unit, cap)


def _parse_text(text: str, default_unit: DurationUnit, cap: bool) -> float:
    """One ``<number><unit>`` or a compound such as ``"1h30m"``; a bare number uses
    ``default_unit``."""
    lowered = text.lower()
    if lowered.strip().startswith("-"):
        raise ValueError(f"a duration cannot be negative, got {text!r}")
    parts: list[tuple[str, str]] = []
    pos = 0
    while pos < len(lowered) or not parts:
        match = _PART_RE.match(lowered, pos)
        if match is None or match.end() == pos:
            raise ValueError(
                f"invalid duration {text!r}: expected a non-negative number with an optional "
                "unit (ms, s, m, h), e.g. '250ms', '30s', '5m', '1h30m'"
            )
        parts.append((match.group(1), match.group(2)))
        pos = match.end()
    if len(parts) > 1 and any(not unit for _, unit in parts):
        raise ValueError(f"invalid duration {text!r}: every part of a compound needs a unit")
    total = 0.0
    for number, unit in parts:
        unit = unit or default_unit
        if unit not in _SECONDS_PER_UNIT:
            raise ValueError(
                f"invalid duration {text!r}: unknown unit {unit!r} (use ms, s, m or h)"
            )
        total += float(number) * _SECONDS_PER_UNIT[unit]
    return _checked(total, text, cap)


def _checked(seconds: float, original: object, cap: bool = False) -> float:
    if math.isnan(seconds) or math.isinf(seconds):
        raise ValueError(f"a duration must be finite, got {original!r}")
    if seconds < 0:
        raise ValueError(f"a duration cannot be negative, got {original!r}")
    if seconds > MAX_DURATION_S and cap:
        return float(MAX_DURATION_S)
    if seconds > MAX_DURATION_S:
        raise ValueError(f"a duration may be at most {MAX_DURATION_TEXT}, got {original!r}")
    return seconds


def format_duration(seconds: float) -> str:
    """A short human form: ``"250ms"``, ``"1.5s"``, ``"2m5s"``, ``"1h30m"``.

    The output parses back with :func:`parse_duration` to within a millisecond
    (a microsecond below one second).
    """
    if math.isnan(seconds) or math.isinf(seconds) or seconds < 0:
        raise ValueError(f"cannot format duration {seconds!r}")
    if seconds < 1:
        return f"{_trim(seconds * 1000)}ms"
    if seconds < 60:
        return f"{_trim(seconds)}s"
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(int(minutes), 60)
    text = f"{hours}h" if hours else ""
    text += f"{minutes}m" if minutes else ""
    secs_text = _trim(secs)
    return text + (f"{secs_text}s" if secs_text != "0" else "")


def _trim(number: float) -> str:
    text = f"{number:.3f}".rstrip("0").rstrip(".")
    return text or "0"


def positive_days(text: str) -> float:
    """A number of days above zero, as ``--older-than`` takes it (an argparse type, so both
    ``tamma admin cleanup`` and ``tamma-node cleanup`` refuse ``0`` the same way)."""
    return _positive(text, "days")


def positive_seconds(text: str) -> float:
    """A number of seconds above zero, as ``tamma``'s timeouts take it (an argparse type:
    ``nan``, ``inf``, ``0`` or ``-1`` is a usage error, not a traceback or a silent 30)."""
    return _positive(text, "seconds")


def wait_seconds(text: str) -> float:
    """How long ``tamma`` waits for an execution's end: 0 (look once) or more seconds."""
    return _positive(text, "seconds", zero=True)


def _positive(text: str, unit: str, *, zero: bool = False) -> float:
    try:
        number = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of {unit}: {text!r}") from None
    if not ((number >= 0 if zero else number > 0) and math.isfinite(number)):
        least = "0 or more" if zero else "above 0"
        raise argparse.ArgumentTypeError(f"must be a number of {unit} {least}, not {text!r}")
    return number
