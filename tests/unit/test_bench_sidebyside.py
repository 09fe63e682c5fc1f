"""Two versions side by side (``benchmarks.sidebyside``): the arithmetic and the refusals."""

from __future__ import annotations

import signal

import pytest

from benchmarks.sidebyside import Row, compare, figures, higher_is_better, main


def test_figures_are_each_workloads_medians_flattened() -> None:
    data = {
        "meta": {"date": "today", "calibration": {"fdatasync_p50_ms": 0.2}},
        "W1": {
            "title": "latency",
            "accepted_p50_ms": 2.5,
            "completed_p50_ms": 4,
            "spread": {"accepted_p50_ms": [2.0, 3.0]},
            "runs": [{"accepted_p50_ms": 2.5}],
            "notes": ["a note"],
        },
        "W5": {"title": "recovery", "unavailable": "no wait step"},
        "W6": {"title": "rss", "rss_mib": 120.0, "flag": True},
    }
    assert figures(data) == {
        "W1.accepted_p50_ms": 2.5,
        "W1.completed_p50_ms": 4.0,
        "W6.rss_mib": 120.0,
    }


@pytest.mark.parametrize(
    ("key", "up"),
    [
        ("W1.accepted_p50_ms", False),
        ("W2.steps_per_s", True),
        ("W6.w2_ratio", True),  # a target's direction
        ("W4.node_cpu_s", False),
        ("W5.recovery_s", False),
        ("W6.rss_mib", False),
    ],
)
def test_which_way_is_better(key: str, up: bool) -> None:
    assert higher_is_better(key) is up


def test_compare_counts_the_pairs_the_new_version_was_ahead_in() -> None:
    base = [{"W1.accepted_p50_ms": 2.0, "W2.steps_per_s": 2000.0, "W3.wall_s": 0.05}] * 3
    new = [
        {"W1.accepted_p50_ms": 1.5, "W2.steps_per_s": 2100.0},  # W3 missing: left out
        {"W1.accepted_p50_ms": 2.5, "W2.steps_per_s": 1900.0, "W3.wall_s": 0.04},
        {"W1.accepted_p50_ms": 1.8, "W2.steps_per_s": 2000.0, "W3.wall_s": 0.04},
    ]
    rows = compare(base, new)
    assert [r.key for r in rows] == ["W1.accepted_p50_ms", "W2.steps_per_s"]
    latency, rate = rows
    assert latency.ahead == 2 and latency.change == pytest.approx(1.8 / 2.0 - 1)
    assert rate.ahead == 1 and rate.change == 0.0  # a tie is not ahead
    assert compare([], []) == []
    assert Row("W3.wall_s", [0.0], [0.1]).change == 0.0  # nothing to compare with


def test_bad_arguments_are_refused_before_anything_is_checked_out(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["HEAD", "--only", "W9", "--pairs", "0", "--runs", "0"]) == 2
    err = capsys.readouterr().err
    assert "unknown workload(s): W9" in err
    assert "--pairs must be >= 1" in err and "--runs must be >= 1" in err
    previous = signal.getsignal(signal.SIGTERM)  # main() takes SIGTERM over, as a command
    try:
        assert main(["no-such-revision-anywhere", "--only", "W3"]) == 2
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert "'no-such-revision-anywhere' is not a revision" in capsys.readouterr().err


def test_the_machines_figures_of_a_run_are_its_numbers_only() -> None:
    from benchmarks.sidebyside import _machine

    calibration = {"fdatasync_p50_ms": 0.2, "filesystem": "ext4", "steal_pct": 0, "x": True}
    assert _machine(calibration) == {"machine.fdatasync_p50_ms": 0.2, "machine.steal_pct": 0.0}
    assert _machine(None) == {}  # a version whose suite did not measure the machine


def test_only_names_known_workloads_or_says_what_is_wrong() -> None:
    from benchmarks._runner import WORKLOADS, parse_only

    assert parse_only(None) == (list(WORKLOADS), [])
    assert parse_only(" w1, W3 ,") == (["W1", "W3"], [])
    assert parse_only("W1,W9,x") == (["W1", "W9", "X"], ["unknown workload(s): W9, X"])
    assert parse_only(" , ") == ([], ["--only ' , ' names no workload"])
