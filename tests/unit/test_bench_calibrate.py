"""The benchmark's measure of the machine (``benchmarks._calibrate``)."""

from __future__ import annotations

from collections import namedtuple
from pathlib import Path
from typing import Any

import psutil
import pytest

from benchmarks import _calibrate
from benchmarks._calibrate import (
    calibrate,
    describe,
    filesystem,
    not_durable,
    steal_pct,
    watching,
)

Times = namedtuple("Times", "user system idle steal")
NoSteal = namedtuple("NoSteal", "user system idle")
Part = namedtuple("Part", "device mountpoint fstype opts")


def test_calibrate_measures_the_disk_and_the_cpu_and_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_calibrate, "_SYNCS", 20)
    figures = calibrate(tmp_path)
    for name in ("fdatasync", "lmdb_commit"):
        assert 0 < figures[f"{name}_p50_ms"] <= figures[f"{name}_p99_ms"], name
    assert figures["python_loop_ms"] > 0
    assert figures["filesystem"] == filesystem(tmp_path) != "unknown"
    assert list(tmp_path.iterdir()) == []  # its probe files are gone


def test_watching_adds_the_steal_of_the_time_in_between(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_calibrate, "_SYNCS", 5)
    samples = iter([Times(10.0, 5.0, 80.0, 5.0), Times(40.0, 15.0, 130.0, 15.0)])
    monkeypatch.setattr(psutil, "cpu_times", lambda: next(samples))
    with watching(tmp_path) as figures:
        assert "steal_pct" not in figures and figures["lmdb_commit_p50_ms"] > 0
    assert figures["steal_pct"] == pytest.approx(10.0)


def test_steal_is_the_hypervisors_share_of_the_cpu_time_in_between() -> None:
    before = Times(user=10.0, system=5.0, idle=80.0, steal=5.0)
    after = Times(user=40.0, system=15.0, idle=130.0, steal=15.0)  # 100 s more, 10 stolen
    assert steal_pct(before, after) == pytest.approx(10.0)
    assert steal_pct(NoSteal(1.0, 1.0, 1.0), NoSteal(2.0, 2.0, 2.0)) == 0.0  # not reported
    assert steal_pct(before, before) == 0.0  # no time passed


def test_the_file_system_is_the_one_of_the_longest_mount_point_above_the_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    parts = [
        Part("/dev/vda", "/", "ext4", "rw"),
        Part("/dev/vdb", "/data", "xfs", "rw"),
        Part("tmpfs", "/data/tmp", "tmpfs", "rw"),
    ]
    monkeypatch.setattr(psutil, "disk_partitions", lambda all=False: parts)
    assert filesystem(Path("/data/tmp/run/node")) == "tmpfs"
    assert filesystem(Path("/data/tmp")) == "tmpfs"
    assert filesystem(Path("/data/tmpx/node")) == "xfs"  # a name that only starts alike
    assert filesystem(Path("/srv/node")) == "ext4"
    monkeypatch.setattr(psutil, "disk_partitions", lambda all=False: parts[1:])
    assert filesystem(Path("/srv/node")) == "unknown"


def _figures(fs: str) -> dict[str, Any]:
    return {
        "fdatasync_p50_ms": 0.25,
        "lmdb_commit_p50_ms": 0.61,
        "python_loop_ms": 12.3,
        "filesystem": fs,
        "steal_pct": 1.5,
    }


def test_a_run_on_a_memory_file_system_is_said_not_to_be_durable() -> None:
    on_disk = describe(_figures("ext4"))
    assert on_disk == [
        "machine during the run: fdatasync 0.25 ms p50, fsync'd LMDB commit 0.61 ms p50 "
        "(ext4), Python loop 12.3 ms, CPU stolen 1.5 %"
    ]
    assert not not_durable(_figures("ext4"))
    in_memory = describe(_figures("tmpfs"))
    assert len(in_memory) == 2 and in_memory[1].startswith("warning: ")
    assert "tmpfs" in in_memory[1] and "TMPDIR" in in_memory[1]
    assert not_durable(_figures("ramfs"))
