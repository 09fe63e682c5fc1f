"""Recovery cost: a definition shared by many executions is parsed once."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from tamma_actors._errors import ActorStopped, StoreUnwritable
from tamma_actors._store import MemoryStore
from tests.unit.test_execution import WAIT, _kit, echo_input, step, wf

# every scheduler test runs with both of its books (conftest.either_book)
pytestmark = pytest.mark.usefixtures("either_book")


def test_recovery_parses_each_definition_once(parsed: list[str]) -> None:
    store = MemoryStore()
    for k in _kit(lambda task: None, store):  # the first node never answers a task
        chain_ids = [k.start(wf(step("a"), step("b", "a")))["id"] for _ in range(3)]
        other_id = k.start(wf(step("z")) | {"name": "other"})["id"]
    parsed.clear()  # count the second node's parses only
    for k in _kit(echo_input, store):
        assert k.engine.recover() == 4
        for eid in [*chain_ids, other_id]:
            assert k.finish(eid)["status"] == "completed"
    assert sorted(parsed) == ["other", "wf"]


def test_recovery_keeps_no_per_execution_bookkeeping_once_it_ends() -> None:
    store = MemoryStore()
    for k in _kit(lambda task: None, store):
        ids = [k.start(wf(step("a")))["id"] for _ in range(5)]
    release = threading.Event()  # no task is answered (no execution ends) before the checks

    def gated(task: dict[str, Any]) -> Any:
        release.wait(WAIT)
        return echo_input(task)

    for k in _kit(gated, store):
        assert k.engine.recover() == 5
        assert not k.engine._activated and not k.engine._recovering
        assert k.engine._activated_on_demand(ids[0])  # live already: routed as it is
        assert k.engine.live_count == 5 and not k.engine._activated  # nothing brought back
        release.set()
        for eid in ids:
            assert k.finish(eid)["status"] == "completed"


def test_reads_of_an_execution_stopped_by_a_failed_commit_come_from_the_store(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = MemoryStore()
    for k in _kit(lambda task: None, store):  # its step stays in flight
        eid = k.start(wf(step("a")))["id"]

        def refuse(writes: Any) -> None:
            raise StoreUnwritable("the disk refused the write (I/O error)")

        monkeypatch.setattr(store, "commit", refuse)
        paused = k.engine.pause_workflow(eid)
        read = k.engine.get_workflow(eid)  # queued behind the failing commit
        status = k.engine.get_workflow_status(eid)
        # the pause's own commit fails, or an earlier one (the step's start) did already
        with pytest.raises((StoreUnwritable, ActorStopped)):
            paused.result(WAIT)
        record = read.result(WAIT)
        assert record["status"] == "running"  # the pause never committed
        assert record["seq"] == store.last_seq(eid)  # the committed state, not ahead of it
        assert status.result(WAIT)["status"] == "running"
        assert k.engine.wait(eid, 0.1).result(WAIT)["seq"] == store.last_seq(eid)


def test_a_stopped_supervisor_does_not_retire_the_one_made_after_it() -> None:
    # A supervisor whose commit was lost may report its end after a successor was made
    # from the store (a late callback of the old writer): only its own entry goes.
    for k in _kit(lambda task: None):  # the steps stay in flight
        eid, other = (k.start(wf(step("a")))["id"] for _ in range(2))
        live, stale = k.engine._live[eid], k.engine._live[other]
        k.engine._retire(eid, stale)
        assert k.engine._live[eid] is live and live.is_alive()
        k.engine._retire(eid, live)
        assert eid not in k.engine._live and other in k.engine._live
