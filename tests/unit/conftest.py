"""Fixtures shared by the unit tests."""

from __future__ import annotations

from typing import Any

import pytest

import tamma_actors._definitions as definitions
import tamma_actors._engine_reads as engine_reads
import tamma_actors._step_index as step_index


@pytest.fixture
def parsed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the workflow definitions the engine parses, in order."""
    names: list[str] = []
    real = definitions.parse_workflow

    def counting(definition: Any, **kw: Any) -> Any:
        names.append(definition["name"])
        return real(definition, **kw)

    monkeypatch.setattr(definitions, "parse_workflow", counting)  # starts
    monkeypatch.setattr(engine_reads, "parse_workflow", counting)  # stored definitions
    return names


@pytest.fixture(params=["passes", "index"])
def either_book(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Runs a test once with each of the scheduler's books (``_step_index``): the passes
    over every step that small workflows get, and the index that big ones get."""
    monkeypatch.setattr(step_index, "INDEX_FROM_STEPS", 10**9 if request.param == "passes" else 0)
    return str(request.param)
