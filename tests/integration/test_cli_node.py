"""`tamma-node demo`, `keygen` and `worker`, run in process (real node, real workers), and
`tamma-node run` refusing what it cannot start on, as a child process."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import zmq

from tamma_actors import _cli_node, _worker
from tamma_actors._cli_node import main as tamma_node
from tamma_actors._curve import keypair

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
    # a file that cannot be a workflow is refused before a node is started for it
    malformed = short_dir / "malformed.yaml"
    malformed.write_text("name: bad\nsteps:\n  - {name: a, implementation: noop}\n  - {name: a}\n")
    fresh = short_dir / "fresh"
    code = tamma_node(["demo", "--data-dir", str(fresh), str(malformed)])
    assert code == 2 and "duplicate step name 'a'" in capsys.readouterr().err
    assert not fresh.exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_demo_calls_its_node_with_a_token_and_its_key(
    short_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """It called its own node with neither: refused (Forbidden) on a node with tokens, no
    answer from a CURVE tcp:// control endpoint."""
    public, secret = keypair()
    configs = [
        '[tokens]\n"S3cretViewer" = "viewer"\n"S3cretOperator" = "operator"\n',
        f'curve_public_key = "{public}"\ncurve_secret_key = "{secret}"\n'
        f'control_endpoint = "tcp://127.0.0.1:{_free_port()}"\n[tokens]\n"S3cretAdmin" = "admin"\n',
    ]
    example = str(ROOT / "config" / "workflows" / "example.yaml")
    for n, text in enumerate(configs):
        config = short_dir / f"node{n}.toml"
        config.write_text(text)
        args = ["--config", str(config), "--data-dir", str(short_dir / f"var{n}"), "--workers", "1"]
        assert tamma_node(["demo", *args, example, "--input", "topic=t", "--json"]) == 0, n
        assert json.loads(capsys.readouterr().out)["status"] == "completed"
    viewers = short_dir / "viewers.toml"
    viewers.write_text('[tokens]\n"S3cretViewer" = "viewer"\n')
    args = ["--config", str(viewers), "--data-dir", str(short_dir / "var"), example]
    assert tamma_node(["demo", *args]) == 1
    assert "tokens needs one with the operator or admin role" in capsys.readouterr().err


def test_keygen_prints_a_matching_curve_key_pair(capsys: pytest.CaptureFixture[str]) -> None:
    assert tamma_node(["keygen"]) == 0
    out = capsys.readouterr().out
    public = re.search(r'curve_public_key = "(.{40})"', out)
    secret = re.search(r'curve_secret_key = "(.{40})"', out)
    assert public and secret
    assert zmq.curve_public(secret.group(1).encode()) == public.group(1).encode()
    # with '=': a z85 key may begin with '-', which argparse would take for an option
    assert f"--curve-server-key='{public.group(1)}'" in out


WAIT = 60.0


def _tamma_node_run(*args: str) -> subprocess.CompletedProcess[str]:
    """``tamma-node run`` in a child process: it installs signal handlers of its own."""
    cmd = [sys.executable, "-m", "tamma_actors._cli_node", "run", *args]
    env = {**os.environ, "TAMMA_INSECURE_TCP": "true"}
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=WAIT)


def _processes_on(data_dir: Path) -> list[str]:
    """Processes whose command line names ``data_dir`` (a store writer, a worker), once the
    ones that are stopping have had a moment to go."""
    deadline = time.monotonic() + 5.0
    while True:
        found = []
        for proc in psutil.process_iter(["cmdline"]):
            cmdline = " ".join(proc.info["cmdline"] or [])
            if str(data_dir) in cmdline and proc.pid != os.getpid():
                found.append(cmdline)
        if not found or time.monotonic() >= deadline:
            return found
        time.sleep(0.1)


def test_run_on_a_port_in_use_says_so_once_and_leaves_nothing_running(short_dir: Path) -> None:
    data = short_dir / "var"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        endpoint = f"tcp://127.0.0.1:{busy.getsockname()[1]}"
        # a worker process and the store writer are started before the control socket
        done = _tamma_node_run(
            "--data-dir", str(data), "--workers", "1", "--control-endpoint", endpoint
        )
    assert done.returncode == 1
    message = f"tamma-node: control_endpoint '{endpoint}': cannot bind: Address already in use"
    assert done.stderr.splitlines()[-1] == message
    # it was 4 tracebacks (restarts), "node up", then CRITICAL and exit 70
    assert "Traceback" not in done.stderr and "Unhandled exception" not in done.stderr
    assert "node up" not in done.stderr and done.stdout == ""
    assert _processes_on(data) == []


def test_run_on_a_data_dir_under_a_file_names_it(short_dir: Path) -> None:
    afile = short_dir / "afile"
    afile.write_text("x")
    done = _tamma_node_run("--data-dir", str(afile / "var"), "--workers", "0")
    assert done.returncode == 1
    assert done.stderr == f"tamma-node: data_dir '{afile}/var': Not a directory\n"


def test_run_with_curve_keys_that_are_none_exits_1_at_once(short_dir: Path) -> None:
    """libzmq refused the key at the bind, the socket stayed open, and the node never
    stopped (its ZeroMQ context waited for that socket)."""
    config = short_dir / "node.toml"
    config.write_text(
        'curve_public_key = "abc"\ncurve_secret_key = "def"\ncontrol_endpoint = "tcp://127.0.0.1:*"\n'
    )
    done = _tamma_node_run("--config", str(config), "--data-dir", str(short_dir / "var"))
    assert done.returncode == 1
    assert done.stderr.startswith(
        "tamma-node: invalid node configuration: curve_public_key: not a CURVE key"
    )
    assert "curve_secret_key: not a CURVE key" in done.stderr and done.stderr.count("\n") == 1


def test_run_on_an_empty_data_dir_names_it(
    short_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--data-dir ''`` was the current directory, and its mode became 0700."""
    monkeypatch.chdir(short_dir)
    assert tamma_node(["run", "--data-dir", "", "--workers", "0"]) == 1  # before any handler
    assert capsys.readouterr().err.startswith("tamma-node: invalid node configuration: data_dir:")
    assert list(short_dir.iterdir()) == []


def test_demo_on_a_data_dir_that_is_a_file_names_it(
    short_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    afile = short_dir / "afile"
    afile.write_text("x")
    example = str(ROOT / "config" / "workflows" / "example.yaml")
    assert tamma_node(["demo", "--data-dir", str(afile), "--workers", "0", example]) == 1
    err = capsys.readouterr().err
    assert err == f"tamma-node: data_dir '{afile}': it exists and is not a directory\n"


def test_endpoints_the_node_could_not_bind_are_refused_with_its_config(
    short_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = short_dir / "var"
    same = f"ipc://{data}/same.sock"
    args = ["--data-dir", str(data), "--workers", "0", "--control-endpoint", same]
    assert tamma_node(["demo", *args, "--events-endpoint", same, "x.yaml"]) == 1
    err = capsys.readouterr().err
    assert "control_endpoint and events_endpoint are the same endpoint" in err
    missing = f"ipc://{short_dir}/missing/w.sock"
    assert tamma_node(["demo", *args[:4], "--workers-endpoint", missing, "x.yaml"]) == 1
    assert f"workers_endpoint '{missing}': {short_dir}/missing is not an existing" in (
        capsys.readouterr().err
    )
    assert not data.exists()  # refused before the node started


@pytest.fixture
def worker_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    """``tamma-node worker`` in process, without tuning this process's collector."""
    monkeypatch.setattr(_cli_node, "tune_gc", lambda: None)


@pytest.mark.usefixtures("worker_cli")
@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--connect", "bogus://x"], "cannot connect to 'bogus://x': Protocol not supported"),
        (
            ["--connect", "tcp://127.0.0.1:notaport"],
            "cannot connect to 'tcp://127.0.0.1:notaport': Invalid argument",
        ),
        (
            ["--connect", "tcp://127.0.0.1:5999", "--curve-server-key", "junk"],
            "the node's CURVE public key is not a CURVE key (40 z85 characters)",
        ),
        (
            ["--connect", "ipc:///nonexistent/w.sock", "--allow", "x=nomodule"],
            "allowlist entry 'x' = 'nomodule': expected 'module:attr'",
        ),
    ],
)
def test_worker_arguments_it_cannot_use_are_usage_errors(
    extra: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert tamma_node(["worker", *extra]) == 2  # bogus://x was a traceback and exit 4
    err = capsys.readouterr().err
    assert err.startswith(f"tamma-node: {message}") and err.count("\n") == 1


def test_worker_allow_without_equals_is_refused_by_the_parser(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        tamma_node(["worker", "--connect", "ipc:///nonexistent/w.sock", "--allow", "noequals"])
    assert exit_info.value.code == 2
    # it was "dictionary update sequence element #0 has length 1; 2 is required"
    assert "argument --allow: expected NAME=module:attr, got 'noequals'" in capsys.readouterr().err


@pytest.mark.usefixtures("worker_cli")
def test_a_worker_whose_transport_fails_while_running_exits_1(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_worker, "run_worker", lambda *a, **k: _worker.EXIT_TRANSPORT)
    assert tamma_node(["worker", "--connect", "ipc:///nonexistent/w.sock"]) == 1
