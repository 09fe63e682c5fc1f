"""Step implementations used only by the worker and worker-pool tests (via the allowlist)."""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

from tamma_actors._errors import FrameTooLarge
from tamma_actors._step_api import StepContext, cpu_bound_step, inline_step


def stubborn(ctx: StepContext) -> Any:
    """Blocks without ever looking at its cancel flag (a badly written plugin)."""
    time.sleep(float(ctx.config.get("seconds", 3600)))
    return "finished anyway"


def chatty(ctx: StepContext) -> Any:
    """Reports progress ``config["n"]`` times, then returns how often."""
    n = int(ctx.config.get("n", 3))
    for i in range(n):
        ctx.heartbeat({"done": i + 1, "of": n})
    return {"beats": n, "key": ctx.idempotency_key, "item": ctx.item_index}


def loud(ctx: StepContext) -> Any:
    """One heartbeat whose progress is ``config["n"]`` characters, then a small one."""
    try:
        ctx.heartbeat("x" * int(ctx.config["n"]))
    except FrameTooLarge as exc:
        ctx.heartbeat({"refused": str(exc)})
        raise
    return "unreachable if the progress was too big"


def unencodable(ctx: StepContext) -> Any:
    return object()


def big(ctx: StepContext) -> Any:
    return "x" * int(ctx.config["n"])


def exits(ctx: StepContext) -> Any:
    sys.exit(3)


def context(ctx: StepContext) -> Any:
    """Returns what it was given, to check the worker builds the context faithfully."""
    return {
        "execution_id": ctx.execution_id,
        "step": ctx.step,
        "attempt": ctx.attempt,
        "idempotency_key": ctx.idempotency_key,
        "input": ctx.input,
        "inputs": ctx.inputs,
        "upstream": ctx.upstream,
        "config": ctx.config,
        "item_index": ctx.item_index,
    }


@inline_step
def where(ctx: StepContext) -> Any:
    """An inline step that says which thread ran it; reports progress, exits, or sleeps
    (as a step wrongly marked inline would block), on request."""
    if ctx.config.get("beat"):
        ctx.heartbeat("inline")
    time.sleep(float(ctx.config.get("sleep", 0)))
    if ctx.config.get("exit"):
        sys.exit(3)
    return threading.current_thread().name


ALLOWLIST = {
    name: f"plugins_for_tests:{name}"
    for name in ("stubborn", "chatty", "loud", "unencodable", "big", "exits", "context", "where")
}


def once_blocking(ctx: StepContext) -> Any:
    """First run (no marker file yet): creates the marker and blocks until cancelled or
    killed. Any later run returns at once: a re-dispatched task can complete."""
    path = ctx.config["path"]
    try:
        with open(path, "x"):
            pass
    except FileExistsError:
        return {"second_run": True, "attempt": ctx.attempt}
    ctx.heartbeat("blocking")  # tells a test the marker exists: killing us now is safe
    ctx.cancelled.wait()
    return {"second_run": False}


ALLOWLIST["once_blocking"] = "plugins_for_tests:once_blocking"
ALLOW_ARGS = [arg for name, target in ALLOWLIST.items() for arg in ("--allow", f"{name}={target}")]


def hog(ctx: StepContext) -> Any:
    """First run (no marker file yet): holds ``config["mb"]`` MiB until cancelled or killed.
    Any later run returns at once."""
    path = ctx.config["path"]
    try:
        with open(path, "x"):
            pass
    except FileExistsError:
        return {"second_run": True}
    held = bytearray(int(ctx.config["mb"]) << 20)
    for i in range(0, len(held), 4096):  # touch every page: resident, not just reserved
        held[i] = 1
    ctx.heartbeat("holding")
    ctx.cancelled.wait()
    return {"second_run": False, "held": len(held)}


ALLOWLIST["hog"] = "plugins_for_tests:hog"
ALLOW_ARGS = [arg for name, target in ALLOWLIST.items() for arg in ("--allow", f"{name}={target}")]


@cpu_bound_step
def heavy(ctx: StepContext) -> Any:
    """Marked cpu-bound, but waits for its cancel (or ``config["seconds"]``): the worker's
    one-at-a-time lane is tested without burning CPU."""
    ctx.sleep(float(ctx.config.get("seconds", 60.0)))
    return "done"


ALLOWLIST["heavy"] = "plugins_for_tests:heavy"
ALLOW_ARGS = [arg for name, target in ALLOWLIST.items() for arg in ("--allow", f"{name}={target}")]


def sees_upstream(ctx: StepContext) -> Any:
    """A fan-out item: what it got of the data its fan-out's items share."""
    listing = ctx.upstream["src"]
    assert listing[ctx.item_index or 0] == ctx.input
    return {
        "item": ctx.input,
        "index": ctx.item_index,
        "upstream": len(listing),
        "who": ctx.inputs["who"],
    }
