"""A start's rules for a workflow beyond its structure: every implementation it names is
registered, the steps the coordinator runs itself (decision, parallel, subflow, ``wait``)
are used where it can run them, and a compensation is a task a worker runs, of a step
that did something to undo. A stored
definition is not judged by them again (``parse_workflow(stored=True)``): its execution
must still load.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tamma_actors._deadlines import COORDINATOR_IMPLEMENTATIONS
from tamma_actors._errors import Problem
from tamma_actors._plugins import GATED_BUILTINS
from tamma_actors._step_configs import timeouts_set

__all__ = ["StepNode", "coordinator_problems", "implementation_problems"]


@dataclass
class StepNode:
    """A step as the raw mapping gives it (validation reported what is malformed)."""

    index: int
    name: str
    deps: list[tuple[str, str]]  # (location, dependency name)
    implementation: Any
    compensation: Any
    raw: Mapping[str, Any]  # the step as written


def implementation_problems(
    nodes: Sequence[StepNode], known: set[str], steps: Mapping[str, int]
) -> Iterator[Problem]:
    listing = ", ".join(sorted(known)) or "none"
    for node in nodes:
        impl = node.implementation
        if isinstance(impl, str) and impl and impl not in known:
            setting = GATED_BUILTINS.get(impl)
            why = f"; the node registers it with {setting} = true" if setting else ""
            yield Problem(
                f"steps[{node.index}].implementation",
                f"unknown implementation {impl!r} (registered: {listing}){why}",
            )
        comp = node.compensation
        # A compensation names either another step or an implementation to run.
        if isinstance(comp, str) and comp not in known and comp not in steps:
            yield Problem(
                f"steps[{node.index}].compensation",
                f"compensation {comp!r} is neither a step nor a registered implementation",
            )


def coordinator_problems(nodes: Sequence[StepNode]) -> Iterator[Problem]:
    """Steps the coordinator runs itself (``wait``) where a worker would be sent them,
    which no worker offers (they would wait for good), or with deadlines they ignore."""
    by_name = {node.name: node for node in reversed(nodes)}  # the first one wins
    for node in nodes:
        kind, impl = node.raw.get("type", "task"), node.implementation
        if kind in ("decision", "subflow") and impl:
            yield Problem(
                f"steps[{node.index}].implementation",
                f"a {kind} step has no implementation: the coordinator runs it",
            )
        if impl in COORDINATOR_IMPLEMENTATIONS and kind == "parallel":
            yield Problem(
                f"steps[{node.index}].implementation",
                f"{impl!r} runs in the coordinator, not on a worker: it cannot be a parallel "
                "step's task (put a wait step before or after the parallel step)",
            )
        if impl in COORDINATOR_IMPLEMENTATIONS and kind == "task":
            for field in timeouts_set(node.raw):
                yield Problem(
                    f"steps[{node.index}].{field}",
                    f"a {impl} step has no {field} (its config.seconds is how long it waits)",
                )
        yield from _unused_retry_policy(node, kind, impl)
        comp = node.compensation
        if not isinstance(comp, str):
            continue
        if kind == "decision" or (kind == "task" and impl in COORDINATOR_IMPLEMENTATIONS):
            step_kind = "decision" if kind == "decision" else str(impl)
            yield Problem(
                f"steps[{node.index}].compensation",
                f"a {step_kind} step changes nothing a compensation could undo (its "
                "compensation would run a worker task on its output)",
            )
        template = by_name.get(comp)
        if template is None:
            what = "runs in the coordinator, not on a worker"
            wrong = comp in COORDINATOR_IMPLEMENTATIONS
        else:
            kind, comp_impl = template.raw.get("type", "task"), template.implementation
            what = f"is a {kind} step"
            if kind == "task" and comp_impl in COORDINATOR_IMPLEMENTATIONS:
                what = f"is a {comp_impl} step, which the coordinator runs"
            # a compensation is one task: a fan-out's items would run once, as one
            coordinators = ("decision", "parallel", "subflow")
            wrong = kind in coordinators or comp_impl in COORDINATOR_IMPLEMENTATIONS
        if wrong:
            yield Problem(
                f"steps[{node.index}].compensation",
                f"compensation {comp!r} {what}: a compensation is a task a worker runs",
            )


def _unused_retry_policy(node: StepNode, kind: str, impl: str | None) -> Iterator[Problem]:
    """A step that cannot fail in a way a retry would mend must not look retried: a
    decision fails only on its expressions (the same on every attempt), a wait step never."""
    if not any(node.raw.get(key) is not None for key in ("retry_policy", "retryPolicy")):
        return
    if kind == "decision":
        why = "a decision step is not retried: its expressions would fail the same way again"
    elif kind == "task" and impl in COORDINATOR_IMPLEMENTATIONS:
        why = f"a {impl} step is not retried: it cannot fail"
    else:
        return
    yield Problem(f"steps[{node.index}].retry_policy", why)
