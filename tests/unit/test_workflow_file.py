"""Workflow files: YAML reading, one report listing every problem, DAG order."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tamma_actors import _workflow_yaml as workflow_yaml
from tamma_actors._durations import MAX_DURATION_S
from tamma_actors._errors import Problem, WorkflowValidationError
from tamma_actors._models import WorkflowConfig
from tamma_actors._workflow_file import (
    MAX_WORKFLOW_FILE_BYTES,
    YamlTooBig,
    _with_line,
    dependents,
    load_workflow,
    parse_workflow,
    read_workflow_mapping,
    topological_order,
    workflow_json_schema,
    yaml_data,
)
from tamma_actors._workflow_yaml import MAX_DEPTH

ROOT = Path(__file__).resolve().parents[2]
BUILTINS = {"noop", "echo", "sleep", "cpu", "fail", "record", "crash", "hang", "shell"}


def write_file(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def steps(*specs: tuple[str, list[str]]) -> list[dict[str, Any]]:
    return [{"name": n, "implementation": "noop", "dependencies": d} for n, d in specs]


def problems_of(data: Any, **kw: Any) -> list[Problem]:
    with pytest.raises(WorkflowValidationError) as info:
        parse_workflow(data, **kw)
    return info.value.problems


def locs(problems: list[Problem]) -> set[str]:
    return {p.loc for p in problems}


# --- reading -------------------------------------------------------------------------


def test_read_mapping(tmp_path: Path) -> None:
    path = tmp_path / "w.yaml"
    path.write_text("name: w\nsteps: [{name: a, implementation: noop}]\n")
    assert read_workflow_mapping(path) == {
        "name": "w",
        "steps": [{"name": "a", "implementation": "noop"}],
    }


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(WorkflowValidationError, match="cannot read") as info:
        read_workflow_mapping(tmp_path / "absent.yaml")
    assert info.value.source == str(tmp_path / "absent.yaml")


def test_yaml_syntax_error_has_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: w\nsteps:\n  - name: a\n    config: {x: [1, 2}\n")
    with pytest.raises(WorkflowValidationError) as info:
        read_workflow_mapping(path)
    (problem,) = info.value.problems
    assert problem.loc.startswith("line 4, column ")
    assert "YAML syntax error" in problem.message
    assert isinstance(info.value.__cause__, Exception)


@pytest.mark.parametrize(("text", "kind"), [("- a\n- b\n", "list"), ("", "empty"), ("42", "int")])
def test_document_must_be_a_mapping(tmp_path: Path, text: str, kind: str) -> None:
    path = tmp_path / "w.yaml"
    path.write_text(text)
    with pytest.raises(WorkflowValidationError, match=kind):
        read_workflow_mapping(path)


def test_undecodable_file(tmp_path: Path) -> None:
    path = tmp_path / "w.yaml"
    path.write_bytes(b"name: \xff\xfe\n")
    with pytest.raises(WorkflowValidationError, match="cannot read"):
        read_workflow_mapping(path)


def _problem(path: str | Path, **kw: Any) -> str:
    with pytest.raises(WorkflowValidationError) as caught:
        read_workflow_mapping(path, **kw)
    return str(caught.value)


def test_a_fifo_is_refused_unread_when_only_regular_files_may_be_read(tmp_path: Path) -> None:
    fifo = tmp_path / "w.yaml"
    os.mkfifo(fifo)
    said: list[str] = []
    reader = threading.Thread(
        target=lambda: said.append(_problem(fifo, regular_only=True)), daemon=True
    )
    reader.start()
    reader.join(10.0)  # it used to wait for a writer for good
    assert not reader.is_alive()
    assert said and "is not a regular file" in said[0]


def test_a_device_or_a_directory_is_refused_and_a_file_has_a_size_cap(tmp_path: Path) -> None:
    assert "/dev/zero is not a regular file" in _problem("/dev/zero", regular_only=True)
    # a client may read any file, but not endlessly: /dev/zero used to fill the memory
    assert "more than the 16 MiB a workflow file may be" in _problem("/dev/zero")
    assert "is not a regular file" in _problem(tmp_path)
    big = tmp_path / "big.yaml"
    with big.open("wb") as fh:  # sparse: nothing is written
        fh.truncate(MAX_WORKFLOW_FILE_BYTES + 1)
    assert f"is {MAX_WORKFLOW_FILE_BYTES + 1} bytes, more than" in _problem(big)


def _alias_bomb(levels: int) -> str:
    lines = ["name: bomb", "steps:", "  - name: a", "    implementation: noop", "    config:"]
    lines.append("      x0: &x0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]")
    for n in range(1, levels):
        lines.append(f"      x{n}: &x{n} [{', '.join([f'*x{n - 1}'] * 10)}]")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    "text,message",
    [
        (_alias_bomb(9), "its aliases expand it to more than"),  # 10**9 values
        ("name: w\nsteps: &s [{name: a, implementation: noop, config: {x: *s}}]\n", "expand"),
        ("name: w\nsteps: []\nx: " + "[" * 3000 + "]" * 3000 + "\n", "nested too deeply"),
    ],
    ids=["alias-bomb", "contains-itself", "deep"],
)
def test_a_document_too_big_to_read_is_refused_quickly(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "w.yaml"
    path.write_text(text)
    assert message in _problem(path)  # a bomb used to hold the reader for minutes


def test_a_document_may_nest_so_deep_and_no_deeper() -> None:
    def nested(levels: int) -> str:  # the document is one level, its "x" list the rest
        return "name: w\nsteps: []\nx: " + "[" * (levels - 1) + "]" * (levels - 1) + "\n"

    deepest = yaml_data(nested(MAX_DEPTH))["x"]
    for _ in range(MAX_DEPTH - 2):
        deepest = deepest[0]
    assert deepest == []
    with pytest.raises(YamlTooBig, match=f"over {MAX_DEPTH} levels deep"):
        yaml_data(nested(MAX_DEPTH + 1))


_BMP_TEXT = st.text(st.characters(max_codepoint=0xFFFF, exclude_categories=["Cs"]))
# a key YAML reads (an implicit key is at most 1,024 characters, escaped: 6 each)
_BMP_KEYS = st.text(st.characters(max_codepoint=0xFFFF, exclude_categories=["Cs"]), max_size=150)
_JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | _BMP_TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_BMP_KEYS, inner, max_size=4),
    max_leaves=20,
)


@given(st.dictionaries(_BMP_KEYS, _JSON_VALUES, max_size=4))
@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
def test_a_json_document_reads_as_yaml_would_read_it(document: dict[str, Any]) -> None:
    # JSON is read by json (~50 times faster), and must come out as YAML would have it
    text = json.dumps(document)  # anything but printable ASCII escaped
    assert yaml_data(text) == yaml.load(text, Loader=workflow_yaml._Loader) == document


def test_json_reads_an_escaped_character_beyond_u_ffff_whole() -> None:
    # escaped, it is a surrogate pair, which PyYAML leaves as two halves
    assert yaml_data(json.dumps({"k": "\U0001f600"})) == {"k": "\U0001f600"}


def test_json_that_is_not_plain_is_read_as_yaml_and_refused_with_its_line() -> None:
    with pytest.raises(yaml.YAMLError, match="duplicate key 'a'") as found:
        yaml_data('{\n"a": 1,\n"a": 2\n}')
    assert "line 3" in str(found.value)
    assert yaml_data('{"x": NaN}') == {"x": "NaN"}  # not JSON: YAML's reading of it
    deep = '{"x": ' + "[" * MAX_DEPTH + "]" * MAX_DEPTH + "}"
    with pytest.raises(YamlTooBig, match=f"over {MAX_DEPTH} levels deep"):
        yaml_data(deep)


def test_anchors_and_merge_keys_still_read() -> None:
    text = (
        "name: w\ndefaults: &d {implementation: noop, timeout: 5}\n"
        "steps:\n  - {<<: *d, name: a}\n  - {<<: *d, name: b, dependencies: [a]}\n"
    )
    data = yaml_data(text)
    assert data["steps"][1] == {
        "implementation": "noop",
        "timeout": 5,
        "name": "b",
        "dependencies": ["a"],
    }
    with pytest.raises(YamlTooBig):
        yaml_data(_alias_bomb(8))


def test_a_client_may_read_a_workflow_from_a_pipe() -> None:
    read_end, write_end = os.pipe()
    os.write(write_end, b"name: piped\nsteps: []\n")
    os.close(write_end)
    try:
        assert read_workflow_mapping(f"/proc/self/fd/{read_end}") == {
            "name": "piped",
            "steps": [],
        }
    finally:
        os.close(read_end)


@pytest.mark.parametrize("name", ["example.yaml", "diamond.yaml"])
def test_shipped_workflows_load_with_builtins(name: str) -> None:
    cfg = load_workflow(ROOT / "config" / "workflows" / name, BUILTINS)
    assert cfg.timeout is not None
    order = topological_order(cfg)
    assert sorted(order) == sorted(s.name for s in cfg.steps)
    # A diamond: some step has two dependents that later join again.
    after = dependents(cfg)
    assert any(len(v) == 2 for v in after.values())
    assert any(len(cfg.deps(s.name)) == 2 for s in cfg.steps)


def test_diamond_order_and_dependents() -> None:
    cfg = load_workflow(ROOT / "config" / "workflows" / "diamond.yaml")
    assert topological_order(cfg) == ["start", "fetch", "left", "right", "join", "finish"]
    assert dependents(cfg)["fetch"] == ["left", "right"]
    assert cfg.deps("join") == ["left", "right"]


def test_load_workflow_points_problems_at_lines(tmp_path: Path) -> None:
    path = write_file(
        tmp_path,
        "w.yaml",
        "name: w\n"
        "retryPolicy:\n"
        "  maxAttempts: 0\n"
        "steps:\n"
        "  - name: a\n"
        "    implementation: noop\n"
        "    dependencies: [zz]\n"
        "  - implementation: noop\n"
        "  - name: c\n"
        "    implementation: echo\n"
        "    colour: red\n",
    )
    with pytest.raises(WorkflowValidationError) as info:
        load_workflow(path)
    by_loc = {p.loc: p.message for p in info.value.problems}
    assert by_loc["retry_policy.max_attempts"].endswith("(line 3)")  # found via the alias
    assert by_loc["steps[0].dependencies[0]"].endswith("(line 7)")
    assert by_loc["steps[1].name"] == "field required (line 8)"  # missing: its parent
    assert by_loc["steps[2].colour"] == "unknown field (line 11)"
    assert info.value.source == str(path)


def test_line_lookup_tolerates_locations_outside_the_file() -> None:
    root = yaml.compose("steps:\n  - name: a\n")
    assert root is not None
    assert _with_line(Problem("steps[7].name", "m"), root).message == "m (line 2)"
    assert _with_line(Problem("", "m"), root).message == "m (line 1)"


# --- validation ----------------------------------------------------------------------


def test_valid_definition() -> None:
    cfg = parse_workflow({"name": "w", "steps": steps(("a", []), ("b", ["a"]))})
    assert isinstance(cfg, WorkflowConfig)
    assert cfg.deps("b") == ["a"]


def test_one_report_lists_field_and_graph_problems() -> None:
    data = {
        "name": "w",
        "retry_policy": {"max_attempts": 0},
        "steps": [
            {"name": "a", "implementation": "noop", "dependencies": ["c"]},
            {"name": "b", "implementation": "noop", "dependencies": ["a", "zz", "b"]},
            {"name": "c", "implementation": "nope", "dependencies": ["b"], "timeout": "soon"},
            {"name": "a", "implementation": "noop"},
            {"name": "d", "type": "task", "colour": "red"},
        ],
        "dependencies": [
            {"step": "q", "depends_on": ["a"]},
            {"step": "d", "dependsOn": ["w"]},
        ],
    }
    with pytest.raises(WorkflowValidationError) as info:
        parse_workflow(data, source="w.yaml", known_implementations=BUILTINS)
    err = info.value
    by_loc = {p.loc: p.message for p in err.problems}
    assert err.source == "w.yaml"
    assert by_loc["retry_policy.max_attempts"] == "Input should be greater than or equal to 1"
    assert "invalid duration" in by_loc["steps[2].timeout"]
    assert by_loc["steps[4].implementation"] == "a task step needs an implementation"
    assert by_loc["steps[4].colour"] == "unknown field"
    assert "duplicate step name 'a'" in by_loc["steps[3].name"]
    assert by_loc["dependencies[0].step"] == "unknown step 'q'"
    assert "unknown step 'zz'" in by_loc["steps[1].dependencies[1]"]
    assert "depends on itself" in by_loc["steps[1].dependencies[2]"]
    assert "unknown step 'w'" in by_loc["dependencies[1].depends_on[0]"]
    assert by_loc["steps"] == "dependency cycle: a -> b -> c -> a"
    assert "unknown implementation 'nope'" in by_loc["steps[2].implementation"]
    assert "allow_" not in by_loc["steps[2].implementation"]

    assert "w.yaml" in str(err)
    assert len(err.problems) == 11


@pytest.mark.parametrize("name,setting", [("shell", "allow_shell"), ("record", "allow_record")])
def test_a_disabled_builtin_is_refused_naming_its_setting(name: str, setting: str) -> None:
    data = {"name": "w", "steps": [{"name": "a", "implementation": name}]}
    with pytest.raises(WorkflowValidationError) as caught:
        parse_workflow(data, known_implementations=BUILTINS - {name})
    assert f"unknown implementation {name!r}" in str(caught.value)
    assert f"the node registers it with {setting} = true" in str(caught.value)


def test_missing_required_fields() -> None:
    problems = problems_of({"steps": [{"implementation": "noop"}]})
    assert {"name", "steps[0].name"} <= locs(problems)
    assert all(p.message == "field required" for p in problems)


@pytest.mark.parametrize("data", [[1, 2], "name: w", None])
def test_non_mapping_data_is_a_validation_error(data: Any) -> None:
    assert problems_of(data)


def test_malformed_entries_do_not_break_graph_checks() -> None:
    data = {
        "name": "w",
        "steps": [
            "not a step",
            {"name": 7, "implementation": "noop"},
            {"name": "a", "implementation": "noop", "dependencies": "b"},
        ],
        "dependencies": [{"step": None}, 5, {"step": "a", "depends_on": [3, "a"]}],
    }
    problems = problems_of(data)
    assert "dependencies[2].depends_on[1]" in locs(problems)
    assert "steps[0]" in locs(problems)


def test_cycles_are_named_once_each() -> None:
    data = {
        "name": "w",
        "steps": steps(("x", ["z"]), ("y", ["x"]), ("z", ["y"]), ("p", ["q"]), ("q", ["p"])),
    }
    messages = sorted(p.message for p in problems_of(data))
    assert messages == [
        "dependency cycle: p -> q -> p",
        "dependency cycle: x -> y -> z -> x",
    ]


def test_workflow_level_dependencies_join_cycle_detection() -> None:
    data = {
        "name": "w",
        "steps": steps(("a", []), ("b", ["a"])),
        "dependencies": [{"step": "a", "depends_on": ["b"]}],
    }
    assert [p.message for p in problems_of(data)] == ["dependency cycle: a -> b -> a"]


def test_tuples_are_checked_as_lists_are() -> None:
    """The field validation takes a tuple for a list, so the graph checks must too: an
    embedded caller's definition is Python data, not always plain JSON."""

    def step(name: str, *deps: str) -> dict[str, Any]:
        return {"name": name, "implementation": "noop", "dependencies": deps}

    data = {
        "name": "w",
        "steps": (step("a"), step("a"), step("b", "missing"), step("x", "y"), step("y", "x")),
        "dependencies": ({"step": "b", "depends_on": ("gone",)},),
    }
    problems = {(p.loc, p.message) for p in problems_of(data)}
    assert problems == {
        ("steps[1].name", "duplicate step name 'a' (first defined at steps[0])"),
        ("steps[2].dependencies[0]", "'b' depends on unknown step 'missing'"),
        ("dependencies[0].depends_on[0]", "'b' depends on unknown step 'gone'"),
        ("steps", "dependency cycle: x -> y -> x"),
    }
    ok = parse_workflow({"name": "w", "steps": (step("a"), step("b", "a"))})
    assert [s.dependencies for s in ok.steps] == [[], ["a"]]


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"message": b"\xff"}, "message: a value of type bytes is not JSON data"),
        ({"x": [1, {"y": float("nan")}]}, "x[1].y: nan is not JSON"),
        ({"x": float("-inf")}, "x: -inf is not JSON"),
        ({"m": {1: "a"}}, "m: the key 1 is not a string"),
        ({"s": {1, 2}}, "s: a value of type set is not JSON data"),
        ({"n": [2**64]}, "n[0]: 18446744073709551616 is too big"),
        ({"n": -(2**63) - 1}, "n: -9223372036854775809 is too big"),
        ({"d": _nested(100)}, "d[0][0][0][0][0][0][0][0][0][0][0][0][0][0][0]...: nested"),
        ({"d": _nested(5000)}, "deeper than 100 maps and lists"),  # past the stack's depth
    ],
)
def test_a_step_config_must_be_json_data(config: dict[str, Any], message: str) -> None:
    """The definition is stored and hashed as JSON: NaN would come back as null and bytes
    as text to an execution brought back from the store, so they are refused at load,
    named by their place in the config."""
    data = {"name": "w", "steps": [{"name": "a", "implementation": "noop", "config": config}]}
    (problem,) = problems_of(data)
    assert problem.loc == "steps[0].config" and message in problem.message
    fine = {"t": (1, "a"), "n": None, "f": 1.5, "b": True, "i": [2**64 - 1, -(2**63)]}
    fine["deep"] = _nested(99)
    ok = parse_workflow({**data, "steps": [{**data["steps"][0], "config": fine}]})
    assert ok.model_dump(mode="json")["steps"][0]["config"] == {**fine, "t": [1, "a"]}
    assert ok.digest()  # the stored form and the digest can be made


def test_a_date_in_a_workflow_file_stays_text(tmp_path: Path) -> None:
    """A workflow is JSON data: an unquoted date or time in YAML is read as the text it
    is written as (a date object could not be sent to the node), and a NaN is named with
    its line."""
    text = (
        "name: w\nsteps:\n  - name: a\n    implementation: noop\n"
        "    config: {day: 2026-12-01, at: 2026-12-01T10:00:00Z, n: 3}\n"
    )
    path = write_file(tmp_path, "w.yaml", text)
    config = read_workflow_mapping(path)["steps"][0]["config"]
    assert config == {"day": "2026-12-01", "at": "2026-12-01T10:00:00Z", "n": 3}
    assert load_workflow(path).steps[0].config == config
    bad = write_file(tmp_path, "nan.yaml", text.replace("n: 3", "n: .nan"))
    with pytest.raises(WorkflowValidationError, match=r"n: nan is not JSON \(line 5\)"):
        load_workflow(bad)


def test_implementations_checked_only_when_known_given() -> None:
    data = {"name": "w", "steps": [{"name": "a", "implementation": "mystery"}]}
    assert parse_workflow(data).step("a").implementation == "mystery"
    (problem,) = problems_of(data, known_implementations=[])
    assert problem.loc == "steps[0].implementation"
    assert "registered: none" in problem.message


def test_compensation_names_a_step_or_an_implementation() -> None:
    base = [
        {"name": "undo", "implementation": "noop"},
        {"name": "a", "implementation": "noop", "compensation": "undo"},
        {"name": "b", "implementation": "noop", "compensation": "echo"},
        {"name": "c", "implementation": "noop", "compensation": "vanish"},
    ]
    (problem,) = problems_of({"name": "w", "steps": base}, known_implementations=BUILTINS)
    assert problem.loc == "steps[3].compensation"


def test_what_the_coordinator_runs_is_never_sent_to_a_worker() -> None:
    """``wait`` is kept by the coordinator: as a parallel step's task or a compensation
    it would be sent to workers, none of which offers it, and wait for good; its own
    length is its ``config.seconds``, so a deadline on it would never be kept."""
    wait = {"implementation": "wait", "config": {"seconds": 1}}
    decide = {"type": "decision", "config": {"branches": [{"otherwise": []}]}}
    steps = [
        {"name": "fan", "type": "parallel", "config": {"items": [1, 2], "seconds": 1}}
        | {"implementation": "wait"},
        {"name": "w", **wait, "timeout": "2s", "queueTimeout": 3, "heartbeat_timeout": 1},
        {"name": "a", "implementation": "noop", "compensation": "wait"},
        {"name": "b", "implementation": "noop", "compensation": "w"},
        {"name": "c", "implementation": "noop", "compensation": "pick"},
        {"name": "d", "implementation": "noop", "compensation": "undo"},  # a task: fine
        {"name": "e", "implementation": "noop", "compensation": "noop"},  # fine
        {"name": "pick", **decide},
        {"name": "undo", "implementation": "echo"},
    ]
    data = {"name": "w", "error_handling": "compensate", "steps": steps}
    known = BUILTINS | {"wait"}  # as a node knows them
    found = {p.loc: p.message for p in problems_of(data, known_implementations=known)}
    assert sorted(found) == [
        "steps[0].implementation",
        "steps[1].heartbeat_timeout",
        "steps[1].queue_timeout",
        "steps[1].timeout",
        "steps[2].compensation",
        "steps[3].compensation",
        "steps[4].compensation",
    ]
    assert "cannot be a parallel step's task" in found["steps[0].implementation"]
    assert "config.seconds is how long it waits" in found["steps[1].timeout"]
    assert "'wait' runs in the coordinator" in found["steps[2].compensation"]
    assert "'w' is a wait step" in found["steps[3].compensation"]
    assert "'pick' is a decision step" in found["steps[4].compensation"]
    # a definition stored before these rules is read again as it was: its execution loads
    assert parse_workflow(data).step("w").timeout == 2.0


def test_a_parallel_step_cannot_be_a_compensation() -> None:
    # it ran its fan-out in the normal flow (a compensation step is skipped there), then
    # compensated once, with the fan-out's items in its config: a compensation is one task
    steps = [
        {"name": "undo_each", "type": "parallel", "implementation": "echo"}
        | {"config": {"items": [1, 2]}},
        {"name": "a", "implementation": "noop", "compensation": "undo_each"},
    ]
    data = {"name": "w", "error_handling": "compensate", "steps": steps}
    found = {p.loc: p.message for p in problems_of(data, known_implementations=BUILTINS)}
    assert found == {
        "steps[1].compensation": "compensation 'undo_each' is a parallel step: "
        "a compensation is a task a worker runs"
    }


def test_a_decision_or_wait_step_has_nothing_to_compensate() -> None:
    # it changes nothing: its compensation would run a worker task on its output
    steps = [
        {"name": "pick", "type": "decision", "compensation": "noop"}
        | {"config": {"branches": [{"otherwise": ["a"]}]}},
        {"name": "nap", "implementation": "wait", "config": {"seconds": 1}}
        | {"compensation": "noop", "dependencies": ["pick"]},
        {"name": "a", "implementation": "noop", "compensation": "noop", "dependencies": ["pick"]},
    ]
    data = {"name": "w", "error_handling": "compensate", "steps": steps}
    known = {*BUILTINS, "wait"}  # as the engine knows it
    found = {p.loc: p.message for p in problems_of(data, known_implementations=known)}
    assert found == {
        "steps[0].compensation": "a decision step changes nothing a compensation could undo "
        "(its compensation would run a worker task on its output)",
        "steps[1].compensation": "a wait step changes nothing a compensation could undo "
        "(its compensation would run a worker task on its output)",
    }
    # a definition stored before this rule is read again as it was: its execution loads
    assert parse_workflow(data).step("pick").compensation == "noop"


# --- order ---------------------------------------------------------------------------


def test_order_is_stable_file_order_among_peers() -> None:
    cfg = parse_workflow(
        {"name": "w", "steps": steps(("d", ["b"]), ("c", []), ("b", []), ("a", ["c"]))}
    )
    assert topological_order(cfg) == ["c", "b", "d", "a"]
    assert dependents(cfg) == {"d": [], "c": ["a"], "b": ["d"], "a": []}


def test_order_rejects_unchecked_configs() -> None:
    unknown = WorkflowConfig.model_validate({"name": "w", "steps": steps(("a", ["x"]))})
    with pytest.raises(WorkflowValidationError, match="unknown step 'x'"):
        topological_order(unknown)
    assert dependents(unknown) == {"a": []}
    cyclic = WorkflowConfig.model_validate(
        {"name": "w", "steps": steps(("a", ["b"]), ("b", ["a"]))}
    )
    with pytest.raises(WorkflowValidationError, match="cycle among: a, b"):
        topological_order(cyclic)


@st.composite
def dags(draw: st.DrawFn) -> list[tuple[str, list[str]]]:
    """Random DAGs in a shuffled file order: edges only point to earlier-created steps."""
    size = draw(st.integers(min_value=1, max_value=12))
    names = [f"s{i}" for i in range(size)]
    pairs = [(i, j) for i in range(size) for j in range(i)]
    chosen = draw(st.lists(st.booleans(), min_size=len(pairs), max_size=len(pairs)))
    specs = [
        (name, [names[j] for (i, j), on in zip(pairs, chosen, strict=True) if on and i == k])
        for k, name in enumerate(names)
    ]
    return draw(st.permutations(specs))


# The machine may be busy with other suites; these properties are about structure, not speed.
graph_settings = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


@graph_settings
@given(dags())
def test_topological_order_respects_every_dependency(specs: list[tuple[str, list[str]]]) -> None:
    cfg = parse_workflow({"name": "w", "steps": steps(*specs)})
    order = topological_order(cfg)
    position = {name: i for i, name in enumerate(order)}
    assert sorted(order) == sorted(name for name, _ in specs)
    for name, deps in specs:
        assert all(position[d] < position[name] for d in deps)
    after = dependents(cfg)
    assert sum(map(len, after.values())) == sum(len(d) for _, d in specs)


@graph_settings
@given(dags(), st.data())
def test_adding_a_back_edge_is_reported_as_a_cycle(
    specs: list[tuple[str, list[str]]], data: st.DataObject
) -> None:
    cfg = parse_workflow({"name": "w", "steps": steps(*specs)})
    order = topological_order(cfg)
    edges = [(n, d) for n, deps in specs for d in deps]
    if not edges:
        return
    name, dep = data.draw(st.sampled_from(edges))
    broken = [(n, [*deps, name] if n == dep else deps) for n, deps in specs]
    problems = problems_of({"name": "w", "steps": steps(*broken)})
    assert problems
    assert all(p.message.startswith("dependency cycle: ") for p in problems)
    assert order  # the unbroken graph still ordered


def test_json_schema() -> None:
    schema = workflow_json_schema()
    assert schema["title"] == "tamma_actors workflow"
    assert {"name", "steps", "timeout", "retry_policy"} <= set(schema["properties"])
    assert schema["additionalProperties"] is False
    assert "WorkflowStep" in schema["$defs"]


def test_the_schema_describes_the_config_of_each_step_type() -> None:
    schema = workflow_json_schema()
    defs = schema["$defs"]
    rules = {
        r["if"]["properties"]["type"].get("const"): r.get("then")
        for r in defs["WorkflowStep"]["allOf"]
        if "type" in r.get("if", {}).get("properties", {})
    }
    assert rules["decision"]["properties"]["config"] == {"$ref": "#/$defs/DecisionConfig"}
    assert rules["parallel"]["properties"]["config"] == {"$ref": "#/$defs/ParallelConfig"}
    assert rules["subflow"]["properties"]["config"] == {"$ref": "#/$defs/SubflowConfig"}
    assert defs["DecisionConfig"]["properties"]["branches"]["items"] == {"$ref": "#/$defs/Branch"}
    assert set(defs["Branch"]["properties"]) == {"when", "then", "otherwise"}
    assert defs["ParallelConfig"]["required"] == ["items"]
    assert defs["SubflowConfig"]["required"] == ["workflow"]


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("team/deploy", "no '/'"),
        ("two\nlines", "no control characters"),
        ("deploy.yaml", "may not end in '.yaml'"),
        ("x" * 201, "at most 200 characters"),
    ],
)
def test_a_workflow_name_a_subflow_could_not_call_is_refused(name: str, says: str) -> None:
    # a subflow by a name with '/' or a file suffix is read as a path: it never found it
    [problem] = problems_of({"name": name, "steps": steps(("a", []))})
    assert problem.loc == "name" and says in problem.message


def test_a_workflow_name_may_have_spaces_and_any_letters() -> None:
    for name in ("demo run", "déploiement", "tamma-dev-loop", "v1.2"):
        assert parse_workflow({"name": name, "steps": steps(("a", []))}).name == name


# Made before the rules above: a workflow name with '/', a step timeout of 0, durations
# over 10 years (a wait too). Its execution was started; it must still load.
OLDER = {
    "name": "team/loop",
    "timeout": 10**9,  # minutes
    "retry_policy": {"max_delay": 10**13},  # ms
    "steps": [
        {"name": "a", "implementation": "noop", "timeout": 0},
        {"name": "w", "implementation": "wait", "config": {"seconds": 1e12}},
    ],
}


def test_a_stored_definition_is_not_judged_by_rules_made_after_it() -> None:
    refused = {p.loc for p in problems_of(OLDER)}
    assert refused == {"name", "timeout", "retry_policy.max_delay", "steps[0].timeout",
                       "steps[1]"}  # fmt: skip
    cfg = parse_workflow(OLDER, stored=True)
    assert cfg.name == "team/loop" and cfg.steps[0].timeout == pytest.approx(1e-9)
    assert cfg.timeout == MAX_DURATION_S and cfg.retry_policy.max_delay == MAX_DURATION_S * 1000
    assert parse_workflow({"name": "fine", "steps": steps(("a", []))}, stored=True).name == "fine"
    assert {p.loc for p in problems_of(OLDER)} == refused  # a new start: today's rules
