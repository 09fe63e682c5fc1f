"""The built-in step implementations: useful steps plus fault injectors for tests and demos.

Each takes a :class:`StepContext` and returns a msgpack-able value. Configuration is
checked here: a missing or mistyped field is a :class:`NonRetryable` failure naming it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from typing import Any, TypeVar

from tamma_actors import _pdeath as pdeath
from tamma_actors._step_api import (
    NonRetryable,
    StepCancelled,
    StepContext,
    StepFailure,
    cpu_bound_step,
    inline_step,
)

__all__ = ["cpu", "crash", "echo", "fail", "hang", "noop", "record", "shell", "sleep"]

T = TypeVar("T")
_MISSING: Any = object()
# How often a running shell command looks at its cancel flag; bounded so cancel is prompt.
_SHELL_CANCEL_CHECK = 0.05
# CPU burnt between two looks at the cancel flag.
_CPU_SLICE = 0.01


def _field(
    ctx: StepContext, name: str, kind: type[T] | tuple[type, ...], default: Any = _MISSING
) -> T:
    value = ctx.config.get(name, default)
    if value is _MISSING:
        raise NonRetryable(f"config field {name!r} is required", error_type="ConfigError")
    # bool is an int subclass; a flag where a number belongs is a mistake, not a 1.
    kinds = kind if isinstance(kind, tuple) else (kind,)
    numeric = int in kinds or float in kinds
    if not isinstance(value, kinds) or (isinstance(value, bool) and numeric and bool not in kinds):
        names = " or ".join(k.__name__ for k in kinds)
        raise NonRetryable(
            f"config field {name!r} must be {names}, got {type(value).__name__}",
            error_type="ConfigError",
        )
    return value  # type: ignore[return-value]


def _non_negative(name: str, value: float) -> float:
    if value < 0:
        raise NonRetryable(f"config field {name!r} must be >= 0", error_type="ConfigError")
    return float(value)


@inline_step
def noop(ctx: StepContext) -> Any:
    """Pass the step's input through unchanged."""
    return ctx.input


@inline_step
def echo(ctx: StepContext) -> Any:
    """Return ``config["message"]``."""
    return _field(ctx, "message", object)


def sleep(ctx: StepContext) -> dict[str, Any]:
    """Sleep ``config["seconds"]``, waking at once on cancel."""
    seconds = _non_negative("seconds", _field(ctx, "seconds", (int, float)))
    ctx.sleep(seconds)
    return {"slept": seconds}


@cpu_bound_step
def cpu(ctx: StepContext) -> dict[str, Any]:
    """Burn ``config["ms"]`` milliseconds of this thread's CPU time."""
    budget = _non_negative("ms", _field(ctx, "ms", (int, float))) / 1000.0
    start = time.thread_time()
    spins = 0
    while time.thread_time() - start < budget:
        ctx.check_cancelled()
        deadline = time.thread_time() + _CPU_SLICE
        while time.thread_time() < deadline:
            spins += 1
    return {"ms": budget * 1000.0, "spins": spins}


@inline_step
def fail(ctx: StepContext) -> dict[str, Any]:
    """Fail attempts 1..``config["times"]``, then succeed with ``{"attempt": n}``."""
    times = _field(ctx, "times", int, 1)
    error_type = _field(ctx, "error", str, "StepFailure")
    retryable = _field(ctx, "retryable", bool, True)
    if ctx.attempt <= times:
        message = _field(ctx, "message", str, f"injected failure {ctx.attempt} of {times}")
        raise StepFailure(message, retryable=retryable, error_type=error_type)
    return {"attempt": ctx.attempt}


def record(ctx: StepContext) -> dict[str, Any]:
    """Append ``"<execution_id> <step> <attempt>"`` to ``config["path"]``, durably (the
    step reads ``<step>[<i>]`` for the i-th item of a parallel step)."""
    path = _field(ctx, "path", str)
    step = ctx.step if ctx.item_index is None else f"{ctx.step}[{ctx.item_index}]"
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(f"{ctx.execution_id} {step} {ctx.attempt}\n")
        fh.flush()
        os.fsync(fh.fileno())
    return {"recorded": True}


def crash(ctx: StepContext) -> dict[str, Any]:
    """SIGKILL the whole worker process on attempts 1..``config["times"]``."""
    times = _field(ctx, "times", int, 1)
    if ctx.attempt <= times:
        os.kill(os.getpid(), signal.SIGKILL)
    return {"attempt": ctx.attempt}


def hang(ctx: StepContext) -> Any:
    """Block until cancelled, then raise StepCancelled."""
    ctx.cancelled.wait()
    raise StepCancelled()


def shell(ctx: StepContext) -> dict[str, Any]:
    """Run ``config["command"]`` (a list: no shell; a string: through /bin/sh).

    ``config["timeout"]`` (seconds) bounds it; cancel kills it. A non-zero exit code is a
    StepFailure carrying the exit code and the tail of stderr.
    """
    command: list[str] | str = _field(ctx, "command", (list, str))
    if isinstance(command, list) and not all(isinstance(a, str) for a in command):
        raise NonRetryable("config field 'command' must be a list of str", error_type="ConfigError")
    timeout: float | None = _field(ctx, "timeout", (int, float, type(None)), None)
    cwd: str | None = _field(ctx, "cwd", (str, type(None)), None)
    if isinstance(command, list) and not _runnable(command[0] if command else "", cwd):
        raise NonRetryable(
            f"cannot run {command!r}: no such program {command[0] if command else ''!r}",
            error_type="ShellError",
        )
    try:
        proc = subprocess.Popen(
            _guarded(command),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
            # not Linux: a killed worker leaves its command running
            preexec_fn=_dies_with_its_worker if pdeath.AVAILABLE else None,
        )
    except OSError as exc:
        raise NonRetryable(f"cannot run {command!r}: {exc}", error_type="ShellError") from exc
    stdout, stderr = _communicate(ctx, proc, timeout)
    result = {"returncode": proc.returncode, "stdout": stdout, "stderr": stderr}
    if proc.returncode != 0:
        raise StepFailure(
            f"command exited with {proc.returncode}: {stderr.strip()[-500:]}",
            error_type="ShellError",
        )
    return result


# The command runs under a /bin/sh of its own, the leader of its session: told by Linux
# when the worker thread that started it ends (_dies_with_its_worker), it kills the whole
# session, whatever the command started (a pipeline, a subshell, a job in the background).
# In its own session, a command would otherwise outlive a killed worker and finish its side
# effects while the step runs again elsewhere.
_GUARD = 'trap "kill -KILL 0" TERM; "$@" & wait $!'


def _guarded(command: list[str] | str) -> list[str]:
    argv = ["/bin/sh", "-c", command] if isinstance(command, str) else command
    return ["/bin/sh", "-c", _GUARD, "tamma-shell", *argv]


def _runnable(program: str, cwd: str | None) -> bool:
    """Whether ``program`` (a list command's first word) names an executable file, as the
    guard's shell would find it: a path (from ``cwd``), else on PATH."""
    if not program:
        return False
    if os.sep in program:
        path = os.path.join(cwd or "", program)
        return os.path.isfile(path) and os.access(path, os.X_OK)
    return shutil.which(program) is not None


def _dies_with_its_worker() -> None:
    """In the guard's process, before it runs: SIGTERM it when the worker thread that
    started it ends (the worker killed with it), so it kills its session."""
    pdeath.die_with_parent(signal.SIGTERM)


def _communicate(
    ctx: StepContext, proc: subprocess.Popen[str], timeout: float | None
) -> tuple[str, str]:
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        try:
            return proc.communicate(timeout=_SHELL_CANCEL_CHECK)
        except subprocess.TimeoutExpired:
            pass
        if ctx.cancelled.is_set():
            _kill(proc)
            raise StepCancelled("shell command cancelled") from None
        if deadline is not None and time.monotonic() >= deadline:
            _kill(proc)
            raise StepFailure(f"command timed out after {timeout}s", error_type="Timeout")


def _kill(proc: subprocess.Popen[str]) -> None:
    # The command runs in its own session: kill the whole group, not just the shell.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
