"""Smoke test of the benchmark suite: it runs end to end and writes the documented JSON.

Only the shape of the output is checked, never a timing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_quick_run_writes_the_documented_json(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--only", "W1,W2,W7", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(out.read_text())
    assert data["meta"]["quick"] is True
    assert data["meta"]["errors"] == []
    assert data["meta"]["runs"] >= 3
    expected = {
        "W1": ["accepted_p50_ms", "accepted_p99_ms", "completed_p50_ms", "completed_p99_ms"],
        "W2": ["steps_per_s"],
        "W7": ["commit_p99_ms", "event_p99_ms"],
    }
    for workload, keys in expected.items():
        figures = data[workload]
        for key in keys:
            assert isinstance(figures[key], float) and figures[key] > 0, (workload, key)
            low, high = figures["spread"][key]
            assert low <= figures[key] <= high
        assert len(figures["runs"]) == data["meta"]["runs"]
    assert "W3" not in data  # not selected
    assert "W1" in proc.stdout and "accepted_p50_ms" in proc.stdout


def test_unknown_workloads_are_refused(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--only", "W9"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert "W9" in proc.stderr
