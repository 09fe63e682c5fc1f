"""A start under an id the client chose happens once: the same start again gets that
execution, another start under that id is refused (Engine._start_once).

Manual timers and a holding pool (tests/timekit.py): steps run only when the test says.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

import pytest

from tamma_actors._errors import ExecutionExists
from tamma_actors._workerpool import TaskFinished
from tests.timekit import WAIT, Kit, make_kit, step, wait_step, wf

# every scheduler test runs with both of its books (conftest.either_book)
pytestmark = pytest.mark.usefixtures("either_book")


@pytest.fixture
def kit() -> Iterator[Kit]:
    yield from make_kit()


def _start(
    kit: Kit, spec: dict[str, Any], inputs: dict[str, Any], eid: str
) -> Future[dict[str, Any]]:
    return kit.engine.start_workflow(spec, inputs, requested_id=eid)


def _until_resting(kit: Kit, eid: str) -> None:
    kit.until(eid, lambda _: kit.engine._is_resting(eid))


def _ids(kit: Kit) -> list[str]:
    return [r["id"] for r in kit.engine.list_workflows().result(WAIT)]


def test_the_same_start_again_gets_the_same_execution(kit: Kit) -> None:
    spec = wf(step("a"))
    first = _start(kit, spec, {"n": 1}, "deploy-42").result(WAIT)
    assert first["id"] == "deploy-42"
    again = _start(kit, spec, {"n": 1}, "deploy-42").result(WAIT)
    assert again["id"] == "deploy-42" and again["status"] == "running"
    assert _ids(kit) == ["deploy-42"]
    task = kit.next_held()
    task.reply_to.tell(TaskFinished(task.task["task_id"], True, "done", None, 1.0))
    kit.status_is("deploy-42", "completed")
    # once it has ended too: its record, and nothing runs again
    ended = _start(kit, spec, {"n": 1}, "deploy-42").result(WAIT)
    assert ended["status"] == "completed" and ended["results"]["a"]["data"] == "done"
    assert kit.held.empty() and _ids(kit) == ["deploy-42"]


def test_another_workflow_or_other_inputs_under_that_id_are_refused(kit: Kit) -> None:
    _start(kit, wf(step("a")), {"n": 1}, "x1").result(WAIT)
    for spec, inputs in [(wf(step("a")), {"n": 2}), (wf(step("b")), {"n": 1})]:
        with pytest.raises(ExecutionExists, match="execution 'x1' exists"):
            _start(kit, spec, inputs, "x1").result(WAIT)
    assert _ids(kit) == ["x1"]


def test_the_same_start_again_with_a_nan_in_its_inputs_is_the_same_start(kit: Kit) -> None:
    """A NaN is not ``==`` to another NaN, yet inputs holding one are the same inputs: while
    the first start is pending and once it is stored, the same start gets that execution."""
    spec = wf(step("a"))
    digest = kit.engine._definitions.get(spec, None)[1]
    pending: Future[dict[str, Any]] = Future()
    with kit.engine._lock:  # as if the first start were between its check and its commit
        kit.engine._starting["nan"] = ((digest, {"x": float("nan")}), pending)
    assert _start(kit, spec, {"x": float("nan")}, "nan") is pending
    kit.engine._started_once("nan")
    first = _start(kit, spec, {"x": float("nan")}, "stored").result(WAIT)
    again = _start(kit, spec, {"x": float("nan")}, "stored").result(WAIT)
    assert first["id"] == again["id"] == "stored"
    with pytest.raises(ExecutionExists):
        _start(kit, spec, {"x": 1.0}, "stored").result(WAIT)
    assert _ids(kit) == ["stored"]


def test_starts_racing_under_one_id_make_one_execution(kit: Kit) -> None:
    spec = wf(step("a"))
    go = threading.Event()
    answers: list[Future[dict[str, Any]]] = []
    lock = threading.Lock()

    def client() -> None:
        go.wait(WAIT)
        fut = _start(kit, spec, {}, "race")
        with lock:
            answers.append(fut)

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    go.set()
    for t in threads:
        t.join(WAIT)
    assert {fut.result(WAIT)["id"] for fut in answers} == {"race"}
    assert _ids(kit) == ["race"]
    kit.next_held()
    assert kit.held.empty()  # its step was dispatched once


def test_a_start_while_the_first_is_not_yet_committed_gets_the_first_ones_answer(
    kit: Kit,
) -> None:
    spec = wf(step("a"))
    digest = kit.engine._definitions.get(spec, None)[1]
    pending: Future[dict[str, Any]] = Future()
    with kit.engine._lock:  # as if the first start were between its check and its commit
        kit.engine._starting["slow"] = ((digest, {}), pending)
    assert _start(kit, spec, {}, "slow") is pending
    with pytest.raises(ExecutionExists):
        _start(kit, spec, {"other": True}, "slow").result(WAIT)
    kit.engine._started_once("slow")


def test_a_resting_execution_is_found_under_its_id() -> None:
    for k in make_kit(start=1000.0, rest_after=1.0):
        spec = wf(wait_step("w", 60))
        _start(k, spec, {}, "parked").result(WAIT)
        _until_resting(k, "parked")
        assert _start(k, spec, {}, "parked").result(WAIT)["status"] == "running"
        with pytest.raises(ExecutionExists):
            _start(k, spec, {"x": 1}, "parked").result(WAIT)
        assert _ids(k) == ["parked"]
