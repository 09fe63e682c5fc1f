"""The scheduler's books of steps: the index (big workflows) and the passes (small ones)
give the verdicts of full passes over every step in the same order, and the same ready
steps, steps in flight and end; with the index a transition costs the steps it moved, not
the whole workflow."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tamma_actors._step_types as step_types
from tamma_actors._models import WorkflowConfig
from tamma_actors._state import ExecutionState, apply, make_event
from tamma_actors._step_index import INDEX_FROM_STEPS, StepIndex, StepScan, step_book
from tamma_actors._step_types import join
from tamma_actors._store import MemoryStore
from tests.unit.test_execution import _kit, ok, step, wf

Emit = Callable[[str, str], None]
_ENDED = ("succeeded", "failed", "skipped", "cancelled")
VERDICT_EVENTS = {"ready": "step.ready", "cancelled": "step.cancelled", "skipped": "step.skipped"}


def _full_passes(state: ExecutionState, deps_of: dict[str, tuple[str, ...]], emit: Emit) -> None:
    """The scheduler before the index: passes over every step in file order until no step
    was cancelled or skipped."""
    again = True
    while again:
        again = False
        for name in state.order:
            if state.steps[name].status != "pending":
                continue
            verdict = join(state.steps[d].status for d in deps_of[name])
            if verdict is not None:
                emit(VERDICT_EVENTS[verdict], name)
                again = again or verdict != "ready"


def _judged_by(
    book: StepIndex | StepScan, deps_of: dict[str, tuple[str, ...]]
) -> Callable[..., None]:
    def run(state: ExecutionState, emit: Emit) -> None:
        for name in book.pending_passes(state):
            verdict = join(state.steps[d].status for d in deps_of[name])
            if verdict is not None:
                emit(VERDICT_EVENTS[verdict], name)

    return run


class _Twin:
    """One execution's state, driven by the test and judged by one of the schedulers."""

    def __init__(self, order: list[str]) -> None:
        self.state = ExecutionState(id="e1")
        self.emitted: list[tuple[str, str]] = []
        self.apply("workflow.created", workflow_id="wf", steps=order)
        self.apply("workflow.started")

    def apply(self, etype: str, **data: Any) -> None:
        apply(self.state, make_event(self.state, etype, 1.0, **data))

    def emit(self, etype: str, name: str) -> None:
        self.emitted.append((etype, name))
        self.apply(etype, step=name)


def _graph(rng: random.Random, n: int) -> tuple[list[str], dict[str, tuple[str, ...]]]:
    """A random DAG over ``n`` steps, listed in a random file order."""
    topo = [f"s{i}" for i in range(n)]
    deps_of = {
        name: tuple(rng.sample(topo[:i], rng.randint(0, min(i, 3)))) for i, name in enumerate(topo)
    }
    order = topo[:]
    rng.shuffle(order)
    return order, deps_of


def _book(
    kind: type[StepIndex] | None,
    order: list[str],
    deps_of: dict[str, tuple[str, ...]],
    waits: frozenset[str] = frozenset(),
) -> StepIndex | StepScan:
    """The book a supervisor would make of this graph, written as a workflow definition in
    ``order`` (``kind`` StepIndex forces the index; None lets its size choose)."""
    cfg = WorkflowConfig.model_validate(
        {"name": "g", "steps": [step(name, *deps_of[name]) for name in order]}
    )
    maps = (cfg.dependency_map(), cfg.dependents_map(), cfg.step_positions())
    return step_book(*maps, waits) if kind is None else kind(*maps, waits)


def _drive(rng: random.Random, twins: list[_Twin]) -> Iterator[None]:
    """Move one step at a time the way a supervisor does (a ready step is dispatched,
    runs and succeeds or fails; a pending one may be skipped by a decision; a cancelled
    or skipped one may be reopened by a retry), the same move on every twin."""
    state = twins[0].state
    while True:
        moves: list[tuple[str, str]] = []
        for name in state.order:
            status = state.steps[name].status
            if status == "ready":
                moves.append(("step.dispatched", name))
            elif status == "dispatched":
                moves += [("step.completed", name), ("step.failed", name)]
            elif status == "pending" and rng.random() < 0.1:
                moves.append(("step.skipped", name))
            elif status in ("cancelled", "skipped") and rng.random() < 0.05:
                moves.append(("step.reopened", name))
        if not moves:
            return
        etype, name = rng.choice(moves)
        for twin in twins:
            twin.apply(etype, step=name, **({"attempt": 1} if etype == "step.dispatched" else {}))
        yield


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 14))
def test_the_index_gives_the_verdicts_of_full_passes_in_their_order(seed: int, n: int) -> None:
    rng = random.Random(seed)
    order, deps_of = _graph(rng, n)
    full = _Twin(order)
    books = [_book(StepIndex, order, deps_of), StepScan(frozenset())]
    twins = [_Twin(order) for _ in books]

    def judge() -> None:
        _full_passes(full.state, deps_of, full.emit)
        ready = [n for n in order if full.state.steps[n].status == "ready"]
        in_flight = sum(st.status in ("dispatched", "running") for st in full.state.steps.values())
        ended = all(st.status in _ENDED for st in full.state.steps.values())
        for book, twin in zip(books, twins, strict=True):
            _judged_by(book, deps_of)(twin.state, twin.emit)
            assert twin.emitted == full.emitted
            assert twin.state.to_dict() == full.state.to_dict()
            # the ready steps in file order; none launched, so every one is put back
            for _ in range(2):
                with contextlib.closing(book.ready_in_order(twin.state)) as taken:
                    assert list(taken) == ready
            assert book.in_flight_count(twin.state) == in_flight
            assert book.any_open(twin.state) is not ended

    judge()
    for _ in _drive(rng, [full, *twins]):
        judge()
    assert full.emitted  # the drive went somewhere


def test_the_sets_follow_every_move_and_a_new_state_is_read_in_full() -> None:
    order, deps_of = ["w", "a", "b"], {"w": (), "a": (), "b": ("a",)}
    twin = _Twin(order)
    index = _book(StepIndex, order, deps_of, waits=frozenset({"w"}))
    assert isinstance(index, StepIndex)
    index.sync(twin.state)
    assert (index.in_flight, index.open) == (set(), {"w", "a", "b"})
    for etype, name in [("step.ready", "w"), ("step.ready", "a"), ("step.dispatched", "w")]:
        twin.apply(etype, step=name, attempt=1)
    with contextlib.closing(index.ready_in_order(twin.state)) as ready:
        assert list(ready) == ["a"]
    twin.apply("step.dispatched", step="a", attempt=1)
    index.sync(twin.state)
    # a dispatched wait step holds no worker: it is open, not in flight
    assert (index.in_flight, index.open) == ({"a"}, {"w", "a", "b"})
    with contextlib.closing(index.ready_in_order(twin.state)) as ready:
        assert list(ready) == []
    twin.apply("step.completed", step="a")
    twin.apply("step.failed", step="w")
    index.sync(twin.state)
    assert (index.in_flight, index.open) == (set(), {"b"})
    assert list(index.pending_passes(twin.state)) == ["b"]  # its dependency moved
    assert list(index.pending_passes(twin.state)) == []  # nothing moved since

    # a state rebuilt from the store (a new object) is read in full
    again = ExecutionState.from_dict(twin.state.to_dict())
    assert again.moved is None
    index.sync(again)
    assert (index.in_flight, index.open) == (set(), {"b"})
    assert list(index.pending_passes(again)) == ["b"]


def test_a_step_still_ready_after_its_turn_is_offered_again_in_order() -> None:
    # A launch that leaves its step ready (held by an open breaker) and a caller that
    # stops early (max_parallel reached) lose no ready step.
    order = ["c", "a", "b", "d"]
    deps_of: dict[str, tuple[str, ...]] = dict.fromkeys(order, ())
    twin = _Twin(order)
    index = _book(StepIndex, order, deps_of)
    for name in order:
        twin.apply("step.ready", step=name)
    with contextlib.closing(index.ready_in_order(twin.state)) as ready:
        assert next(ready) == "c"
        twin.apply("step.dispatched", step="c", attempt=1)
        assert next(ready) == "a"  # held: stays ready
        assert next(ready) == "b"  # the caller stops before launching it
    with contextlib.closing(index.ready_in_order(twin.state)) as ready:
        assert list(ready) == ["a", "b", "d"]
    # a step that leaves ready and comes back is offered once, in its place
    twin.apply("step.dispatched", step="b", attempt=1)
    index.sync(twin.state)
    twin.apply("step.ready", step="b")  # its worker was lost
    with contextlib.closing(index.ready_in_order(twin.state)) as ready:
        assert list(ready) == ["a", "b", "d"]


def test_moved_is_neither_stored_nor_compared() -> None:
    twin = _Twin(["a"])
    twin.state.moved = {"a"}
    stored = twin.state.to_dict()
    assert "moved" not in stored
    assert ExecutionState.from_dict(stored) == twin.state


def test_a_long_chain_costs_each_transition_its_own_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    # A chain of 300 steps: each step is judged when the execution starts and when its
    # dependency ends, not at every transition of the whole execution (~90,000 joins
    # before the index), and
    # its state is not copied into a snapshot every 100 events but every 300.
    joins = 0

    def counting(statuses: Any) -> str | None:
        nonlocal joins
        joins += 1
        return join(statuses)

    monkeypatch.setattr(step_types, "join", counting)
    store = MemoryStore()
    snapshots: list[int] = []
    commit = store.commit

    def noting(writes: Any) -> None:
        snapshots.extend(w.snapshot["seq"] for w in writes if w.snapshot)
        commit(writes)

    monkeypatch.setattr(store, "commit", noting)
    n = 300
    chain = wf(*[step(f"s{i}", *([f"s{i - 1}"] if i else [])) for i in range(n)])
    for k in _kit(lambda task: ok(task, {"step": task["step"]}), store):
        assert k.finish(k.start(chain)["id"])["status"] == "completed"
    assert joins == 2 * n - 1
    midway = [seq for seq in snapshots if seq < snapshots[-1]]
    assert all(b - a >= n for a, b in zip([0, *midway], midway, strict=False))


def test_a_wide_fan_in_judges_its_join_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # 300 independent steps, 10 at a time, then one step depending on all of them: the
    # join is judged when the execution starts and once more, when the last one ends
    # (before the index: at every one of the 300 ends, each time over 300 statuses).
    judged: list[int] = []

    def counting(statuses: Any) -> str | None:
        listed = list(statuses)
        judged.append(len(listed))
        return join(listed)

    monkeypatch.setattr(step_types, "join", counting)
    n = 300
    spec = wf(*[step(f"s{i}") for i in range(n)], step("last", *[f"s{i}" for i in range(n)]))
    spec["max_parallel"] = 10
    for k in _kit(lambda task: ok(task, {"step": task["step"]})):
        final = k.finish(k.start(spec)["id"])
    assert final["status"] == "completed" and final["results"]["last"]["status"] == "succeeded"
    assert judged.count(n) == 2 and len(judged) == n + 2


def test_a_workflow_gets_the_index_from_its_size_on() -> None:
    def book(n: int) -> StepIndex | StepScan:
        deps_of: dict[str, tuple[str, ...]] = {f"s{i}": () for i in range(n)}
        return _book(None, list(deps_of), deps_of)

    assert isinstance(book(INDEX_FROM_STEPS - 1), StepScan)
    assert isinstance(book(INDEX_FROM_STEPS), StepIndex)
