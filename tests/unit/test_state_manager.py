"""WorkflowStateManager over a MemoryStore and a real StoreWriter thread."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest

from tamma_actors._errors import (
    IllegalTransition,
    StoreCorrupted,
    StoreError,
    UnknownExecution,
    WorkflowError,
)
from tamma_actors._models import WorkflowState
from tamma_actors._state_manager import StateFilter, WorkflowStateManager
from tamma_actors._store import MemoryStore, Write
from tamma_actors._writer import StoreWriter

DAY = 86400.0
NOW = 1_700_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


class GatedStore(MemoryStore):
    """Counts commits; can hold them to prove callers wait for the commit."""

    def __init__(self) -> None:
        super().__init__()
        self.commits = 0
        self.hold = threading.Event()
        self.hold.set()

    def commit(self, writes: Sequence[Write]) -> None:
        assert self.hold.wait(10)
        super().commit(writes)
        self.commits += 1


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store() -> Iterator[GatedStore]:
    s = GatedStore()
    yield s
    s.hold.set()
    s.close()


@pytest.fixture
def manager(store: GatedStore, clock: Clock) -> Iterator[WorkflowStateManager]:
    with StoreWriter(store) as writer:
        yield WorkflowStateManager(store, writer, clock=clock, commit_timeout=10)


def _state(eid: str, status: str = "pending", at: float = NOW, **extra: Any) -> WorkflowState:
    return WorkflowState(
        execution_id=eid,
        workflow_id=extra.pop("workflow_id", "wf"),
        step=extra.pop("step", "start"),
        status=status,
        timestamp=datetime.fromtimestamp(at, UTC),
        **extra,
    )


def test_save_then_load_returns_the_latest_state(manager: WorkflowStateManager) -> None:
    assert manager.load_state("e1") is None
    first = _state("e1", context={"issue": 42}, metadata={"by": "test"})
    manager.save_state("e1", first)
    assert manager.load_state("e1") == first
    second = _state("e1", "running", at=NOW + 5, step="analyse")
    manager.save_state("e1", second)
    assert manager.load_state("e1") == second
    assert manager.get_state_history("e1") == [first, second]


def test_a_saved_state_is_committed_before_save_returns(
    manager: WorkflowStateManager, store: GatedStore
) -> None:
    manager.save_state("e1", _state("e1"))
    assert store.commits == 1
    assert store.read_history("e1")[0]["status"] == "pending"


def test_saving_under_another_execution_id_is_refused(manager: WorkflowStateManager) -> None:
    with pytest.raises(WorkflowError, match="e2"):
        manager.save_state("e1", _state("e2"))
    assert manager.load_state("e1") is None


def test_unstorable_context_is_a_store_error(manager: WorkflowStateManager) -> None:
    with pytest.raises(StoreError, match="cannot be stored"):
        manager.save_state("e1", _state("e1", context={"x": object()}))
    assert manager.load_state("e1") is None


def test_delete_state_removes_the_execution(manager: WorkflowStateManager) -> None:
    manager.save_state("e1", _state("e1"))
    manager.save_state("e2", _state("e2"))
    manager.delete_state("e1")
    assert manager.load_state("e1") is None
    assert manager.get_state_history("e1") == []
    assert manager.load_state("e2") is not None


def test_list_states_filters_current_states(manager: WorkflowStateManager) -> None:
    manager.save_state("a", _state("a", "pending", workflow_id="build"))
    manager.save_state("a", _state("a", "running", workflow_id="build"))
    manager.save_state("b", _state("b", "running", workflow_id="deploy"))
    manager.save_state("c", _state("c", "completed", workflow_id="build"))

    def ids(f: StateFilter | None = None) -> list[str]:
        return [s.execution_id for s in manager.list_states(f)]

    assert ids() == ["a", "b", "c"]
    assert [s.status for s in manager.list_states()] == ["running", "running", "completed"]
    assert ids(StateFilter(status=["running"])) == ["a", "b"]
    assert ids(StateFilter(status=["pending"])) == []  # a's current state is running
    assert ids(StateFilter(workflow_id="build")) == ["a", "c"]
    assert ids(StateFilter(status=["running"], workflow_id="build")) == ["a"]
    assert ids(StateFilter(limit=2)) == ["a", "b"]
    assert ids(StateFilter(limit=0)) == []


def test_transition_state_appends_the_new_status(
    manager: WorkflowStateManager, clock: Clock
) -> None:
    manager.save_state("e1", _state("e1", context={"a": 1}))
    clock.now = NOW + 60
    new = manager.transition_state("e1", "pending", "running", {"b": 2})
    assert new.status == "running"
    assert new.context == {"a": 1, "b": 2}
    assert new.timestamp == datetime.fromtimestamp(NOW + 60, UTC)
    assert manager.load_state("e1") == new
    assert [s.status for s in manager.get_state_history("e1")] == ["pending", "running"]
    manager.transition_state("e1", "running", "paused")
    assert manager.load_state("e1").status == "paused"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("current", "src", "dst", "match"),
    [
        ("pending", "pending", "paused", "cannot go from pending to paused"),
        ("completed", "completed", "running", "cannot go from completed"),
        ("running", "pending", "running", "is running, not pending"),
        ("running", "running", "sleeping", "cannot go from running to sleeping"),
    ],
)
def test_an_illegal_transition_raises_and_writes_nothing(
    manager: WorkflowStateManager, store: GatedStore, current: str, src: str, dst: str, match: str
) -> None:
    manager.save_state("e1", _state("e1", current))
    commits = store.commits
    with pytest.raises(IllegalTransition, match=match):
        manager.transition_state("e1", src, dst)
    assert store.commits == commits
    assert [s.status for s in manager.get_state_history("e1")] == [current]


def test_transition_of_an_unknown_execution(manager: WorkflowStateManager) -> None:
    with pytest.raises(UnknownExecution, match="nope"):
        manager.transition_state("nope", "pending", "running")


def test_concurrent_transitions_from_the_same_status_let_one_win(
    manager: WorkflowStateManager,
) -> None:
    manager.save_state("e1", _state("e1", "running"))
    outcomes: list[str] = []
    go = threading.Barrier(4)

    def attempt(target: str) -> None:
        go.wait(timeout=10)
        try:
            manager.transition_state("e1", "running", target)
            outcomes.append("ok")
        except IllegalTransition:
            outcomes.append("refused")

    threads = [
        threading.Thread(target=attempt, args=(t,))
        for t in ("paused", "completed", "failed", "aborted")
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert sorted(outcomes) == ["ok", "refused", "refused", "refused"]
    assert len(manager.get_state_history("e1")) == 2


def test_cleanup_removes_only_expired_terminal_executions(
    manager: WorkflowStateManager, store: GatedStore, clock: Clock
) -> None:
    old = NOW - 10 * DAY
    manager.save_state("done-old", _state("done-old", "completed", at=old))
    manager.save_state("failed-old", _state("failed-old", "failed", at=old))
    manager.save_state("running-old", _state("running-old", "running", at=old))
    manager.save_state("done-new", _state("done-new", "completed", at=NOW - DAY))
    # An engine-owned execution: judged by its summary's status and end_time.
    store.commit([Write("engine-old", summary={"status": "aborted", "end_time": old})])
    store.commit([Write("engine-live", summary={"status": "running", "end_time": None})])
    removed = manager.cleanup_expired_states(retention_days=7)
    assert removed == 3
    assert manager.load_state("done-old") is None
    assert manager.load_state("failed-old") is None
    assert store.get_summary("engine-old") is None
    assert manager.load_state("running-old") is not None
    assert manager.load_state("done-new") is not None
    assert store.get_summary("engine-live") is not None
    assert manager.cleanup_expired_states(retention_days=7) == 0


def test_a_record_that_is_not_a_workflow_state_is_corruption(
    manager: WorkflowStateManager, store: GatedStore
) -> None:
    store.commit([Write("bad", history=[{"status": "running"}])])
    with pytest.raises(StoreCorrupted, match="bad"):
        manager.load_state("bad")


def test_a_commit_that_does_not_come_back_in_time_is_a_store_error(
    store: GatedStore, clock: Clock
) -> None:
    with StoreWriter(store) as writer:
        manager = WorkflowStateManager(store, writer, clock=clock, commit_timeout=0.05)
        store.hold.clear()
        with pytest.raises(StoreError, match="not committed within"):
            manager.save_state("e1", _state("e1"))
        store.hold.set()
        writer.flush(timeout=10)
    assert store.last_history("e1") is not None  # it did land, later
