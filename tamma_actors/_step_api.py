"""What a step implementation sees: its context and the exceptions it may raise.

This module is public for plugin authors and is imported by every worker process, so it
stays free of heavy imports (no pydantic, no zmq).

A step implementation is any ``Callable[[StepContext], Any]`` returning a msgpack-able
value. It signals failure by raising:

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

Any other exception is reported with its class name as the error type and ``retryable``
None. These classes sit outside the :class:`~tamma_actors.TammaError` tree on purpose:
they are raised by plugin code *to* the worker, never by tamma_actors to its callers.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

__all__ = [
    "NonRetryable",
    "RetryAfter",
    "StepCancelled",
    "StepContext",
    "StepFailure",
    "StepFunction",
    "describe_error",
    "inline_step",
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


class RetryAfter(StepFailure):
    """Retry this step, but not before ``seconds`` have passed."""

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
        the node's ``max_frame_bytes``, and ``CodecError`` when it cannot be encoded."""
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


def inline_step(fn: F) -> F:
    """Mark a step implementation as quick and non-blocking: workers run it on their socket
    thread (see the module docstring for what that rules out)."""
    setattr(fn, _INLINE_MARK, True)
    return fn


def is_inline(fn: object) -> bool:
    """Whether ``fn`` was marked with :func:`inline_step`."""
    return getattr(fn, _INLINE_MARK, False) is True


def describe_error(exc: BaseException) -> dict[str, Any]:
    """The protocol's error map for an exception a step raised."""
    retry_after: float | None = None
    if isinstance(exc, StepFailure):
        error_type, message, retryable = exc.error_type, exc.message, exc.retryable
        if isinstance(exc, RetryAfter):
            retry_after = exc.seconds
    elif isinstance(exc, StepCancelled):
        error_type, message, retryable = "StepCancelled", str(exc), False
    else:
        error_type, message, retryable = type(exc).__name__, str(exc), None
    return {
        "type": error_type,
        "message": message or error_type,
        "retryable": retryable,
        "retry_after": retry_after,
    }
