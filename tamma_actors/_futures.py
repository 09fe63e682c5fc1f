"""Futures the engine answers with: already done, already failed, every call guarded
(a ``TammaError`` raised before any work becomes a failed future), one settled as
another settles, and a gathering of many into one."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from tamma_actors._errors import TammaError, UnknownExecution

__all__ = ["done", "failed", "gather", "guarded", "relay", "when_all"]

T = TypeVar("T")


def done(value: T) -> Future[T]:
    fut: Future[T] = Future()
    fut.set_result(value)
    return fut


def failed(exc: BaseException) -> Future[Any]:
    fut: Future[Any] = Future()
    fut.set_exception(exc)
    return fut


def relay(source: Future[T], target: Future[T]) -> None:
    """Settle ``target`` as ``source`` settles."""

    def copy(fut: Future[T]) -> None:
        exc = fut.exception()
        if exc is not None:
            target.set_exception(exc)
        else:
            target.set_result(fut.result())

    source.add_done_callback(copy)


def guarded(fn: Callable[..., Future[T]]) -> Callable[..., Future[T]]:
    """Every engine call answers with a future, even when it fails before any work."""

    def wrapper(*args: Any, **kwargs: Any) -> Future[T]:
        try:
            return fn(*args, **kwargs)
        except TammaError as exc:
            return failed(exc)

    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper


def when_all(futures: list[Future[Any]], then: Callable[[], None]) -> None:
    """Call ``then`` once every one of ``futures`` is settled (at once if there are none),
    on the thread that settles the last one."""
    if not futures:
        then()
        return
    remaining = [len(futures)]
    lock = threading.Lock()

    def one_done(_: Future[Any]) -> None:
        with lock:
            remaining[0] -= 1
            last = remaining[0] == 0
        if last:
            then()

    for fut in futures:
        fut.add_done_callback(one_done)


def gather(futures: list[Future[dict[str, Any]]], out: Future[list[dict[str, Any]]]) -> None:
    def settle() -> None:
        results = []
        for fut in futures:
            exc = fut.exception()
            if exc is None:
                results.append(fut.result())
            elif not isinstance(exc, UnknownExecution):  # deleted meanwhile: leave it out
                out.set_exception(exc)
                return
        out.set_result(results)

    when_all(futures, settle)
