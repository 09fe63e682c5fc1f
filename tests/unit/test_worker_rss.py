"""A worker's resident memory for its heartbeats, read without importing psutil."""

from __future__ import annotations

import builtins
import subprocess
import sys
from typing import Any

import psutil
import pytest

from tamma_actors._worker_loop import rss_bytes


def test_rss_is_what_psutil_reads() -> None:
    ours, theirs = rss_bytes(), psutil.Process().memory_info().rss
    assert ours > 0 and abs(ours - theirs) <= 4 * 1024 * 1024  # a few pages may move between


def test_without_proc_it_asks_psutil(monkeypatch: pytest.MonkeyPatch) -> None:
    real_open = builtins.open

    def no_proc(path: Any, *args: Any, **kwargs: Any) -> Any:
        if str(path) == "/proc/self/statm":  # psutil reads /proc/<pid>/statm
            raise FileNotFoundError(path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", no_proc)
    assert rss_bytes() > 0
    monkeypatch.setattr(psutil, "Process", _GoneProcess)
    assert rss_bytes() == 0  # nothing to read: the heartbeat says 0


class _GoneProcess:
    def memory_info(self) -> Any:
        raise psutil.NoSuchProcess(0)


def test_loading_a_worker_does_not_import_psutil() -> None:
    # psutil's import is ~20 ms of each worker's way from spawn to joining its node
    probe = "import sys, tamma_actors._worker; print('psutil' in sys.modules)"
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert loaded.stdout.strip() == "False"
