"""``compensate`` and fan-outs: the items that succeeded are undone, also when their
parallel step failed (another item failed) or was cancelled (another step failed)."""

from __future__ import annotations

from typing import Any

import pytest

from tamma_actors._store import MemoryStore
from tamma_actors._workerpool import TaskFinished
from tests.unit.test_step_types import WAIT, _kit, _until, err, fan, ok, step, wf

pytestmark = pytest.mark.usefixtures("either_book")

ONCE = {"max_attempts": 1}


def _compensations(final: dict[str, Any]) -> list[tuple[str, str, Any]]:
    return [(c["step"], c["status"], c["output"]) for c in final["error"].get("compensations", [])]


def test_a_fan_out_with_a_failed_item_has_its_succeeded_items_compensated() -> None:
    def script(task: dict[str, Any]) -> TaskFinished:
        if task["item_index"] == 1:
            return err(task, retryable=False)
        return ok(task, task["input"] if task["item_index"] is None else f"made {task['input']}")

    with _kit(script) as k:
        spec = wf(
            {**fan("f", items=[0, 1, 2], retry_policy=ONCE), "compensation": "noop"},
            error_handling="compensate",
        )
        final = k.finish(k.start(spec))
        assert final["status"] == "failed"
        assert final["results"]["f"]["status"] == "failed"
        # item order kept; null for the item that did not succeed
        assert _compensations(final) == [("f", "succeeded", ["made 0", None, "made 2"])]


def test_a_fan_out_cancelled_by_another_failure_has_its_succeeded_items_compensated() -> None:
    def script(task: dict[str, Any]) -> TaskFinished | None:
        if task["step"] == "x":
            return None  # held: it fails once item 0 of f is in
        if task["item_index"] == 1:
            return None  # still running when x fails
        return ok(task, task["input"] if task["item_index"] is None else "made 0")

    store = MemoryStore()
    with _kit(script, store) as k:
        spec = wf(
            {**fan("f", items=[0, 1]), "compensation": "noop"},
            step("x", retry_policy=ONCE),
            error_handling="compensate",
        )
        eid = k.start(spec)
        held = [k.next_held(), k.next_held()]
        x = next(d for d in held if d.task["step"] == "x")
        _until(lambda: k.get(eid)["results"]["f"]["detail"].get("succeeded") == 1)
        x.reply_to.tell(err(x.task, retryable=False))
        final = k.finish(eid)
        assert final["results"]["f"]["status"] == "cancelled"
        assert _compensations(final) == [("f", "succeeded", ["made 0", None])]
    # the plan is the record's: a replay of the events gives the same
    assert store.read_events(eid)[-1]["type"] == "workflow.failed"


def test_a_fan_out_with_no_succeeded_item_is_not_compensated() -> None:
    with _kit(lambda t: err(t, retryable=False)) as k:
        spec = wf(
            {**fan("f", items=[0, 1], retry_policy=ONCE), "compensation": "noop"},
            error_handling="compensate",
        )
        final = k.finish(k.start(spec))
        assert final["status"] == "failed"
        assert _compensations(final) == []
        assert k.engine.get_events(final["id"]).result(WAIT)[-1]["type"] == "workflow.failed"
