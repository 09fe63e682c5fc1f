"""The built-in steps, called directly with a StepContext (no worker involved)."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tamma_actors import _builtins as b
from tamma_actors._step_api import NonRetryable, StepCancelled, StepContext, StepFailure


def ctx(config: dict[str, Any] | None = None, attempt: int = 1, **kw: Any) -> StepContext:
    return StepContext(
        execution_id="ex1",
        step="st",
        attempt=attempt,
        idempotency_key=f"ex1/st/{attempt}",
        config=config or {},
        **kw,
    )


def cancelled_ctx(config: dict[str, Any]) -> StepContext:
    c = ctx(config)
    c.cancelled.set()
    return c


@given(st.recursive(st.none() | st.integers() | st.text(), lambda s: st.lists(s), max_leaves=50))
def test_noop_passes_input_through(value: Any) -> None:
    assert b.noop(ctx(input=value)) == value


def test_echo() -> None:
    assert b.echo(ctx({"message": "hi"})) == "hi"
    assert b.echo(ctx({"message": True})) is True
    with pytest.raises(NonRetryable, match="'message' is required"):
        b.echo(ctx())


def test_sleep_zero_and_cancel() -> None:
    assert b.sleep(ctx({"seconds": 0})) == {"slept": 0.0}
    with pytest.raises(StepCancelled):
        b.sleep(cancelled_ctx({"seconds": 3600}))


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({"seconds": "1"}, "'seconds' must be int or float, got str"),
        ({"seconds": True}, "'seconds' must be int or float, got bool"),
        ({"seconds": -1}, "'seconds' must be >= 0"),
        ({}, "'seconds' is required"),
    ],
)
def test_sleep_config_errors(config: dict[str, Any], match: str) -> None:
    with pytest.raises(NonRetryable, match=match) as info:
        b.sleep(ctx(config))
    assert info.value.error_type == "ConfigError" and info.value.retryable is False


def test_cpu_burns_and_checks_cancel() -> None:
    out = b.cpu(ctx({"ms": 20}))
    assert out["ms"] == 20.0 and out["spins"] > 0
    with pytest.raises(StepCancelled):
        b.cpu(cancelled_ctx({"ms": 60_000}))
    assert b.cpu(ctx({"ms": 0}))["spins"] == 0


@given(times=st.integers(0, 5), attempt=st.integers(1, 8))
def test_fail_fails_exactly_the_first_times(times: int, attempt: int) -> None:
    c = ctx({"times": times}, attempt=attempt)
    if attempt <= times:
        with pytest.raises(StepFailure) as info:
            b.fail(c)
        assert info.value.retryable is True and info.value.error_type == "StepFailure"
    else:
        assert b.fail(c) == {"attempt": attempt}


def test_fail_error_type_message_retryable() -> None:
    c = ctx({"times": 2, "error": "Boom", "retryable": False, "message": "nope"})
    with pytest.raises(StepFailure) as info:
        b.fail(c)
    assert (info.value.error_type, info.value.message, info.value.retryable) == (
        "Boom",
        "nope",
        False,
    )
    with pytest.raises(NonRetryable, match="'retryable' must be bool"):
        b.fail(ctx({"retryable": "yes"}))
    with pytest.raises(NonRetryable, match="'times' must be int"):
        b.fail(ctx({"times": 1.5}))


def test_record_appends_lines(tmp_path: Path) -> None:
    path = tmp_path / "log.txt"
    assert b.record(ctx({"path": str(path)})) == {"recorded": True}
    assert b.record(ctx({"path": str(path)}, attempt=2)) == {"recorded": True}
    assert b.record(ctx({"path": str(path)}, item_index=4)) == {"recorded": True}
    assert path.read_text() == "ex1 st 1\nex1 st 2\nex1 st[4] 1\n"
    with pytest.raises(NonRetryable, match="'path'"):
        b.record(ctx({"path": 3}))


def test_crash_kills_only_the_first_times(monkeypatch: pytest.MonkeyPatch) -> None:
    kills: list[tuple[int, int]] = []
    monkeypatch.setattr(b.os, "kill", lambda pid, sig: kills.append((pid, sig)))
    b.crash(ctx({"times": 1}))
    assert kills == [(os.getpid(), signal.SIGKILL)]
    assert b.crash(ctx({"times": 1}, attempt=2)) == {"attempt": 2}
    assert len(kills) == 1


def test_hang_until_cancelled() -> None:
    c = ctx()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            b.hang(c)
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=run)
    t.start()
    c.cancelled.set()
    t.join(timeout=10)
    assert not t.is_alive()
    assert isinstance(errors[0], StepCancelled)


def test_shell_list_and_string() -> None:
    out = b.shell(ctx({"command": [sys.executable, "-c", "print('hi')"]}))
    assert out == {"returncode": 0, "stdout": "hi\n", "stderr": ""}
    out = b.shell(ctx({"command": "echo $((1+2))"}))
    assert out["stdout"] == "3\n"


def test_shell_nonzero_is_failure(tmp_path: Path) -> None:
    cmd = [sys.executable, "-c", "import sys; sys.stderr.write('bad'); sys.exit(3)"]
    with pytest.raises(StepFailure, match="exited with 3: bad") as info:
        b.shell(ctx({"command": cmd, "cwd": str(tmp_path)}))
    assert info.value.error_type == "ShellError"


def test_shell_missing_program() -> None:
    with pytest.raises(NonRetryable, match="cannot run"):
        b.shell(ctx({"command": ["/nonexistent/program-xyz"]}))


def test_shell_timeout_kills() -> None:
    cmd = [sys.executable, "-c", "import time; time.sleep(60)"]
    with pytest.raises(StepFailure, match="timed out") as info:
        b.shell(ctx({"command": cmd, "timeout": 0.2}))
    assert info.value.error_type == "Timeout"


def test_shell_cancel_kills() -> None:
    cmd = [sys.executable, "-c", "import time; time.sleep(60)"]
    with pytest.raises(StepCancelled):
        b.shell(cancelled_ctx({"command": cmd}))


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({"command": 5}, "'command' must be list or str"),
        ({"command": ["ls", 1]}, "list of str"),
        ({"command": ["ls"], "timeout": "1"}, "'timeout'"),
    ],
)
def test_shell_config_errors(config: dict[str, Any], match: str) -> None:
    with pytest.raises(NonRetryable, match=match):
        b.shell(ctx(config))


def test_kill_tolerates_a_gone_process() -> None:
    import subprocess

    proc = subprocess.Popen(
        [sys.executable, "-c", "pass"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    proc.wait(timeout=30)
    b._kill(proc)
    assert proc.returncode == 0


def test_a_shell_command_dies_with_its_killed_worker(tmp_path: Path) -> None:
    # In its own session, the command outlived a SIGKILLed worker and finished its side
    # effects while the step ran again elsewhere: all of it, a pipeline's subshell too.
    import subprocess
    import time

    pidfile, done = tmp_path / "pid", tmp_path / "done"
    command = f"echo $$ > {pidfile}; (sleep 60; echo done >> {done}) | cat"
    code = (
        "import sys, threading\n"
        "from tamma_actors import _builtins as b\n"
        "from tamma_actors._step_api import StepContext\n"
        "ctx = StepContext(execution_id='e', step='s', attempt=1, idempotency_key='k',\n"
        f"    input=None, inputs={{}}, upstream={{}}, config={{'command': {command!r}}},\n"
        "    item_index=None, cancelled=threading.Event())\n"
        "threading.Thread(target=b.shell, args=(ctx,)).start()  # a runner thread\n"
    )
    worker = subprocess.Popen([sys.executable, "-c", code + "threading.Event().wait()"])
    try:
        deadline = time.monotonic() + 30
        while not (pidfile.exists() and pidfile.read_text().strip()):
            assert time.monotonic() < deadline, "the command did not start"
            time.sleep(0.02)
        session = os.getpgid(int(pidfile.read_text()))
    finally:
        worker.kill()
        worker.wait(30)
    try:
        deadline = time.monotonic() + 30
        while _group_alive(session):
            assert time.monotonic() < deadline, "the command outlived its worker"
            time.sleep(0.02)
        assert not done.exists()
    finally:  # (ends what the test started, whatever happened)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(session, signal.SIGKILL)


def _group_alive(pgid: int) -> bool:
    """Whether a process of group ``pgid`` runs (zombies, reaped by init soon, do not)."""
    for entry in os.listdir("/proc"):
        if entry.isdigit() and _alive(int(entry)):
            with contextlib.suppress(OSError, ValueError):
                if os.getpgid(int(entry)) == pgid:
                    return True
    return False


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, reaped by init soon, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
