"""Recovery serves control requests while it runs.

The recovery loop is held on one execution (its store read blocks); meanwhile requests for
an execution the loop has not reached re-activate that execution on the spot, and neither
path ever starts a second supervisor for the same execution.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pytest

from tamma_actors._errors import StoreError, SupervisionError
from tamma_actors._store import ExecutionRecords, MemoryStore
from tests.timekit import WAIT, make_kit, step, wf

# every scheduler test runs with both of its books (conftest.either_book)
pytestmark = pytest.mark.usefixtures("either_book")


class GatedStore(MemoryStore):
    """The recovery loop's read of the page holding ``gated`` blocks until ``gate`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.gated: str | None = None
        self.gate = threading.Event()
        self.reached = threading.Event()
        self.recovery_thread: int | None = None

    def read_executions(
        self, eids: Sequence[str], *, unless: Collection[str] = (), rest_alone: bool = False
    ) -> list[ExecutionRecords | StoreError | None]:
        if self.gated in eids and threading.get_ident() == self.recovery_thread:
            self.reached.set()
            assert self.gate.wait(WAIT)
        return super().read_executions(eids, unless=unless, rest_alone=rest_alone)


@contextmanager
def kit(store: MemoryStore) -> Iterator[Any]:
    gen = make_kit(store)
    try:
        yield next(gen)
    finally:
        next(gen, None)


def test_requests_are_served_while_recovery_runs_and_nothing_is_activated_twice() -> None:
    store = GatedStore()
    spec = wf(step("only"))
    with kit(store) as first:
        ids = [first.start(spec) for _ in range(3)]
        for _ in ids:
            first.next_held()  # each step is dispatched; none finishes before the "crash"
    a, b, c = sorted(ids)
    store.gated = b  # the loop stops before reading b's page; c is activated meanwhile
    with kit(store) as second:
        result: list[int] = []

        def recover() -> None:
            store.recovery_thread = threading.get_ident()
            result.append(second.engine.recover())

        loop = threading.Thread(target=recover)
        loop.start()
        try:
            assert store.reached.wait(WAIT)
            health = second.engine.health().result(WAIT)
            assert health["recovery"]["in_progress"] is True
            # c has not been reached by the loop: a request activates it first
            assert second.record(c)["status"] == "running"
            aborted = second.engine.abort_workflow(c, "operator").result(WAIT)
            assert aborted["status"] == "aborted"
        finally:
            store.gate.set()
            loop.join(WAIT)
        assert result == [3]  # a and b by the loop, c by the request (then aborted): once each
        assert second.engine.health().result(WAIT)["recovery"]["in_progress"] is False
        sent = sorted(second.next_held().task["execution_id"] for _ in range(3))
        assert sent == [a, b, c]  # one re-dispatch each: one supervisor each
        assert second.held.empty()
        for eid in (a, b):
            assert second.record(eid)["status"] == "running"


def test_draining_refuses_new_starts_but_not_a_running_parent_s_child() -> None:
    with kit(MemoryStore()) as k:
        k.engine.drain()
        with pytest.raises(SupervisionError, match="shutting down"):
            k.engine.start_workflow(wf(step("s")), {}).result(WAIT)
        child = k.engine.start_workflow(wf(step("s")), {}, execution_id="parent-child-1")
        assert child.result(WAIT)["id"] == "parent-child-1"
        assert k.next_held().task["execution_id"] == "parent-child-1"
