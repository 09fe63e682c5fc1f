"""Which of an execution's steps are pending, ready, in flight and unfinished, kept up to
date from the names the reducer marks as moved (``ExecutionState.moved``).

The supervisor's scheduler runs on every transition: it used to pass over every step to
find the pending ones whose dependencies had settled, count the steps in flight, find
the ready ones and see whether all had ended, so a chain of 1,000 steps cost the
coordinator ~4.5 times per step what a chain of 10 did (1.5 against 0.33 ms of CPU, timed
in-process; on the node, W8's chain took 2.9-3.1 ms per step, now ~1.1). With
this index a transition costs the steps it moved, and a pending step is judged again only
when its last open dependency ends or one fails or is cancelled (the only moves that
change its verdict): 0.30 against 0.28 ms.
``pending_passes`` keeps the order of the full passes it replaces, so the same events come
out in the same order.

Keeping the index costs each move ~2 µs of Python, more than the passes cost over a few
steps (the scheduler of a 10-step chain: ~67 µs per step with passes, ~73 with the index;
even at ~32 steps, 100 steps: 128 against 65), so a workflow of fewer than
``INDEX_FROM_STEPS`` steps gets :class:`StepScan`, the passes themselves, behind the same
methods.
"""

from __future__ import annotations

import heapq
from collections.abc import Generator, Mapping

from tamma_actors._state import ExecutionState
from tamma_actors._status import TERMINAL_STEP_VALUES as _TERMINAL

__all__ = ["INDEX_FROM_STEPS", "StepIndex", "StepScan", "step_book"]

INDEX_FROM_STEPS = 32

_IN_FLIGHT = frozenset({"dispatched", "running"})
_BLOCKING = frozenset({"failed", "cancelled"})  # a dependent is cancelled at once


class StepIndex:
    """Derived from one state's step statuses; :meth:`sync` brings it up to date. A new
    state object (or one whose steps were replaced) is read in full once."""

    __slots__ = (
        "_candidates",
        "_dependencies",
        "_dependents",
        "_open_deps",
        "_position",
        "_ready_heap",
        "_state",
        "_waits",
        "in_flight",
        "open",
    )

    def __init__(
        self,
        dependencies: Mapping[str, tuple[str, ...]],
        dependents: Mapping[str, tuple[str, ...]],
        position: Mapping[str, int],
        waits: frozenset[str],
    ) -> None:
        # the definition's (shared by its executions): what depends on what, file order
        self._dependencies = dependencies
        self._dependents = dependents
        self._position = position
        self._open_deps: dict[str, int] = {}  # per step: how many of its dependencies are open
        self._waits = waits  # never counted in flight: a wait occupies no worker
        self._state: ExecutionState | None = None
        self._candidates: set[str] = set()  # pending steps whose dependencies moved
        # (position, name) of steps that became ready; stale entries are dropped when met
        self._ready_heap: list[tuple[int, str]] = []
        self.in_flight: set[str] = set()  # dispatched or running, ``wait`` steps left out
        self.open: set[str] = set()  # not terminal

    def sync(self, state: ExecutionState) -> None:
        moved = state.moved
        if moved is None or state is not self._state:
            self._read_all(state)
            return
        steps, open_deps = state.steps, self._open_deps
        for name in moved:
            status = steps[name].status
            was_open = name in self.open
            self._place(name, status)
            if status == "pending":
                self._candidates.add(name)
            if was_open == (status not in _TERMINAL):
                continue
            # It ended (or was reopened). A pending dependent's verdict changes only when
            # its last open dependency ends, or one fails or is cancelled (see ``join``).
            change = -1 if was_open else 1
            blocks = status in _BLOCKING
            for dependent in self._dependents.get(name, ()):
                left = open_deps[dependent] = open_deps[dependent] + change
                if was_open and (left == 0 or blocks) and steps[dependent].status == "pending":
                    self._candidates.add(dependent)
        moved.clear()

    def _read_all(self, state: ExecutionState) -> None:
        self._state = state
        state.moved = set()
        self._ready_heap.clear()
        self.in_flight.clear()
        self.open.clear()
        self._candidates.clear()
        steps = state.steps
        for name, st in steps.items():
            self._place(name, st.status)
            if st.status == "pending":
                self._candidates.add(name)
        self._open_deps = {
            name: sum(1 for dep in self._dependencies.get(name, ()) if dep in self.open)
            for name in steps
        }

    def in_flight_count(self, state: ExecutionState) -> int:
        self.sync(state)
        return len(self.in_flight)

    def any_open(self, state: ExecutionState) -> bool:
        self.sync(state)
        return bool(self.open)

    def _place(self, name: str, status: str) -> None:
        if status == "ready":  # pushed at every move to ready: a second entry is dropped
            heapq.heappush(self._ready_heap, (self._position[name], name))
        in_flight = status in _IN_FLIGHT and name not in self._waits
        (self.in_flight.add if in_flight else self.in_flight.discard)(name)
        (self.open.discard if status in _TERMINAL else self.open.add)(name)

    def ready_in_order(self, state: ExecutionState) -> Generator[str, None, None]:
        """The ready steps in file order, taken one at a time (the caller launches each
        before it asks for the next: a step held back by an open breaker stays ready).
        When the caller closes it, each step it took that is still ready is put back."""
        self.sync(state)
        heap, steps = self._ready_heap, state.steps
        taken: list[tuple[int, str]] = []
        seen: set[str] = set()
        try:
            while heap:
                entry = heapq.heappop(heap)
                name = entry[1]
                if name in seen or steps[name].status != "ready":
                    continue  # it moved on since (or came back and was pushed again)
                seen.add(name)
                taken.append(entry)
                yield name
        finally:
            for entry in taken:
                if steps[entry[1]].status == "ready":
                    heapq.heappush(heap, entry)

    def pending_passes(self, state: ExecutionState) -> Generator[str, None, None]:
        """The pending steps whose verdict may have changed, in the order passes over every
        step in file order would reach them, until a fixpoint: a step whose dependency
        moves while it is yielded is yielded again in this pass if it comes later in file
        order, else in the next pass. The caller decides on each step (emitting its
        events) before taking the next one."""
        self.sync(state)
        position, steps = self._position, state.steps
        todo, self._candidates = self._candidates, set()
        while todo:
            heap = [(position[name], name) for name in todo]
            heapq.heapify(heap)
            later: set[str] = set()
            seen: set[str] = set()
            while heap:
                at, name = heapq.heappop(heap)
                if name in seen or steps[name].status != "pending":
                    continue
                seen.add(name)
                yield name
                self.sync(state)
                moved, self._candidates = self._candidates, set()
                for other in moved:
                    if position[other] > at and other not in seen:
                        heapq.heappush(heap, (position[other], other))
                    else:
                        later.add(other)
            todo = later


class StepScan:
    """The same questions as :class:`StepIndex`, answered by passes over every step: for
    a small workflow, cheaper than keeping an index (nothing is kept; the reducer does not
    mark moves for it)."""

    __slots__ = ("_waits",)

    def __init__(self, waits: frozenset[str]) -> None:
        self._waits = waits

    def sync(self, state: ExecutionState) -> None:
        """Nothing to bring up to date."""

    def pending_passes(self, state: ExecutionState) -> Generator[str, None, None]:
        """Every pending step in file order, pass after pass while the caller cancels or
        skips one (a step made ready changes no other step's verdict)."""
        steps = state.steps
        again = True
        while again:
            again = False
            for name in state.order:
                if steps[name].status != "pending":
                    continue
                yield name
                again = again or steps[name].status in _SETTLES_OTHERS

    def in_flight_count(self, state: ExecutionState) -> int:
        waits = self._waits
        return sum(
            1 for name, st in state.steps.items() if st.status in _IN_FLIGHT and name not in waits
        )

    def ready_in_order(self, state: ExecutionState) -> Generator[str, None, None]:
        steps = state.steps
        for name in state.order:
            if steps[name].status == "ready":
                yield name

    def any_open(self, state: ExecutionState) -> bool:
        return any(st.status not in _TERMINAL for st in state.steps.values())


_SETTLES_OTHERS = frozenset({"cancelled", "skipped"})


def step_book(
    dependencies: Mapping[str, tuple[str, ...]],
    dependents: Mapping[str, tuple[str, ...]],
    position: Mapping[str, int],
    waits: frozenset[str],
) -> StepIndex | StepScan:
    """The scheduler's book of a workflow's steps: an index for a big one, passes for a
    small one (``INDEX_FROM_STEPS``)."""
    if len(dependencies) >= INDEX_FROM_STEPS:
        return StepIndex(dependencies, dependents, position, waits)
    return StepScan(waits)
