"""Recovery cost: a definition shared by many executions is parsed once."""

from __future__ import annotations

from typing import Any

import pytest

import tamma_actors._engine as engine_module
from tamma_actors._store import MemoryStore
from tests.unit.test_execution import _kit, echo_input, step, wf


def test_recovery_parses_each_definition_once(monkeypatch: pytest.MonkeyPatch) -> None:
    store = MemoryStore()
    for k in _kit(lambda task: None, store):  # the first node never answers a task
        chain_ids = [k.start(wf(step("a"), step("b", "a")))["id"] for _ in range(3)]
        other_id = k.start(wf(step("z")) | {"name": "other"})["id"]
    parsed: list[Any] = []
    real = engine_module.parse_workflow

    def counting(definition: Any, **kw: Any) -> Any:
        parsed.append(definition["name"])
        return real(definition, **kw)

    monkeypatch.setattr(engine_module, "parse_workflow", counting)
    for k in _kit(echo_input, store):
        assert k.engine.recover() == 4
        for eid in [*chain_ids, other_id]:
            assert k.finish(eid)["status"] == "completed"
    assert sorted(parsed) == ["other", "wf"]
