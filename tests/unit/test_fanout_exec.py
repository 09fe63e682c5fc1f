"""``execute_step`` of a parallel step runs one item's task, with the config each item
gets (the plugin's keys, not the fan-out's own ``items`` and ``max_concurrency``)."""

from __future__ import annotations

import pytest

from tests.unit.test_step_types import WAIT, _kit, fan, ok, wf

pytestmark = pytest.mark.usefixtures("either_book")


def test_executing_a_parallel_step_gives_its_task_the_config_each_item_gets() -> None:
    with _kit(lambda t: ok(t, {"config": t["config"], "input": t["input"]})) as k:
        eid = k.start(wf(fan("f", items=list(range(50)), max_concurrency=2, k="v")))
        final = k.finish(eid)
        assert final["results"]["f"]["data"][0] == {"config": {"k": "v"}, "input": 0}
        probe = k.engine.execute_step(eid, "f", "what if").result(WAIT)
        assert probe["status"] == "succeeded"
        assert probe["data"] == {"config": {"k": "v"}, "input": "what if"}
