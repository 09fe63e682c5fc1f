"""Every duration a workflow file or the node's config gives has one upper bound."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tamma_actors._config import load_node_config
from tamma_actors._durations import MAX_DURATION_S, parse_duration
from tamma_actors._errors import ConfigError, WorkflowValidationError
from tamma_actors._workflow_file import parse_workflow

HUGE = 1.0e300


def problems(data: dict[str, Any]) -> list[str]:
    with pytest.raises(WorkflowValidationError) as info:
        parse_workflow(data)
    return [f"{p.loc}: {p.message}" for p in info.value.problems]


def workflow(step: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    return {
        "name": "w",
        "steps": [{"name": "a", "implementation": "noop", **(step or {})}],
        **fields,
    }


BOUND = "at most 10 years (315,360,000 s)"


@pytest.mark.parametrize(
    ("data", "loc"),
    [
        (workflow(retry_policy={"base_delay": HUGE, "max_delay": HUGE}), "retry_policy.base_delay"),
        (workflow(retry_policy={"max_delay": "87601h"}), "retry_policy.max_delay"),
        (workflow(circuit_breaker={"reset_timeout": HUGE}), "circuit_breaker.reset_timeout"),
        (workflow(timeout=HUGE), "timeout"),
        (workflow({"timeout": HUGE}), "steps[0].timeout"),
        (workflow({"queue_timeout": HUGE}), "steps[0].queue_timeout"),
        (workflow({"heartbeat_timeout": f"{MAX_DURATION_S + 1}s"}), "steps[0].heartbeat_timeout"),
        (workflow({"retry_policy": {"base_delay": HUGE}}), "steps[0].retry_policy.base_delay"),
    ],
)
def test_a_duration_above_the_bound_is_refused_naming_it(data: dict[str, Any], loc: str) -> None:
    found = problems(data)
    assert any(p.startswith(f"{loc}: ") and BOUND in p for p in found), found


def test_a_wait_step_above_the_bound_is_refused() -> None:
    found = problems(workflow({"implementation": "wait", "config": {"seconds": HUGE}}))
    assert found == [
        "steps[0]: a wait step needs config.seconds, a number of seconds >= 0 and "
        f"{BOUND}, got 1e+300"
    ]


def test_the_bound_itself_is_accepted() -> None:
    cfg = parse_workflow(
        workflow(
            {"timeout": MAX_DURATION_S, "queue_timeout": "87600h"},
            timeout=MAX_DURATION_S / 60,
            retry_policy={"max_delay": MAX_DURATION_S * 1000},
        )
    )
    assert cfg.step("a").timeout == MAX_DURATION_S == cfg.timeout
    assert parse_duration(MAX_DURATION_S, "s") == MAX_DURATION_S


@pytest.mark.parametrize(
    ("data", "loc"),
    [(workflow({"timeout": 0}), "steps[0].timeout"), (workflow(timeout="0s"), "timeout")],
)
def test_a_zero_timeout_is_refused_like_the_other_timeouts(data: dict[str, Any], loc: str) -> None:
    assert problems(data) == [f"{loc}: Input should be greater than 0"]


def test_the_node_configs_durations_have_the_same_bound(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"heartbeat_timeout.*at most 10 years"):
        load_node_config(None, data_dir=tmp_path, heartbeat_timeout=HUGE)
