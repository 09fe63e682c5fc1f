"""What a step implementation sees: its context and the exceptions it may raise.

This module is public for plugin authors and is imported by every worker process, so it
stays free of heavy imports (no pydantic, no zmq).

A step implementation is any ``Callable[[StepContext], Any]`` returning a value the node
can read: None, bool, int (64 bits), float, str, bytes, and lists, tuples and dicts of
these, with dict keys that are not lists or tuples (str keys are the safe choice). The
worker checks a result, and a heartbeat's progress, with the node's own frame decoding
before it sends it: an output that fails is the step's non-retryable ``CodecError`` (one
over the frame cap: ``FrameTooLarge``), and a progress that fails raises that error in the
step, from ``ctx.heartbeat``. It signals failure by raising:

* :class:`StepFailure` - a failure; ``retryable`` None lets the coordinator's retry
  policy decide, True/False overrides it;
* :class:`NonRetryable` - a failure that must not be retried;
* :class:`RetryAfter` - retry, but not before ``seconds``;
* :class:`StepCancelled` - the step saw its cancellation and stopped.

An implementation decorated with :func:`inline_step` is quick and never blocks: the worker
runs it on its socket thread, as soon as its frame is read, instead of handing it to a
step runner thread and back (two thread hand-offs, most of a fast step's cost in the
worker). The built-in ``noop``, ``echo`` and ``fail`` are inline. Anything that waits, does
I/O or computes for more than a fraction of a millisecond must not be: while it runs, the
worker reads no frame, sends no other step's result and no heartbeat, and it cannot be
cancelled (a worker whose inline step holds its socket thread for over 0.5 s, in one run
or in all its runs of over 20 ms within a minute, runs that implementation on its runner
threads from then on, with a warning).

An implementation decorated with :func:`cpu_bound_step` computes in Python for most of its
run, holding the GIL. The threads of one worker process cannot run Python at the same
time, so two such steps side by side take twice as long each, their results come back
together and the worker's core then idles until the next steps come. A worker runs one
such step at a time instead: the others wait in its queue (they count as dispatched, not
started, so ``queue_timeout`` applies), while its other steps run beside it as before.
The built-in ``cpu`` is one. A step whose heavy work releases the GIL (numpy, a
subprocess, I/O) should not be marked. A plugin's implementation is known to be
cpu-bound once its worker has loaded it, at its first run.

Any other exception is reported with its class name as the error type and ``retryable``
None. An error the node could not take as it stands fails the step, not retried, with an
error saying why (see :func:`describe_error`): it never leaves the step unanswered.
These classes sit outside the :class:`~tamma_actors.TammaError` tree on purpose: they are
raised by plugin code *to* the worker, never by tamma_actors to its callers.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from tamma_actors._durations import MAX_DURATION_S, MAX_DURATION_TEXT

__all__ = [
    "MAX_RETRY_AFTER",
    "NonRetryable",
    "RetryAfter",
    "StepCancelled",
    "StepContext",
    "StepFailure",
    "StepFunction",
    "cpu_bound_step",
    "describe_error",
    "inline_step",
    "is_cpu_bound",
    "is_inline",
]


class StepFailure(Exception):
    """A step failed; ``error_type`` defaults to the class name."""

    def __init__(
        self, message: str, *, retryable: bool | None = None, error_type: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.error_type = error_type or type(self).__name__


class NonRetryable(StepFailure):
    """A failure that retrying cannot fix (bad configuration, invalid input...)."""

    def __init__(self, message: str, *, error_type: str | None = None) -> None:
        super().__init__(message, retryable=False, error_type=error_type)


# The longest a RetryAfter may ask for, in seconds: the bound of every duration the node
# takes (10 years). It keeps each wait as a wall-clock time, and one centuries off is a
# mistake (or, past year 9999, a crash).
MAX_RETRY_AFTER = float(MAX_DURATION_S)


class RetryAfter(StepFailure):
    """Retry this step, but not before ``seconds`` (a finite number from 0 to
    ``MAX_RETRY_AFTER``; any other fails the step, not retried, saying so)."""

    def __init__(self, seconds: float, message: str = "") -> None:
        super().__init__(message or f"retry after {seconds}s", retryable=True)
        self.seconds = float(seconds)


class StepCancelled(Exception):
    """The step was cancelled (abort, timeout, node stop) and stopped cooperatively."""

    def __init__(self, message: str = "step cancelled") -> None:
        super().__init__(message)


def _no_progress_sink(progress: Any) -> None:
    """Progress goes nowhere when a context is built outside a worker (tests, tools)."""


@dataclass
class StepContext:
    """Everything one attempt of one step knows; built by the worker for each run."""

    execution_id: str
    step: str
    attempt: int
    idempotency_key: str
    input: Any = None
    inputs: dict[str, Any] = field(default_factory=dict)
    upstream: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    item_index: int | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    on_progress: Callable[[Any], None] = field(default=_no_progress_sink, repr=False)

    def heartbeat(self, progress: Any = None) -> None:
        """Tell the coordinator the step is alive (and, optionally, how far it got).

        Raises :class:`~tamma_actors.FrameTooLarge` when ``progress`` encodes to more than
        the node's ``max_frame_bytes``, and ``CodecError`` when it cannot be encoded or the
        node could not read it (a dict key that is a tuple)."""
        self.on_progress(progress)

    def check_cancelled(self) -> None:
        """Raise :class:`StepCancelled` if the step has been asked to stop."""
        if self.cancelled.is_set():
            raise StepCancelled()

    def sleep(self, seconds: float) -> None:
        """Wait ``seconds``; wake early and raise :class:`StepCancelled` on cancel."""
        if self.cancelled.wait(max(0.0, seconds)):
            raise StepCancelled()


StepFunction = Callable[[StepContext], Any]

F = TypeVar("F", bound=StepFunction)

_INLINE_MARK = "__tamma_inline__"
_CPU_BOUND_MARK = "__tamma_cpu_bound__"


def inline_step(fn: F) -> F:
    """Mark a step implementation as quick and non-blocking: workers run it on their socket
    thread (see the module docstring for what that rules out)."""
    setattr(fn, _INLINE_MARK, True)
    return fn


def is_inline(fn: object) -> bool:
    """Whether ``fn`` was marked with :func:`inline_step`."""
    return getattr(fn, _INLINE_MARK, False) is True


def cpu_bound_step(fn: F) -> F:
    """Mark a step implementation that computes in Python for most of its run (it holds
    the GIL): its worker runs one such step at a time and queues the others (see the
    module docstring)."""
    setattr(fn, _CPU_BOUND_MARK, True)
    return fn


def is_cpu_bound(fn: object) -> bool:
    """Whether ``fn`` was marked with :func:`cpu_bound_step`."""
    return getattr(fn, _CPU_BOUND_MARK, False) is True


def describe_error(exc: BaseException) -> dict[str, Any]:
    """The protocol's error map for an exception a step raised. It never raises: what it
    cannot describe as it stands (the exception's ``str()`` fails; a StepFailure whose
    message or error_type is not text or whose retryable is not a bool or None) becomes a
    non-retryable ``CodecError`` saying what was wrong, and a RetryAfter whose seconds are
    not a finite number from 0 to ``MAX_RETRY_AFTER`` a non-retryable ``ValueError``."""
    try:
        return _describe(exc)
    except _StrFailed as failed:
        why = f"the step raised {_type_name(exc)}, whose str() failed: {failed.why}"
    except BaseException as problem:  # the step's own class ran (a property...): anything
        why = f"the step raised {_type_name(exc)}, which cannot be described: "
        why += _safe_str(problem)
    return _error("CodecError", why, retryable=False)


class _StrFailed(Exception):
    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


def _str(exc: BaseException) -> str:
    try:
        return str(exc)
    except BaseException as problem:  # the step's own __str__: it may raise anything
        raise _StrFailed(_safe_str(problem)) from None


def _describe(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, StepFailure):
        bad = _bad_failure(exc)
        if bad is not None:
            return bad
        message: str = exc.message
        if isinstance(exc, RetryAfter):
            seconds = float(exc.seconds)
            return _error(exc.error_type, message, retryable=True, retry_after=seconds)
        return _error(exc.error_type, message, retryable=exc.retryable)
    if isinstance(exc, StepCancelled):
        return _error("StepCancelled", _str(exc), retryable=False)
    return _error(type(exc).__name__, _str(exc), retryable=None)


def _bad_failure(exc: StepFailure) -> dict[str, Any] | None:
    """The error for a StepFailure whose fields the node cannot take; None if they are fine."""
    what = _type_name(exc)
    for name in ("message", "error_type"):
        value = getattr(exc, name)
        if not isinstance(value, str):
            why = f"{what}'s {name} must be text (str), not {type(value).__name__}"
            return _error("CodecError", why, retryable=False)
    if exc.retryable is not None and not isinstance(exc.retryable, bool):
        why = f"{what}'s retryable must be True, False or None, not {type(exc.retryable).__name__}"
        return _error("CodecError", why, retryable=False)
    if isinstance(exc, RetryAfter):
        seconds = exc.seconds
        is_number = isinstance(seconds, int | float) and not isinstance(seconds, bool)
        if not (is_number and 0 <= seconds <= MAX_RETRY_AFTER):
            why = (
                f"{what}'s seconds must be a finite number from 0 to {MAX_DURATION_TEXT}, "
                f"not {seconds!r}"
            )
            return _error("ValueError", why, retryable=False)
    return None


def _error(
    error_type: str, message: str, *, retryable: bool | None, retry_after: float | None = None
) -> dict[str, Any]:
    return {
        "type": _sendable(error_type),
        "message": _sendable(message or error_type),
        "retryable": retryable,
        "retry_after": retry_after,
    }


def _sendable(text: str) -> str:
    """``text``, with any lone surrogate (not UTF-8, so not on the wire) escaped."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def _type_name(exc: BaseException) -> str:
    return _sendable(type(exc).__name__)


def _safe_str(exc: BaseException) -> str:
    """``"Type: message"`` for an exception, even one whose own str() fails."""
    try:
        text = str(exc)
    except BaseException:  # the step's own class: anything may happen
        text = "(its str() failed too)"
    return f"{_type_name(exc)}: {_sendable(text)}"
