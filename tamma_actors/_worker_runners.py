"""The worker's step runners: ``slots`` pykka ThreadingActors, one step at a time each,
and the ``RunnerPool`` that the worker's socket thread assigns ``run`` frames to. An
inline step (:func:`~tamma_actors._step_api.inline_step`) whose implementation is loaded
runs on the socket thread itself and takes no runner; a plugin's first run loads it on a
runner, so that no plugin import ever holds up the socket thread (the built-ins are loaded
at start). Cpu-bound steps (:func:`~tamma_actors._step_api.cpu_bound_step`) run one at a
time: the others wait, in order, while free runners take the other steps.

An inline implementation whose slow runs (each over ``INLINE_SLOW``, 20 ms) held the
socket thread for more than ``INLINE_LIMIT`` (0.5 s) in all within ``INLINE_WINDOW`` (a
minute), or one run that long, goes back to the runners for the worker's lifetime, with a
warning: a step that blocks for 0.3 s at each run would otherwise stall the socket
(heartbeats, cancels, every other step's frames) forever.

A runner reports through the worker's :class:`~tamma_actors._worker_outbox.Outbox`:
``started`` (which the outbox may hold a while), ``progress``, and the ``result`` frame,
encoded on the runner's thread and checked with the node's own decoding (an output or an
error the node could not read, or over the frame cap, becomes an error result instead: a
step always gets its answer).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pykka

from tamma_actors import _wire as wire
from tamma_actors._errors import CodecError, FrameTooLarge, TammaError, UnknownImplementation
from tamma_actors._plugins import PluginRegistry
from tamma_actors._step_api import (
    StepCancelled,
    StepContext,
    StepFunction,
    describe_error,
    is_cpu_bound,
    is_inline,
)
from tamma_actors._worker_outbox import Outbox

__all__ = ["RunnerPool", "Task"]

log = logging.getLogger("tamma_actors._worker")

_RUNNER_STOP_TIMEOUT = 1.0
# How much of an error message too big for a frame is kept (characters).
_ERROR_CUT = 4000
# How deep into a step's output the search for a tuple map key goes (msgpack packs no
# deeper than 511 levels).
_KEY_SEARCH_DEPTH = 512
# An inline implementation whose slow runs held the socket thread longer than this in all
# (seconds), within INLINE_WINDOW, is one that should not be inline: its worker stops
# running it inline. Only runs over INLINE_SLOW count: a quick step's run may include a
# wait for the GIL behind busy runner threads, or a collection of the cyclic GC.
INLINE_LIMIT = 0.5
INLINE_SLOW = 0.02
INLINE_WINDOW = 60.0


@dataclass(slots=True)
class _SlowRuns:
    """An inline implementation's runs over INLINE_SLOW within the last INLINE_WINDOW
    (when each ended, how long it took; at most INLINE_LIMIT / INLINE_SLOW of them before
    it is sent back to the runners) and how long they held the socket thread in all."""

    runs: deque[tuple[float, float]] = field(default_factory=deque)
    held: float = 0.0

    def add(self, ended: float, took: float) -> float:
        """Count a run that ended at ``ended`` (perf_counter); the window's total."""
        self.runs.append((ended, took))
        self.held += took
        while self.runs[0][0] < ended - INLINE_WINDOW:
            self.held -= self.runs.popleft()[1]
        return self.held


@dataclass
class Task:
    """One ``run`` map and the event that cancels it."""

    msg: dict[str, Any]
    cancelled: threading.Event = field(default_factory=threading.Event)

    @property
    def task_id(self) -> str:
        return str(self.msg["task_id"])


def _checked(msg: dict[str, Any], max_frame: int) -> bytes:
    """``msg`` encoded, once the node's own decoding of worker frames has taken it: a frame
    the node would drop (a map key it cannot read, a field of the wrong type) would leave
    its step unanswered, so it is caught here, where the step can still fail for it.
    FrameTooLarge over ``max_frame``; CodecError if it does not encode, _Unreadable if the
    node's decoding refuses it."""
    frame = wire.encode(msg)
    if len(frame) > max_frame:
        raise FrameTooLarge(f"{len(frame):,} bytes, over the {max_frame:,}-byte cap")
    try:
        wire.decode_worker_frame(frame, max_frame)
    except TammaError as exc:
        raise _Unreadable(str(exc)) from exc
    return frame


class _Unreadable(CodecError):
    """A frame that encodes, but that the node's decoding refuses."""


def _failure(error_type: str, message: str) -> dict[str, Any]:
    return {"type": error_type, "message": message, "retryable": False, "retry_after": None}


def _result_frame(task_id: str, output: Any, duration_ms: float, max_frame: int) -> bytes:
    """The result frame for a step's ``output``, or a failed step's if the node could not
    take it. Never raises."""
    try:
        return _checked(wire.result_ok(task_id, output, duration_ms, started=True), max_frame)
    except FrameTooLarge as exc:
        error = _failure("FrameTooLarge", f"step output is {exc}")
    except Exception as exc:  # CodecError, or whatever else packing the step's data did
        error = _failure("CodecError", f"step output cannot be sent: {_why(output, exc)}")
    return _error_frame(task_id, error, duration_ms, max_frame)


def _error_frame(task_id: str, error: dict[str, Any], duration_ms: float, max_frame: int) -> bytes:
    """The result frame for a failed step; an error too big for a frame goes with its type
    and message cut short. Never raises."""
    try:
        return _checked(wire.result_error(task_id, error, duration_ms, started=True), max_frame)
    except FrameTooLarge:
        keep = min(_ERROR_CUT, max_frame // 8)  # characters: up to 4 bytes each
        error = {**error, "type": _cut(error["type"], 200), "message": _cut(error["message"], keep)}
    except Exception as exc:  # describe_error makes maps that go: a last resort
        error = _failure("CodecError", f"the step's error cannot be sent: {exc}")
    try:
        return _checked(wire.result_error(task_id, error, duration_ms, started=True), max_frame)
    except Exception:
        error = _failure("CodecError", "the step's error cannot be sent")
        return wire.encode(wire.result_error(task_id, error, duration_ms, started=True))


def _cut(text: str, keep: int) -> str:
    if len(text) <= keep:
        return text
    return f"{text[:keep]}... (cut: {len(text):,} characters, too many for a frame)"


def _why(value: Any, exc: BaseException) -> str:
    """Why the node cannot read ``value`` (a step's output or progress), for its author:
    where a map key is a tuple if that is why, else what encoding or decoding said. (Only
    a value that encoded is searched: it is finite, and no bigger than a frame.)"""
    found = None
    if isinstance(exc, _Unreadable):
        try:
            found = _tuple_key(value, "", 0)
        except Exception:  # the step's own types (a key's __repr__...): say what decoding did
            found = None
    if found is None:
        return str(exc)
    where, kind = found
    return (
        f"it has a map key that is a {kind} (in the map at {where or 'the top'}); map keys "
        "must be str, int, float, bool, None or bytes (str is the safe choice)"
    )


def _tuple_key(value: Any, path: str, depth: int) -> tuple[str, str] | None:
    """Where in ``value`` a dict key is a tuple or list (msgpack packs it as an array, and
    no map key may be one when decoded), and its type; None if nowhere (or too deep)."""
    if depth > _KEY_SEARCH_DEPTH:
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, tuple | list):
                return path, type(key).__name__
            found = _tuple_key(item, f"{path}[{key!r:.40}]", depth + 1)
            if found is not None:
                return found
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            found = _tuple_key(item, f"{path}[{i}]", depth + 1)
            if found is not None:
                return found
    return None


class _StepRunner(pykka.ThreadingActor):
    """Runs one step at a time. Daemon thread: a step that ignores cancel must not keep
    the process alive once the worker has decided to exit."""

    use_daemon_thread = True

    def __init__(self, registry: PluginRegistry, outbox: Outbox, max_frame: int) -> None:
        super().__init__()
        self._registry = registry
        self._outbox = outbox
        self._max_frame = max_frame

    def on_receive(self, message: Any) -> None:
        if isinstance(message, Task):
            self._run(message)

    def _run(self, task: Task) -> None:
        self._outbox.started(task.task_id, task.msg.get("start_hold", 0.0))
        frame = _run_task(task, self._registry.get, self._outbox, self._max_frame)
        self._outbox.result(task.task_id, frame)


def _run_task(
    task: Task,
    resolve: Callable[[str], StepFunction],
    outbox: Outbox,
    max_frame: int,
) -> bytes:
    """Run ``task`` on the calling thread; its result frame (an error result if the step
    raised, its implementation is unknown, or its output cannot go out). Never raises:
    whatever the step does ends as a frame the node reads, so the runner, its slot and the
    step's answer are never lost."""
    msg, task_id = task.msg, task.task_id
    start = time.perf_counter()
    try:
        fn = resolve(msg["implementation"])
        output = fn(_context(task, outbox, max_frame))
    except UnknownImplementation as exc:
        error = _failure("UnknownImplementation", str(exc))
        return _error_frame(task_id, error, 0.0, max_frame)
    except BaseException as exc:  # a step's SystemExit too: the step's error, not ours
        elapsed = (time.perf_counter() - start) * 1000
        return _error_frame(task_id, describe_error(exc), elapsed, max_frame)
    elapsed = (time.perf_counter() - start) * 1000
    return _result_frame(task_id, output, elapsed, max_frame)


def _context(task: Task, outbox: Outbox, max_frame: int) -> StepContext:
    msg, task_id = task.msg, task.task_id

    def on_progress(value: Any) -> None:
        # Refused here, in the step, rather than dropped by the node (or, over the cap,
        # the connection with it).
        try:
            frame = _checked(wire.progress(task_id, value), max_frame)
        except FrameTooLarge as exc:
            raise FrameTooLarge(f"heartbeat progress is {exc} (max_frame_bytes)") from None
        except TammaError as exc:  # it cannot be encoded, or the node could not read it
            why = _why(value, exc)
            raise CodecError(f"heartbeat progress cannot be sent: {why}") from exc
        outbox.progress(task_id, frame)

    return StepContext(
        execution_id=msg["execution_id"],
        step=msg["step"],
        attempt=msg["attempt"],
        idempotency_key=msg["idempotency_key"],
        input=msg["input"],
        inputs=msg["inputs"],
        upstream=msg["upstream"],
        config=msg["config"],
        item_index=msg["item_index"],
        cancelled=task.cancelled,
        on_progress=on_progress,
    )


class RunnerPool:
    """The step runners and which task each is running; used by the socket thread only."""

    def __init__(
        self, slots: int, registry: PluginRegistry, outbox: Outbox, max_frame: int
    ) -> None:
        self._registry = registry
        self._outbox = outbox
        self._max_frame = max_frame
        registry.load_builtins()
        self._refs = [_StepRunner.start(registry, outbox, max_frame) for _ in range(slots)]
        self._free: deque[pykka.ActorRef[Any]] = deque(self._refs)
        self._running: dict[str, tuple[Task, pykka.ActorRef[Any]]] = {}
        # Runs beyond our slots (a restarted node does not know our old tasks) wait here.
        self._backlog: deque[Task] = deque()
        # Cpu-bound steps (cpu_bound_step) run one at a time, the one ``_cpu`` names; the
        # others wait here, in the order they came.
        self._cpu: str | None = None
        self._cpu_waiting: deque[Task] = deque()
        # Inline implementations that held the socket thread too long: they run on runners.
        self._not_inline: set[str] = set()
        # Per inline implementation, its slow runs within the window.
        self._slow: dict[str, _SlowRuns] = {}

    @property
    def slots(self) -> int:
        return len(self._refs)

    def running_ids(self) -> list[str]:
        return [*self._running, *(t.task_id for t in self._waiting())]

    def _waiting(self) -> itertools.chain[Task]:
        return itertools.chain(self._backlog, self._cpu_waiting)

    def submit(self, task: Task) -> None:
        """Start ``task`` on a free runner, or queue it; an inline step runs here and now
        (its result is posted without waking the socket thread: this is that thread)."""
        task_id = task.task_id
        if task_id in self._running or any(t.task_id == task_id for t in self._waiting()):
            log.info("task %s is already here; duplicate run ignored", task_id)
            return
        name = task.msg["implementation"]
        fn = self._registry.loaded(name)
        if fn is not None and is_inline(fn) and name not in self._not_inline:
            began = time.perf_counter()
            frame = _run_task(task, lambda _: fn, self._outbox, self._max_frame)
            self._outbox.answer(task_id, frame, wake=False)
            ended = time.perf_counter()
            if ended - began > INLINE_SLOW:
                self._check_inline(name, ended, ended - began)
            return
        (self._cpu_waiting if fn is not None and is_cpu_bound(fn) else self._backlog).append(task)
        self._fill()

    def _fill(self) -> None:
        """Start waiting tasks on free runners: the next cpu-bound one if none runs, then
        the others in the order they came."""
        while self._free:
            if self._cpu is None and self._cpu_waiting:
                task = self._cpu_waiting.popleft()
                self._cpu = task.task_id
            elif self._backlog:
                task = self._backlog.popleft()
            else:
                return
            self._start(task, self._free.popleft())

    def _check_inline(self, name: str, ended: float, took: float) -> None:
        """Count a slow run of inline step ``name``; once its slow runs within the window
        held the socket thread over the limit, it runs on runners from now on (in this
        worker): it was marked inline by mistake, or it blocks."""
        slow = self._slow.setdefault(name, _SlowRuns())
        held = slow.add(ended, took)
        if held > INLINE_LIMIT:
            del self._slow[name]
            self._not_inline.add(name)
            log.warning(
                "inline step %s held the worker's socket thread for %.0f ms in %d run(s) of "
                "over %.0f ms within %.0f s (limit %.0f ms); it runs on step runners from "
                "now on: it should not be marked inline_step",
                name,
                held * 1000,
                len(slow.runs),
                INLINE_SLOW * 1000,
                INLINE_WINDOW,
                INLINE_LIMIT * 1000,
            )

    def _start(self, task: Task, ref: pykka.ActorRef[Any]) -> None:
        self._running[task.task_id] = (task, ref)
        ref.tell(task)

    def finished(self, task_id: str) -> None:
        _, ref = self._running.pop(task_id)
        if self._cpu == task_id:
            self._cpu = None
        self._free.appendleft(ref)
        self._fill()

    def cancel(self, task_id: str) -> None:
        if task_id in self._running:
            self._running[task_id][0].cancelled.set()
            return
        for queue in (self._backlog, self._cpu_waiting):
            for task in queue:
                if task.task_id == task_id:
                    queue.remove(task)
                    self._answer_cancelled(task)
                    return

    def cancel_all(self) -> None:
        for queue in (self._backlog, self._cpu_waiting):
            while queue:
                self._answer_cancelled(queue.popleft())
        for task, _ in self._running.values():
            task.cancelled.set()

    def _answer_cancelled(self, task: Task) -> None:
        error = describe_error(StepCancelled("cancelled before it started"))
        self._outbox.answer(task.task_id, wire.encode(wire.result_error(task.task_id, error, 0.0)))

    def close(self) -> None:
        self.cancel_all()
        busy = {id(ref) for _, ref in self._running.values()}
        for ref in self._refs:
            # A busy runner may be stuck in a step that ignores cancel: do not wait for it.
            if id(ref) in busy:
                ref.stop(block=False)
            else:
                with contextlib.suppress(pykka.Timeout):
                    ref.stop(block=True, timeout=_RUNNER_STOP_TIMEOUT)
