"""Which CPU the coordinator's threads are pinned to, and the children's way back to all."""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tamma_actors import _affinity
from tamma_actors._config import load_node_config
from tamma_actors._errors import ConfigError
from tamma_actors._node import Node

TWO = frozenset({0, 1})


def test_off_or_a_single_cpu_pins_nothing() -> None:
    assert _affinity.choose("off", TWO) is None
    assert _affinity.choose("auto", frozenset({3})) is None
    assert _affinity.choose(3, frozenset({3})) is None  # one CPU: nothing to spare
    assert _affinity.choose("auto", frozenset()) is None  # not known on this platform


def test_a_named_cpu_must_be_one_the_node_may_use() -> None:
    assert _affinity.choose(1, TWO) == 1
    with pytest.raises(ValueError, match=r"coordinator_cpu 5 is not one of .*\(0,1\)"):
        _affinity.choose(5, TWO)
    with pytest.raises(ValueError, match="coordinator_cpu 5"):
        _affinity.choose(5, frozenset({0}))


def test_auto_takes_the_cpu_with_the_least_interrupt_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_affinity, "interrupt_load", lambda: {0: 900, 1: 20, 2: 20, 3: 5})
    assert _affinity.choose("auto", TWO) == 1
    assert _affinity.choose("auto", frozenset({0, 1, 2})) == 1  # a tie: the lowest
    assert _affinity.choose("auto", frozenset({0, 1, 2, 3})) == 3
    monkeypatch.setattr(_affinity, "interrupt_load", dict)  # not readable: the lowest
    assert _affinity.choose("auto", frozenset({2, 5})) == 2


def test_interrupt_time_is_read_per_cpu_from_proc_stat(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    stat.write_text(
        "cpu  10 0 10 90 1 3 7 0 0 0\n"  # the total, not a CPU
        "cpu0 5 0 5 45 1 1 2 0 0 0\n"
        "cpu1 5 0 5 45 0 2 5 0 0 0\n"
        "cpu2 5 0\n"  # too short: left out
        "intr 12345 0 0\n"
    )
    assert _affinity.interrupt_load(stat) == {0: 3, 1: 7}
    assert _affinity.interrupt_load(tmp_path / "missing") == {}
    assert set(_affinity.interrupt_load()) >= _affinity.allowed()  # this machine's


def test_cpu_lists_are_parsed_and_bad_ones_named() -> None:
    assert _affinity.parse_cpus("1,0,3") == frozenset({0, 1, 3})
    assert _affinity.format_cpus({3, 0, 1}) == "0,1,3"
    for bad in ("", "a,b", "0,-1", "1;2"):
        with pytest.raises(argparse.ArgumentTypeError, match=f"got {bad!r}"):
            _affinity.parse_cpus(bad)


def test_restore_runs_on_the_cpus_given_or_keeps_what_it_has(
    caplog: pytest.LogCaptureFixture,
) -> None:
    mine = _affinity.allowed()
    _affinity.restore(None)
    _affinity.restore(mine)
    assert _affinity.allowed() == mine
    with caplog.at_level(logging.WARNING, logger="tamma_actors._affinity"):
        _affinity.restore(frozenset({100_000}))  # no such CPU: a warning, nothing changes
    assert _affinity.allowed() == mine
    assert "cannot run on CPUs 100000" in caplog.text


def test_pinning_reaches_every_thread_and_the_threads_started_after() -> None:
    """In a child process: pinning the test's own threads would pin pytest."""
    cpu = min(_affinity.allowed())
    probe = (
        "import os, threading\n"
        "from tamma_actors import _affinity\n"
        "gate = threading.Event()\n"
        "early = [threading.Thread(target=gate.wait) for _ in range(3)]\n"
        "for t in early: t.start()\n"
        f"print(_affinity.pin_threads({cpu}))\n"
        "late = threading.Thread(target=gate.wait); late.start()\n"
        "for t in os.listdir('/proc/self/task'):\n"
        "    print(sorted(os.sched_getaffinity(int(t))))\n"
        "gate.set()\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    ).stdout.splitlines()
    assert int(out[0]) >= 4  # the main thread and the three started before
    assert len(out) - 1 >= 5 and set(out[1:]) == {f"[{cpu}]"}


def test_a_node_refuses_a_cpu_it_may_not_use(tmp_path: Path) -> None:
    cfg = load_node_config(None, data_dir=tmp_path / "var", coordinator_cpu=100_000)
    with pytest.raises(ConfigError, match="coordinator_cpu 100000 is not one of"):
        Node(cfg)
    assert not (tmp_path / "var").exists()  # nothing was started or created


def test_coordinator_cpu_takes_auto_off_or_a_cpu_number() -> None:
    assert load_node_config(None).coordinator_cpu == "auto"
    assert load_node_config(None, coordinator_cpu="off").coordinator_cpu == "off"
    assert load_node_config(None, coordinator_cpu=1).coordinator_cpu == 1
    for bad in (-1, "first"):
        with pytest.raises(ConfigError, match="coordinator_cpu"):
            load_node_config(None, coordinator_cpu=bad)


def test_an_embedded_node_does_not_pin_its_host_s_threads(tmp_path: Path) -> None:
    before = {t: os.sched_getaffinity(int(t)) for t in os.listdir("/proc/self/task")}
    with Node(load_node_config(None, data_dir=tmp_path / "var", workers=0)) as node:
        assert node.pinned_cpu is None
        assert node.engine.health().result(30)["node"]["cpu"] is None
    for t, cpus in before.items():
        if Path(f"/proc/self/task/{t}").exists():
            assert os.sched_getaffinity(int(t)) == cpus


def test_the_children_take_the_node_s_cpus_as_an_option(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from tamma_actors import _worker, _writer_main

    args = _worker._parser().parse_args(["--connect", "ipc:///x", "--cpus", "0,1"])
    assert args.cpus == TWO
    args = _writer_main._parser().parse_args(
        ["--fd", "3", "--path", "/x", "--map-size", "1", "--cpus", "1"]
    )
    assert args.cpus == frozenset({1})
    with pytest.raises(SystemExit):
        _worker._parser().parse_args(["--connect", "ipc:///x", "--cpus", "all"])
    assert "expected CPU numbers separated by commas" in capsys.readouterr().err
