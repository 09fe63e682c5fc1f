"""Start cost: a definition started many times is validated and hashed once."""

from __future__ import annotations

from typing import Any

import pytest

import tamma_actors._definitions as definitions
from tamma_actors._errors import WorkflowValidationError
from tamma_actors._execution import ExecutionSupervisor
from tamma_actors._store import MemoryStore
from tests.unit.test_execution import _kit, echo_input, step, wf


def test_equal_definitions_are_parsed_once(parsed: list[str]) -> None:
    store = MemoryStore()
    for k in _kit(echo_input, store):
        ids = [k.start(wf(step("a"), step("b", "a")))["id"] for _ in range(3)]
        # the same definition with its keys in another order is the same definition
        reordered = {"steps": [{"dependencies": [], "implementation": "noop", "name": "a"}]}
        ids.append(k.start(reordered | {"name": "one"})["id"])
        ids.append(k.start({"name": "one", **reordered})["id"])
        records = [k.finish(eid) for eid in ids]
        assert [r["status"] for r in records] == ["completed"] * 5
        # each execution still records its definition's digest
        digests = [store.get_summary(eid)["digest"] for eid in ids]  # type: ignore[index]
        assert len(set(digests[:3])) == 1
        assert digests[3] == digests[4] != digests[0]
    assert parsed == ["wf", "one"]


def test_a_rejected_definition_is_checked_on_every_start(parsed: list[str]) -> None:
    bad = wf(step("a", "missing"))
    for k in _kit(echo_input):
        for _ in range(2):
            with pytest.raises(WorkflowValidationError, match="missing"):
                k.start(bad)
    assert parsed == ["wf", "wf"]


def test_only_plain_json_definitions_are_cached(parsed: list[str]) -> None:
    # a tuple is not what a JSON client sends: such a definition is parsed every time
    as_tuple: dict[str, Any] = {"name": "tup", "steps": (step("a"),)}
    for k in _kit(echo_input):
        for _ in range(2):
            assert k.finish(k.start(as_tuple)["id"])["status"] == "completed"
    assert parsed == ["tup", "tup"]


def test_the_cache_keeps_a_bounded_number_of_definitions(
    parsed: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(definitions, "_PARSED_CACHE_SIZE", 2)
    for k in _kit(echo_input):
        for name in ["w1", "w2", "w3", "w1", "w3"]:
            assert k.finish(k.start(wf(step("a")) | {"name": name})["id"])["status"] == (
                "completed"
            )
    # w1 was the oldest when w3 came in: it is parsed again, w3 is not
    assert parsed == ["w1", "w2", "w3", "w1"]


def test_a_definition_sent_again_as_it_was_needs_no_canonical_text(
    parsed: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    canonical: list[str] = []
    real = definitions._canonical

    def counting(definition: Any) -> str | None:
        canonical.append(definition["name"])
        return real(definition)

    monkeypatch.setattr(definitions, "_canonical", counting)
    for k in _kit(echo_input):
        spec = wf(step("a"), step("b", "a"))
        for _ in range(3):
            assert k.finish(k.start(spec)["id"])["status"] == "completed"
        # the same definition, its keys in another order: the canonical text finds it
        assert k.finish(k.start(dict(reversed(spec.items())))["id"])["status"] == "completed"
        # a tuple is never taken for a list, by either key: parsed (and so refused) anew
        with pytest.raises(WorkflowValidationError):
            k.start(spec | {"steps": (step("a"), step("a"))})
    assert parsed == ["wf", "wf"] and canonical == ["wf", "wf", "wf"]


def test_the_exact_key_is_exact() -> None:
    assert definitions._exact({"a": [1, "x"]}) == definitions._exact({"a": [1, "x"]})
    assert definitions._exact({"a": 1}) != definitions._exact({"a": 1.0})
    assert definitions._exact({"a": 1}) != definitions._exact({"a": True})
    assert definitions._exact({"a": "x"}) != definitions._exact({"a": b"x"})
    assert definitions._exact({"a": (1,)}) is None  # not the list [1]
    assert definitions._exact({"a": object()}) is None


def test_canonical_text_refuses_what_does_not_round_trip() -> None:
    assert definitions._canonical({"b": [1, 2.5, None], "a": True}) == (
        '{"a":true,"b":[1,2.5,null]}'
    )
    assert definitions._canonical({1: "x"}) is None  # a non-string key
    assert definitions._canonical({"x": float("nan")}) is None
    assert definitions._canonical({"x": object()}) is None
    assert definitions._canonical({"x": (1,)}) is None


def test_a_start_makes_its_supervisor_without_holding_the_engine_lock(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Making a supervisor gives up the GIL (pykka names each actor with uuid4, which reads
    # os.urandom); the engine lock, which every request and every resting supervisor
    # needs, must not be held while the starting thread waits to get the GIL back.
    held: list[bool] = []
    made = ExecutionSupervisor.__init__
    locks: list[Any] = []

    def making(self: ExecutionSupervisor, *args: Any, **kwargs: Any) -> None:
        held.append(locks[0].locked())
        made(self, *args, **kwargs)

    monkeypatch.setattr(ExecutionSupervisor, "__init__", making)
    for k in _kit(echo_input):
        locks.append(k.engine._lock)
        assert k.finish(k.start(wf(step("a")))["id"])["status"] == "completed"
    assert held == [False]
