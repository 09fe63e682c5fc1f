"""Workflow-file reading rules: keys given twice, how scalars read, names."""

from __future__ import annotations

from pathlib import Path

import pytest

from tamma_actors._errors import WorkflowValidationError
from tamma_actors._workflow_file import load_workflow, parse_workflow
from tamma_actors._workflow_yaml import DuplicateKey, yaml_data


def problems_of(tmp_path: Path, text: str, name: str = "w.yaml") -> list[str]:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(WorkflowValidationError) as info:
        load_workflow(path, known_implementations={"noop", "echo"})
    return [f"{p.loc}: {p.message}" for p in info.value.problems]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "name: w\nsteps: [{name: a, implementation: noop}]\n"
            "steps: [{name: b, implementation: noop}]\n",
            "line 3, column 1: duplicate key 'steps' (first given on line 2)",
        ),
        (
            "name: w\nsteps:\n  - name: a\n    implementation: echo\n    implementation: noop\n",
            "line 5, column 5: duplicate key 'implementation' (first given on line 4)",
        ),
        (  # JSON goes through the same reader
            '{"name": "w", "steps": [{"name": "a", "implementation": "noop"}], "name": "v"}',
            "line 1, column 67: duplicate key 'name' (first given on line 1)",
        ),
    ],
    ids=["steps", "implementation", "json"],
)
def test_a_key_given_twice_is_a_problem_naming_it_and_its_line(
    tmp_path: Path, text: str, expected: str
) -> None:
    assert problems_of(tmp_path, text) == [expected]


def test_merge_keys_may_still_be_overridden() -> None:
    data = yaml_data("base: &b {x: 1, y: 2}\nother: {<<: *b, x: 3}\n")
    assert data["other"] == {"x": 3, "y": 2}
    with pytest.raises(DuplicateKey):
        yaml_data("other: {<<: {x: 1}, x: 3, x: 4}\n")


def test_a_field_under_both_spellings_is_given_twice_not_unknown() -> None:
    data = {
        "name": "both",
        "retry_policy": {"max_attempts": 5},
        "retryPolicy": {"max_attempts": 1},
        "steps": [
            {"name": "a", "implementation": "noop"},
            {"name": "c", "implementation": "noop", "queue_timeout": 5, "queueTimeout": 60},
        ],
        "dependencies": [{"step": "c", "depends_on": ["a"], "dependsOn": ["a"]}],
    }
    with pytest.raises(WorkflowValidationError) as info:
        parse_workflow(data)
    assert sorted(f"{p.loc}: {p.message}" for p in info.value.problems) == [
        "dependencies[0].depends_on: given twice (depends_on and dependsOn)",
        "retry_policy: given twice (retry_policy and retryPolicy)",
        "steps[1].queue_timeout: given twice (queue_timeout and queueTimeout)",
    ]


def test_a_parallel_steps_own_key_under_both_spellings_is_given_twice() -> None:
    # its config keeps the plugin's keys, so pydantic calls neither spelling unknown: one
    # of max_concurrency: 4 and maxConcurrency: 1 silently won
    fan = {"items": [1, 2], "max_concurrency": 4, "maxConcurrency": 1, "other": 1}
    data = {"name": "both", "steps": [{"name": "f", "type": "parallel", "config": fan}]}
    data["steps"][0]["implementation"] = "noop"
    with pytest.raises(WorkflowValidationError) as info:
        parse_workflow(data)
    assert [f"{p.loc}: {p.message}" for p in info.value.problems] == [
        "steps[0].config.max_concurrency: given twice (max_concurrency and maxConcurrency)",
    ]
    # a definition stored before this rule is read again as it was: its execution loads
    assert parse_workflow(data, stored=True).step("f").config["maxConcurrency"] == 1


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("010", 10),  # YAML 1.1 read it as octal 8
        ("-007", -7),
        ("1:30", "1:30"),  # YAML 1.1 read it as sexagesimal 90
        ("1:30.5", "1:30.5"),
        ("12:30:00", "12:30:00"),
        ("0o17", 15),
        ("0x1f", 31),
        ("1_000", 1000),
        ("1.5", 1.5),
        ("1e3", 1000.0),  # YAML 1.1 (and so JSON files) read it as text
        ("-2.5E-1", -0.25),
        ("0x_", "0x_"),  # no digits: text (int("", 16) raised a bare ValueError)
        ("0o_", "0o_"),
        ("2026-12-01", "2026-12-01"),
    ],
)
def test_numbers_read_as_yaml_1_2_reads_them(text: str, value: object) -> None:
    assert yaml_data(f"v: {text}") == {"v": value}


def test_an_explicit_int_tag_on_no_integer_is_a_problem_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "w.yaml"
    path.write_text(
        "name: w\nsteps:\n  - {name: a, implementation: noop, config: {n: !!int 0x_}}\n"
    )
    with pytest.raises(WorkflowValidationError) as info:
        load_workflow(path)
    assert "'0x_' is not an integer" in str(info.value) and "line 3" in str(info.value)


@pytest.mark.parametrize(
    ("version", "expected"), [("010", "10"), ("'1.10'", "1.10"), ("1:30", "1:30"), ("2", "2")]
)
def test_a_version_keeps_what_it_says(tmp_path: Path, version: str, expected: str) -> None:
    path = tmp_path / "v.yaml"
    path.write_text(f"name: v\nversion: {version}\nsteps: [{{name: a, implementation: noop}}]\n")
    assert load_workflow(path).version == expected


def test_a_version_with_a_dot_must_be_text(tmp_path: Path) -> None:
    text = "name: v\nversion: 1.10\nsteps: [{name: a, implementation: noop}]\n"
    assert problems_of(tmp_path, text) == [
        "version: 1.1 is a number: write the version as text, in quotes "
        "(version: '1.10'; the number 1.10 is 1.1) (line 2)"
    ]
