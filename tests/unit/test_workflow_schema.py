"""`tamma schema workflow` describes the files the loader takes: it accepts every file the
loader accepts, and refuses what the loader refuses where JSON Schema can say it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tamma_actors._errors import WorkflowValidationError
from tamma_actors._workflow_file import parse_workflow, workflow_json_schema
from tamma_actors._workflow_yaml import yaml_data

ROOT = Path(__file__).resolve().parents[2]
VALIDATOR = jsonschema.Draft202012Validator(workflow_json_schema())
jsonschema.Draft202012Validator.check_schema(VALIDATOR.schema)


def schema_accepts(data: Any) -> bool:
    return not list(VALIDATOR.iter_errors(data))


def loader_accepts(data: Any) -> bool:
    try:
        parse_workflow(data)
    except WorkflowValidationError:
        return False
    return True


@pytest.mark.parametrize(
    "path", sorted((ROOT / "config" / "workflows").glob("*.yaml")), ids=lambda p: p.name
)
def test_the_example_workflows_validate(path: Path) -> None:
    data = yaml_data(path.read_text())
    assert loader_accepts(data)
    assert schema_accepts(data), [e.message for e in VALIDATOR.iter_errors(data)]


def test_the_readme_example_validates() -> None:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("```yaml\nname: tamma-dev-loop")
    text = readme[start + len("```yaml\n") : readme.index("```\n", start + 8)]
    data = yaml_data(text)
    assert loader_accepts(data) and schema_accepts(data)


STEP = "steps: [{name: a, implementation: noop}]"
ACCEPTED = [
    f"name: w\nerror_handling: continue\n{STEP}",
    f"name: w\nerrorHandling: {{strategy: compensate}}\n{STEP}",
    "name: w\nretryPolicy: {maxAttempts: 2, baseDelay: 5s}\n"
    "steps: [{name: a, implementation: noop, queueTimeout: 5, heartbeat_timeout: 1m30s}]",
    f"name: w\nversion: 2\n{STEP}",
    f"name: w\nversion: '1.10'\n{STEP}",
    f"name: w\ntimeout: 2h\nmax_parallel: 1\n{STEP}",
    f"name: w\ncircuit_breaker: {{reset_timeout: 315360000}}\n{STEP}",
    "name: w\nsteps: [{name: a, implementation: wait, config: {seconds: 0}}]",
    "name: w\nsteps: [{name: a, implementation: noop}, {name: b, implementation: noop}]\n"
    "dependencies: [{step: b, dependsOn: [a]}]",
    "name: w\nsteps:\n  - {name: a, implementation: noop}\n"
    "  - {name: f, type: parallel, implementation: noop, dependencies: [a],"
    " config: {items: [1, 2], maxConcurrency: 1}}\n"
    "  - {name: s, type: subflow, config: {workflow: child.yaml}}",
]
REFUSED = [
    f"name: w\nerror_handling: sometimes\n{STEP}",
    f"name: w\nmax_parallel: 0\n{STEP}",
    f"name: w\ntimeout: 0\n{STEP}",
    f"name: w\nversion: 1.5\n{STEP}",
    f"name: w\nretry_policy: {{max_attempts: 1}}\nretryPolicy: {{maxAttempts: 2}}\n{STEP}",
    f"name: w\nretry_policy: {{base_delay: 1.0e+300}}\n{STEP}",
    f"name: w\ncircuit_breaker: {{reset_timeout: 0}}\n{STEP}",
    "name: w\nsteps: [{name: a, implementation: noop, queue_timeout: 0}]",
    "name: w\nsteps: [{name: a, implementation: noop, timeout: soon}]",
    "name: w\nsteps: [{name: a, implementation: noop, timeout: -5s}]",
    "name: w\nsteps: [{name: a, implementation: noop, timeout: 1h30}]",
    "name: w\nsteps: [{name: a}]",
    "name: w\nsteps: [{name: a, implementation: ''}]",
    "name: w\nsteps: [{name: a, type: parallel, config: {items: []}}]",
    "name: w\nsteps: [{name: a, implementation: wait}]",
    "name: w\nsteps: [{name: a, implementation: wait, config: {seconds: 1.0e+300}}]",
    "name: w\nsteps: [{name: a, implementation: noop, dependencies: null}]",
    "name: w\nsteps: [{name: a, implementation: noop}]\ndependencies: [{step: a}]",
    "name: w\nsteps: [{name: f, type: parallel, implementation: noop,"
    " config: {items: [1], max_concurrency: 0}}]",
    "name: w\nsteps: [{name: s, type: subflow, config: {}}]",
    "name: w\nsteps: []",
]


@pytest.mark.parametrize("text", ACCEPTED)
def test_what_the_loader_accepts_validates(text: str) -> None:
    data = yaml_data(text)
    assert loader_accepts(data)
    assert schema_accepts(data), [e.message for e in VALIDATOR.iter_errors(data)]


@pytest.mark.parametrize("text", REFUSED)
def test_what_the_loader_refuses_does_not_validate(text: str) -> None:
    data = yaml_data(text)
    assert not loader_accepts(data)
    assert not schema_accepts(data)


def test_what_json_schema_cannot_say_is_written_down() -> None:
    retry = VALIDATOR.schema["$defs"]["RetryPolicy"]
    assert "max_delay must be at least base_delay" in retry["description"]
    assert not [key for key in _keys(VALIDATOR.schema) if key in {"ge", "gt", "le", "lt"}]


def _keys(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [*node, *(key for value in node.values() for key in _keys(value))]
    if isinstance(node, list):
        return [key for value in node for key in _keys(value)]
    return []
