"""`tamma-node demo` and `tamma-node keygen`, run in process (real node, real workers)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import zmq

from tamma_actors._cli_node import main as tamma_node

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_demo_runs_the_example_and_prints_the_execution(
    short_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--data-dir", str(short_dir / "var"), "--workers", "1"]
    example = str(ROOT / "config" / "workflows" / "example.yaml")
    inputs = ["--input", "topic=demo", "--input", "due=2026-12-01", "--input", "n=[1, 2]"]
    assert tamma_node(["demo", *args, example, *inputs, "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["status"] == "completed"
    # YAML values, as in a workflow file: a date stays its text
    assert record["context"] == {"topic": "demo", "due": "2026-12-01", "n": [1, 2]}
    assert all(r["status"] == "succeeded" for r in record["results"].values())

    # again, as a table, on the same store: the first execution is still there
    assert tamma_node(["demo", *args, example, "--input", "topic=again"]) == 0
    captured = capsys.readouterr()
    assert "completed" in captured.out and "events recorded" in captured.out
    assert "(1 executions recovered)" not in captured.err  # it ended: nothing to recover


def test_demo_with_workflow_dirs_reads_subflow_files_only_inside_them(
    short_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parent = str(ROOT / "config" / "workflows" / "parent.yaml")
    args = ["demo", "--data-dir", str(short_dir / "var"), "--workers", "1", "--json"]
    elsewhere = ["--workflow-dir", str(short_dir), "--workflow-dir", str(ROOT / "tests")]
    assert tamma_node([*args, *elsewhere, parent, "--input", "topic=t"]) == 2  # not started
    captured = capsys.readouterr()
    assert not captured.out and "started" not in captured.err
    message = captured.err.splitlines()[-1]
    assert message.startswith("  - steps[1].config.workflow: subflow workflow file")
    assert "outside the node's workflow_dirs" in message and str(short_dir) in message
    inside = ["--workflow-dir", str(short_dir), "--workflow-dir", str(ROOT / "config")]
    assert tamma_node([*args, *inside, parent, "--input", "topic=t"]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "completed"


def test_demo_of_a_failing_workflow_exits_non_zero(
    short_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = short_dir / "fails.yaml"
    spec.write_text(
        "name: fails\nretry_policy: {max_attempts: 1}\n"
        "steps:\n  - {name: f, implementation: fail, config: {times: 5, error: Nope}}\n"
    )
    code = tamma_node(["demo", "--data-dir", str(short_dir / "var"), "--workers", "1", str(spec)])
    assert code == 1
    assert "failed" in capsys.readouterr().out


def test_demo_refuses_a_malformed_input(
    short_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    example = str(ROOT / "config" / "workflows" / "example.yaml")
    code = tamma_node(["demo", "--data-dir", str(short_dir / "var"), example, "--input", "novalue"])
    assert code == 2
    assert "KEY=VALUE" in capsys.readouterr().err
    code = tamma_node(["demo", "--data-dir", str(short_dir / "var"), example, "--input", "x=[1"])
    assert code == 2  # it was a traceback
    assert "--input x: not a YAML value (while parsing a flow sequence" in capsys.readouterr().err
    invalid = short_dir / "invalid.yaml"
    invalid.write_text("name: bad\nsteps:\n  - {name: a, implementation: no_such_step}\n")
    code = tamma_node(["demo", "--data-dir", str(short_dir / "var"), str(invalid)])
    assert code == 2  # as `tamma start`: an invalid workflow is a usage error, not a failure
    assert "steps[0].implementation" in capsys.readouterr().err


def test_keygen_prints_a_matching_curve_key_pair(capsys: pytest.CaptureFixture[str]) -> None:
    assert tamma_node(["keygen"]) == 0
    out = capsys.readouterr().out
    public = re.search(r'curve_public_key = "(.{40})"', out)
    secret = re.search(r'curve_secret_key = "(.{40})"', out)
    assert public and secret
    assert zmq.curve_public(secret.group(1).encode()) == public.group(1).encode()
    assert f"--curve-server-key '{public.group(1)}'" in out
