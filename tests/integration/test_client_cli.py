"""Client and the ``tamma`` CLI against a real ControlServer serving the FakeEngine."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

import tamma_actors._client as client_module
from tamma_actors._cli import ExitCode, main
from tamma_actors._cli_output import PLAIN_FROM_ROWS
from tamma_actors._client import Client, ClientSettings, resolve_endpoint
from tamma_actors._codec import pack, unpack
from tamma_actors._control import ControlServer
from tamma_actors._errors import (
    Forbidden,
    FrameTooLarge,
    IllegalTransition,
    InvalidRequest,
    ProtocolError,
    RemoteError,
    RequestTimeout,
    TransportError,
    UnknownExecution,
    UnknownStep,
    WorkflowValidationError,
)
from tamma_actors._models import WorkflowConfig, WorkflowFilter
from tamma_actors._protocol import LIST_MOST
from tamma_actors._status import ExecutionStatus, StepStatus
from tests.fakes import FakeEngine

pytestmark = pytest.mark.integration

WORKFLOW_YAML = """\
name: demo
version: "2"
steps:
  - name: fetch
    type: task
    implementation: echo
  - name: build
    type: task
    implementation: echo
    dependencies: [fetch]
"""
ONE_STEP = {"name": "one", "steps": [{"name": "only"}]}


@pytest.fixture
def ctx() -> Iterator[zmq.Context[Any]]:
    context: zmq.Context[Any] = zmq.Context()
    yield context
    context.term()


@pytest.fixture
def engine() -> Iterator[FakeEngine]:
    with FakeEngine() as fake:
        yield fake


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("TAMMA_ENDPOINT", "TAMMA_DATA_DIR", "TAMMA_TOKEN", "TAMMA_EVENTS_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "node"


ServerFactory = Callable[..., None]


@pytest.fixture
def serve(ctx: zmq.Context[Any], engine: FakeEngine, data_dir: Path) -> Iterator[ServerFactory]:
    refs = []

    def start(**kw: Any) -> None:
        ref = ControlServer.start(ctx, engine, endpoint=f"ipc://{data_dir}/control.sock", **kw)
        refs.append(ref)
        ref.proxy().address().get(timeout=10)  # bound once this answers

    yield start
    for ref in refs:
        ref.stop(block=True, timeout=10)


@pytest.fixture
def client(serve: ServerFactory, data_dir: Path) -> Iterator[Client]:
    serve()
    with Client(data_dir=data_dir, timeout=10) as c:
        yield c


@pytest.fixture
def workflow_file(tmp_path: Path) -> Path:
    path = tmp_path / "demo.yaml"
    path.write_text(WORKFLOW_YAML)
    return path


def in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    box: list[Any] = []
    thread = threading.Thread(target=lambda: box.append(fn()))
    thread.start()
    return thread, box


# -- Client ------------------------------------------------------------------------------


def test_start_from_a_file(client: Client, workflow_file: Path, engine: FakeEngine) -> None:
    execution = client.start_workflow(workflow_file, {"topic": "x"})
    assert execution.workflow_id == "demo"
    assert execution.workflow_version == "2"
    assert execution.status is ExecutionStatus.RUNNING
    assert execution.context == {"inputs": {"topic": "x"}, "source": str(workflow_file)}
    assert set(execution.results) == {"fetch", "build"}
    assert engine.calls[0][1][2] == str(workflow_file)


def test_a_relative_file_is_sent_with_its_absolute_path(
    client: Client, workflow_file: Path, engine: FakeEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the node resolves a subflow's file against its parent's, from its own directory
    monkeypatch.chdir(workflow_file.parent)
    client.start_workflow(workflow_file.name)
    assert engine.calls[-1][1][2] == str(workflow_file.resolve())


def test_a_chosen_execution_id_is_sent_and_a_bad_one_is_refused_by_the_node(
    client: Client, engine: FakeEngine
) -> None:
    assert client.start_workflow(ONE_STEP, execution_id="deploy-7:a@b.c_d").id == (
        "deploy-7:a@b.c_d"
    )
    batch = client.start_workflows(ONE_STEP, [{"i": 1}, {"i": 2}], execution_ids=["b-1", "b-2"])
    assert [e.id for e in batch] == ["b-1", "b-2"]
    with pytest.raises(ValueError, match="1 execution ids for 2 inputs mappings"):
        client.start_workflows(ONE_STEP, iter([{}, {}]), execution_ids=["only-one"])
    assert len(engine.calls) == 3  # nothing was sent for the refused batch
    for bad in ["", "-lead", "has space", "a/b", "x" * 129]:
        with pytest.raises(RemoteError, match="invalid arguments for 'start': id") as err:
            client.start_workflow(ONE_STEP, execution_id=bad)
        assert err.value.code == "bad_request"


def test_start_from_a_config_or_a_mapping(client: Client, engine: FakeEngine) -> None:
    config = WorkflowConfig.model_validate(
        {"name": "cfg", "steps": [{"name": "s", "type": "task", "implementation": "noop"}]}
    )
    from_config = client.start_workflow(config)
    assert from_config.workflow_id == "cfg"
    sent = engine.calls[0][1][0]
    assert WorkflowConfig.model_validate(sent) == config
    from_mapping = client.start_workflow(ONE_STEP, {"n": 1})
    assert from_mapping.context["inputs"] == {"n": 1}
    assert engine.calls[1][1][0] == ONE_STEP


def test_every_operation_round_trips(client: Client, engine: FakeEngine) -> None:
    eid = client.start_workflow(ONE_STEP).id
    assert client.get_workflow(eid).id == eid
    assert client.pause_workflow(eid).status is ExecutionStatus.PAUSED
    assert client.resume_workflow(eid).status is ExecutionStatus.RUNNING
    engine.run_step(eid, "only")
    engine.fail_step(eid, "only", "disk full")
    failed = client.get_workflow(eid)
    assert failed.status is ExecutionStatus.FAILED
    assert failed.results["only"].error is not None
    assert failed.results["only"].error.message == "disk full"
    retried = client.retry_step(eid, "only")
    assert (retried.status, retried.results["only"].status) == (
        ExecutionStatus.RUNNING,
        StepStatus.READY,
    )
    status = client.get_workflow_status(eid)
    assert status.steps == {"only": StepStatus.READY}
    assert status.progress.total == 1
    events = client.get_events(eid)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert [e.type for e in client.get_events(eid, from_seq=2, limit=2)] == [
        "workflow.started",
        "workflow.paused",
    ]
    aborted = client.abort_workflow(eid, "enough")
    assert (aborted.status, aborted.reason) == (ExecutionStatus.ABORTED, "enough")
    assert client.wait(eid).status is ExecutionStatus.ABORTED
    assert client.health()["status"] == "ok"
    assert client.request("health", {})["executions"] == 1


def test_execute_step_round_trips(client: Client, engine: FakeEngine) -> None:
    eid = client.start_workflow(ONE_STEP).id
    result = client.execute_step(eid, "only", {"probe": [1, 2]}, timeout=7.5)
    assert (result.status, result.data, result.attempts) == (
        StepStatus.SUCCEEDED,
        {"probe": [1, 2]},
        1,
    )
    assert engine.calls[-1] == ("execute_step", (eid, "only", {"probe": [1, 2]}, 7.5))
    with pytest.raises(UnknownStep, match="no step 'nope'"):
        client.execute_step(eid, "nope")
    with pytest.raises(RemoteError, match="timeout: Input should be greater than 0"):
        client.request("execute", {"id": eid, "step": "only", "timeout": 0})


def test_list_filters(client: Client) -> None:
    first = client.start_workflow(ONE_STEP).id
    second = client.start_workflow({"name": "two", "steps": [{"name": "a"}]}).id
    client.abort_workflow(second)
    assert [e.id for e in client.list_workflows()] == [first, second]
    assert [e.id for e in client.list_workflows({"workflow_id": "two"})] == [second]
    only_running = client.list_workflows(WorkflowFilter(status=[ExecutionStatus.RUNNING]))
    assert [e.id for e in only_running] == [first]
    assert [e.id for e in client.list_workflows(WorkflowFilter(limit=1, offset=1))] == [second]
    assert client.list_workflows(WorkflowFilter(limit=0)) == []
    # the same, as the summaries the store keeps for listing
    summaries = client.list_summaries()
    assert [(s.id, s.workflow_id, s.status.value) for s in summaries] == [
        (first, "one", "running"),
        (second, "two", "aborted"),
    ]
    assert summaries[1].end_time is not None and summaries[1].seq > summaries[0].seq
    running = client.list_summaries(WorkflowFilter(status=[ExecutionStatus.RUNNING]))
    assert [s.id for s in running] == [first]
    assert [s.id for s in client.list_summaries({"offset": 1, "limit": 5})] == [second]
    assert client.list_summaries(WorkflowFilter(limit=0)) == []
    # a filter is checked here, as a WorkflowEngine checks it: an unknown key is no filter
    for wrong, says in [({"offset": -1}, "offset"), ({"wrkflow_id": "one"}, "unknown key")]:
        with pytest.raises(InvalidRequest, match=says) as refused:
            client.list_summaries(wrong)
        assert not isinstance(refused.value, RemoteError)
    assert [s.id for s in client.list_summaries({"status": "aborted", "workflowId": "two"})] == [
        second
    ]


def test_events_are_asked_for_at_most_a_replys_worth_at_a_time(
    client: Client, engine: FakeEngine
) -> None:
    """One 'events' reply holds at most LIST_MOST events, as a 'list' reply does records:
    the node refuses a bigger limit (one reply held 19,949), and the client's own pages
    stay within it however many are wanted."""
    eid = client.start_workflow(ONE_STEP).id
    with pytest.raises(ProtocolError, match="limit: Input should be less than or equal to"):
        client.request("events", {"id": eid, "limit": LIST_MOST + 1})
    everything = client.get_events(eid)
    assert len(everything) >= 2
    assert client.get_events(eid, limit=LIST_MOST + 1) == everything
    asked = [args[2] for name, args in engine.calls if name == "get_events"]
    assert asked and all(limit <= LIST_MOST for limit in asked)


def test_errors_map_to_the_tree(client: Client, engine: FakeEngine) -> None:
    with pytest.raises(UnknownExecution) as missing:
        client.get_workflow("nope")
    assert isinstance(missing.value, RemoteError)
    eid = client.start_workflow(ONE_STEP).id
    with pytest.raises(IllegalTransition):
        client.resume_workflow(eid)
    with pytest.raises(UnknownStep):
        client.retry_step(eid, "ghost")
    with pytest.raises(RemoteError) as bad:
        client.request("list", {"limit": "many"})
    assert bad.value.code == "bad_request"
    assert bad.value.details == [{"loc": "limit", "message": "Input should be a valid integer"}]


def test_invalid_workflow_lists_every_problem(client: Client) -> None:
    bad = {"name": "", "steps": [{"name": "a", "dependencies": ["zz"]}, {"name": "a"}]}
    with pytest.raises(WorkflowValidationError) as info:
        client.start_workflow(bad)
    assert [(p.loc, p.message) for p in info.value.problems] == [
        ("name", "a workflow needs a name"),
        ("steps.1.name", "duplicate step name 'a'"),
        ("steps.0.dependencies", "unknown step 'zz'"),
    ]


def test_unreadable_file_fails_locally(client: Client, tmp_path: Path, engine: FakeEngine) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("name: [unclosed\n")
    with pytest.raises(WorkflowValidationError) as info:
        client.start_workflow(path)
    assert not isinstance(info.value, RemoteError)
    assert engine.calls == []


def test_wait_returns_when_the_execution_ends(client: Client, engine: FakeEngine) -> None:
    eid = client.start_workflow(ONE_STEP).id
    assert client.wait(eid, timeout=0).status is ExecutionStatus.RUNNING
    thread, box = in_thread(lambda: client.wait(eid, timeout=60))
    engine.wait_for_call("wait", count=2)
    engine.run_step(eid, "only")
    engine.complete_step(eid, "only", {"ok": True})
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert box[0].status is ExecutionStatus.COMPLETED
    assert box[0].results["only"].data == {"ok": True}


def test_long_waits_are_split_into_chunks(
    client: Client, engine: FakeEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client_module, "WAIT_CHUNK_SECONDS", 0.01)
    eid = client.start_workflow(ONE_STEP).id
    thread, box = in_thread(lambda: client.wait(eid))
    engine.wait_for_call("wait", count=3)  # several server-side long polls so far
    engine.abort_workflow(eid)
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert box[0].status is ExecutionStatus.ABORTED
    assert all(args[1] == pytest.approx(0.01) for name, args in engine.calls if name == "wait")


def test_roles(serve: ServerFactory, data_dir: Path, engine: FakeEngine) -> None:
    serve(tokens={"v": "viewer", "o": "operator"})
    with Client(data_dir=data_dir, token="v", timeout=10) as viewer:
        assert viewer.health()["status"] == "ok"
        with pytest.raises(Forbidden):
            viewer.start_workflow(ONE_STEP)
    with Client(data_dir=data_dir, token="o", timeout=10) as operator:
        assert operator.start_workflow(ONE_STEP).status is ExecutionStatus.RUNNING
    with Client(data_dir=data_dir, timeout=10) as anonymous, pytest.raises(Forbidden):
        anonymous.health()


def test_oversized_requests_are_refused_locally(
    serve: ServerFactory, data_dir: Path, engine: FakeEngine
) -> None:
    serve(max_frame_bytes=512)
    with Client(data_dir=data_dir, timeout=10, max_frame_bytes=512) as small:
        with pytest.raises(FrameTooLarge):
            small.start_workflow({"name": "x" * 1024, "steps": []})
        assert small.health()["status"] == "ok"
    assert [name for name, _ in engine.calls] == ["health"]


def test_close_is_idempotent_and_final(client: Client) -> None:
    client.close()
    client.close()
    with pytest.raises(TransportError, match="closed"):
        client.health()


def test_bad_endpoint() -> None:
    with pytest.raises(TransportError):
        Client("nonsense://here")


def test_endpoint_resolution(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert resolve_endpoint("tcp://h:1", tmp_path) == "tcp://h:1"
    assert resolve_endpoint(None, tmp_path) == f"ipc://{tmp_path}/control.sock"
    assert resolve_endpoint() == "ipc://var/control.sock"
    monkeypatch.setenv("TAMMA_DATA_DIR", "/srv/tamma")
    assert resolve_endpoint() == "ipc:///srv/tamma/control.sock"
    monkeypatch.setenv("TAMMA_ENDPOINT", "tcp://env:2")
    assert resolve_endpoint() == "tcp://env:2"
    assert resolve_endpoint(None, tmp_path) == f"ipc://{tmp_path}/control.sock"
    no_env = ClientSettings(endpoint=None, data_dir=None)
    assert resolve_endpoint(settings=no_env) == "ipc://var/control.sock"
    monkeypatch.setenv("TAMMA_TOKEN", "secret")
    with Client(timeout=1) as c:
        assert (c.endpoint, c.token) == ("tcp://env:2", "secret")
    with Client(timeout=1, token="mine") as c:
        assert c.token == "mine"


class RawNode:
    """A ROUTER that answers however the test tells it to."""

    def __init__(self, ctx: zmq.Context[Any]) -> None:
        self.sock: zmq.Socket[Any] = ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind("tcp://127.0.0.1:*")
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)

    def receive(self) -> tuple[bytes, dict[str, Any]]:
        assert self.sock.poll(10_000)
        identity, payload = self.sock.recv_multipart()
        return identity, unpack(payload)

    def send(self, identity: bytes, *payloads: Any) -> None:
        for payload in payloads:
            data = payload if isinstance(payload, bytes) else pack(payload)
            self.sock.send_multipart([identity, data])


@pytest.fixture
def raw_node(ctx: zmq.Context[Any]) -> Iterator[RawNode]:
    node = RawNode(ctx)
    yield node
    node.sock.close(linger=0)


def test_timeout_then_late_replies_are_discarded(raw_node: RawNode) -> None:
    with Client(raw_node.endpoint, timeout=0.2) as c:
        with pytest.raises(RequestTimeout):
            c.health()
        first_identity, first = raw_node.receive()
        c.timeout = 10
        thread, box = in_thread(c.health)
        identity, second = raw_node.receive()
        assert identity != first_identity  # the socket was replaced after the timeout
        raw_node.send(first_identity, {"v": 1, "id": first["id"], "ok": True, "result": "old"})
        raw_node.send(
            identity,
            {"v": 1, "id": first["id"], "ok": True, "result": "late"},
            b"\xc1 not msgpack",
            {"v": 1, "id": second["id"], "ok": True, "result": {"status": "fresh"}},
        )
        thread.join(timeout=10)
        assert box == [{"status": "fresh"}]


@pytest.mark.parametrize(
    ("reply", "call"),
    [
        ({"ok": False, "error": "nope"}, lambda c: c.health()),
        ({"ok": True, "result": [1]}, lambda c: c.health()),
        ({"ok": True, "result": {"id": 1}}, lambda c: c.get_workflow("x")),
        ({"ok": False, "error": "nope"}, lambda c: c.start_workflows(_ONE, [{}])),
        ({"ok": True, "result": "outcomes"}, lambda c: c.start_workflows(_ONE, [{}])),
        ({"ok": True, "result": [{"ok": True}] * 2}, lambda c: c.start_workflows(_ONE, [{}])),
    ],
)
def test_malformed_replies(
    raw_node: RawNode, reply: dict[str, Any], call: Callable[[Client], Any]
) -> None:
    with Client(raw_node.endpoint, timeout=10) as c:
        thread, box = in_thread(lambda: _raises(ProtocolError, lambda: call(c)))
        identity, request = raw_node.receive()
        raw_node.send(identity, {"v": 1, "id": request["id"], **reply})
        thread.join(timeout=10)
        assert box == [True]


_ONE = {"name": "one", "steps": [{"name": "a", "implementation": "noop"}]}


def _raises(kind: type[BaseException], fn: Callable[[], Any]) -> bool:
    try:
        fn()
    except kind:
        return True
    return False


def test_unknown_error_codes_are_remote_errors(raw_node: RawNode) -> None:
    with Client(raw_node.endpoint, timeout=10) as c:
        thread, box = in_thread(lambda: _raises(RemoteError, c.health))
        identity, request = raw_node.receive()
        error = {"code": "weird", "message": "m"}
        raw_node.send(identity, {"v": 1, "id": request["id"], "ok": False, "error": error})
        thread.join(timeout=10)
        assert box == [True]


# -- the tamma command ---------------------------------------------------------------------


class Cli:
    def __init__(self, data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.data_dir = data_dir
        self.capsys = capsys

    def __call__(self, *argv: str) -> tuple[int, str, str]:
        self.capsys.readouterr()
        code = main(["--data-dir", str(self.data_dir), "--timeout", "10", *argv])
        out, err = self.capsys.readouterr()
        return code, out, err

    def json(self, *argv: str) -> Any:
        code, out, err = self("--json", *argv)
        assert code == ExitCode.OK, err
        return json.loads(out)


@pytest.fixture
def cli(serve: ServerFactory, data_dir: Path, capsys: pytest.CaptureFixture[str]) -> Cli:
    serve()
    return Cli(data_dir, capsys)


EXECUTION_KEYS = {
    "id",
    "workflow_id",
    "status",
    "start_time",
    "end_time",
    "current_step",
    "context",
    "results",
    "error",
    "metrics",
}


def test_cli_start_with_a_chosen_id(cli: Cli, workflow_file: Path) -> None:
    assert cli.json("start", str(workflow_file), "--id", "from-cli")["id"] == "from-cli"


def test_cli_start_json(cli: Cli, workflow_file: Path) -> None:
    started = cli.json(
        "start",
        str(workflow_file),
        "--input",
        "n=3",
        "--input",
        "flag=true",
        "--input",
        "name=demo run",
        "--input",
        "ratio=0.5",
        "--inputs-json",
        '{"n": 1, "list": [1, 2]}',
    )
    assert set(started) >= EXECUTION_KEYS
    assert started["status"] == "running"
    assert started["context"]["inputs"] == {
        "n": 3,
        "flag": True,
        "name": "demo run",
        "ratio": 0.5,
        "list": [1, 2],
    }
    assert started["start_time"].endswith("Z") or "+00:00" in started["start_time"]
    assert set(started["results"]["fetch"]) >= {"status", "data", "error", "attempts"}


def test_cli_start_human(cli: Cli, workflow_file: Path) -> None:
    code, out, _ = cli("start", str(workflow_file))
    assert code == ExitCode.OK
    assert "fetch" in out and "build" in out and "running" in out


def _one_step_file(cli: Cli) -> Path:
    path = cli.data_dir.parent / "one.yaml"
    path.write_text("name: one\nsteps:\n  - name: only\n")
    return path


def _waits(engine: FakeEngine) -> int:
    return len([c for c in engine.calls if c[0] == "wait"])


def _end_waited(engine: FakeEngine, count: int, complete: bool) -> None:
    """Once the engine has been asked to ``wait`` ``count`` times, end the execution of the
    last ``wait`` (its one step ``only``): completed, or failed."""
    engine.wait_for_call("wait", count=count)
    eid = engine.calls[-1][1][0]
    engine.run_step(eid, "only")
    if complete:
        engine.complete_step(eid, "only", "done")
    else:
        engine.fail_step(eid, "only")


def test_cli_start_wait(cli: Cli, engine: FakeEngine) -> None:
    path = _one_step_file(cli)
    for complete, expected in [(True, ExitCode.OK), (False, ExitCode.FAILURE)]:
        thread = threading.Thread(target=_end_waited, args=(engine, _waits(engine) + 1, complete))
        thread.start()
        code, out, err = cli("--json", "start", str(path), "--wait")
        thread.join(timeout=10)
        assert code == expected, err
        assert json.loads(out)["status"] == ("completed" if complete else "failed")
    code, out, err = cli("start", str(path), "--wait", "--wait-timeout", "0")
    assert code == ExitCode.FAILURE
    assert "is running" in err


def test_cli_start_each_starts_one_execution_per_line(
    cli: Cli, engine: FakeEngine, workflow_file: Path
) -> None:
    lines = cli.data_dir.parent / "inputs.jsonl"
    lines.write_text('{"repo": "a"}\n\n{"repo": "b", "n": 2}\n{}\n')
    started = cli.json(
        "start", str(workflow_file), "--each", str(lines), "--input", "n=1", "--input", "x=y"
    )
    assert [e["context"]["inputs"] for e in started] == [
        {"n": 1, "x": "y", "repo": "a"},
        {"n": 2, "x": "y", "repo": "b"},  # a line's own value wins
        {"n": 1, "x": "y"},
    ]
    assert len({e["id"] for e in started}) == 3 and {e["status"] for e in started} == {"running"}
    code, out, _ = cli("start", str(workflow_file), "--each", str(lines))
    assert code == ExitCode.OK
    assert out.count("demo") == 3 and "running" in out  # one row per execution


def test_cli_start_each_refuses_what_it_cannot_read_and_starts_nothing(
    cli: Cli, engine: FakeEngine, workflow_file: Path
) -> None:
    lines = cli.data_dir.parent / "inputs.jsonl"
    for content, complaint in [
        ('{"a": 1}\n{"b": \n', "inputs.jsonl, line 2: not valid JSON"),
        ('{"a": 1}\n\n[1, 2]\n', "line 3: expected a JSON object"),
        ("\n \n", "holds no inputs"),
        (b"\xff\xfe", "cannot read"),
        ('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}\n", "line 1: not valid JSON"),  # deep
    ]:
        if isinstance(content, bytes):
            lines.write_bytes(content)
        else:
            lines.write_text(content)
        code, _, err = cli("start", str(workflow_file), "--each", str(lines))
        assert code == ExitCode.USAGE and complaint in err
    code, _, err = cli("start", str(workflow_file), "--each", str(lines.with_name("none")))
    assert code == ExitCode.USAGE and "cannot read" in err
    lines.write_text('{"a": 1}\n')
    code, _, err = cli("start", str(workflow_file), "--each", str(lines), "--id", "x")
    assert code == ExitCode.USAGE and "--id names one execution" in err
    assert not [c for c in engine.calls if c[0] == "start_workflow"]


def test_cli_start_each_takes_each_id_from_a_field(
    cli: Cli, engine: FakeEngine, workflow_file: Path
) -> None:
    lines = cli.data_dir.parent / "inputs.jsonl"
    lines.write_text('{"repo": "r-1"}\n\n{"repo": "r-2", "n": 2}\n')
    started = cli.json("start", str(workflow_file), "--each", str(lines), "--id-from", "repo")
    assert [e["id"] for e in started] == ["r-1", "r-2"]
    assert started[1]["context"]["inputs"] == {"repo": "r-2", "n": 2}  # the field stays
    starts = len([c for c in engine.calls if c[0] == "start_workflow"])
    lines.write_text('{"repo": "r-3"}\n\n{"n": 2}\n')
    code, _, err = cli("start", str(workflow_file), "--each", str(lines), "--id-from", "repo")
    assert code == ExitCode.USAGE and "inputs.jsonl, line 3: no string 'repo'" in err
    lines.write_text('{"repo": 7}\n')
    code, _, err = cli("start", str(workflow_file), "--each", str(lines), "--id-from", "repo")
    assert code == ExitCode.USAGE and "line 1: no string 'repo' (--id-from)" in err
    code, _, err = cli("start", str(workflow_file), "--id-from", "repo")
    assert code == ExitCode.USAGE and "--id-from goes with --each" in err
    assert len([c for c in engine.calls if c[0] == "start_workflow"]) == starts  # none more


def test_cli_start_each_from_stdin_and_wait(
    cli: Cli, engine: FakeEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _one_step_file(cli)

    def finish(waits: int, outcomes: list[bool]) -> None:
        for n, complete in enumerate(outcomes, 1):
            _end_waited(engine, waits + n, complete)

    for outcomes, expected in [([True, True], ExitCode.OK), ([True, False], ExitCode.FAILURE)]:
        monkeypatch.setattr("sys.stdin", io.StringIO('{"k": 1}\n{"k": 2}\n'))
        thread = threading.Thread(target=finish, args=(_waits(engine), outcomes))
        thread.start()
        code, out, err = cli("--json", "start", str(path), "--each", "-", "--wait")
        thread.join(timeout=10)
        assert code == expected, err
        ended = json.loads(out)
        assert [e["context"]["inputs"] for e in ended] == [{"k": 1}, {"k": 2}]
        assert [e["status"] for e in ended] == ["completed" if o else "failed" for o in outcomes]
    assert "1 of 2 executions did not complete" in err and "failed" in err
    monkeypatch.setattr("sys.stdin", io.StringIO("[]\n"))
    code, _, err = cli("start", str(path), "--each", "-")
    assert code == ExitCode.USAGE and "standard input, line 1: expected a JSON object" in err


def test_cli_lists_many_executions_as_plain_aligned_columns(
    cli: Cli, engine: FakeEngine, data_dir: Path
) -> None:
    with Client(data_dir=data_dir, timeout=10) as client:
        ids = [e.id for e in client.start_workflows(ONE_STEP, [{}] * (PLAIN_FROM_ROWS + 1))]
    code, out, _ = cli("list")
    lines = out.splitlines()
    assert code == ExitCode.OK and len(lines) == 2 + len(ids)  # no box, one line per row
    assert lines[0].split() == ["id", "workflow", "status", "started", "ended", "step"]
    assert [line.split()[:3] for line in lines[2:]] == [[eid, "one", "running"] for eid in ids]
    assert len({line.index("one") for line in lines[2:]}) == 1  # aligned
    code, out, _ = cli("list", "--limit", str(PLAIN_FROM_ROWS))
    assert code == ExitCode.OK and "┃" in out  # a shorter listing stays a rich table


def test_the_cli_imports_rich_only_to_print_a_table() -> None:
    # rich takes ~70 ms to import: `tamma --json ...` and plain listings never print a
    # table, so loading the CLI must not import it.
    probe = "import sys, tamma_actors._cli; print('rich' in sys.modules)"
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert loaded.stdout.strip() == "False"


def test_cli_list_status_get_events(cli: Cli, engine: FakeEngine, workflow_file: Path) -> None:
    eid = cli.json("start", str(workflow_file))["id"]
    other = cli.json("start", str(workflow_file))["id"]
    cli.json("abort", other)
    listed = cli.json("list", "--status", "running", "--workflow", "demo", "--limit", "5")
    assert [e["id"] for e in listed] == [eid]
    assert all(set(e) >= EXECUTION_KEYS for e in listed)
    engine.calls.clear()
    code, out, _ = cli("list")
    assert code == ExitCode.OK and eid in out and other in out
    assert [(c[0], c[1][-1]) for c in engine.calls] == [("list_workflows", "summary")]
    assert [e["id"] for e in cli.json("list", "--offset", "1")] == [other]
    status = cli.json("status", eid)
    assert set(status) >= EXECUTION_KEYS
    assert status["steps"] == {"fetch": "pending", "build": "pending"}
    assert status["waiting"] == {}  # what holds each step (a breaker), as the table shows
    assert status["progress"]["total"] == 2
    code, out, _ = cli("status", eid)
    assert code == ExitCode.OK and "0/2 succeeded" in out
    got = cli.json("get", eid)
    assert got["id"] == eid and set(got) >= EXECUTION_KEYS
    code, out, _ = cli("get", eid)
    assert code == ExitCode.OK and "fetch" in out
    events = cli.json("events", eid, "--from-seq", "2")
    assert [e["seq"] for e in events] == [2]
    assert set(events[0]) == {"seq", "type", "execution_id", "timestamp", "data"}
    code, out, _ = cli("events", eid)
    assert code == ExitCode.OK and "workflow.started" in out


def test_cli_lifecycle_commands(cli: Cli, engine: FakeEngine) -> None:
    eid = engine.start_workflow(ONE_STEP, {}).result()["id"]
    assert cli.json("pause", eid)["status"] == "paused"
    assert cli.json("resume", eid)["status"] == "running"
    engine.run_step(eid, "only")
    engine.fail_step(eid, "only")
    assert cli.json("retry", eid, "only")["status"] == "running"
    aborted = cli.json("abort", eid, "--reason", "changed my mind")
    assert (aborted["status"], aborted["reason"]) == ("aborted", "changed my mind")
    code, out, err = cli("wait", eid, "--timeout", "5")
    assert code == ExitCode.FAILURE and "is aborted" in err
    done = engine.start_workflow(ONE_STEP, {}).result()["id"]
    engine.run_step(done, "only")
    engine.complete_step(done, "only")
    code, out, _ = cli("--json", "wait", done)
    assert code == ExitCode.OK and json.loads(out)["status"] == "completed"


def test_cli_status_without_json_reads_no_record(
    serve: ServerFactory, data_dir: Path, engine: FakeEngine, capsys: pytest.CaptureFixture[str]
) -> None:
    """The table shows what the status holds: an execution whose record (and whose step's
    event) is over the node's frame cap has it shown all the same (it was too_large)."""
    serve(max_frame_bytes=64 << 10)
    cli = Cli(data_dir, capsys)
    eid = engine.start_workflow(ONE_STEP, {}).result()["id"]
    engine.run_step(eid, "only")
    engine.complete_step(eid, "only", "x" * (100 << 10))
    engine.calls.clear()
    code, out, err = cli("status", eid)
    assert code == ExitCode.OK, err
    assert "1/1 succeeded" in out and "completed" in out
    assert [name for name, _ in engine.calls] == ["get_workflow_status"]


def test_step_output_of_any_bytes_prints_as_base64_json(cli: Cli, engine: FakeEngine) -> None:
    """A step may return bytes (msgpack carries them); JSON output shows them as base64
    text instead of failing on bytes that are not UTF-8."""
    eid = engine.start_workflow(ONE_STEP, {}).result()["id"]
    engine.run_step(eid, "only")
    engine.complete_step(eid, "only", {"b": b"\xff\xfe\x00"})
    assert cli.json("get", eid)["results"]["only"]["data"] == {"b": "__4A"}
    assert cli.json("list")[0]["results"]["only"]["data"] == {"b": "__4A"}
    code, out, err = cli("get", eid)  # the table shows them as Python writes bytes
    assert code == ExitCode.OK and "xff" in out and not err


def test_cli_exec(cli: Cli, engine: FakeEngine) -> None:
    eid = engine.start_workflow(ONE_STEP, {}).result()["id"]
    result = cli.json("exec", eid, "only", "--context-json", '{"x": 1}')
    assert (result["status"], result["data"]) == ("succeeded", {"x": 1})
    code, out, _ = cli("exec", eid, "only")
    assert code == ExitCode.OK and "succeeded" in out
    code, _, err = cli("exec", eid, "only", "--context-json", "{nope")
    assert code == ExitCode.USAGE and "not valid JSON" in err
    code, _, err = cli("exec", eid, "missing")
    assert code == ExitCode.FAILURE and "no step 'missing'" in err


def test_cli_health_and_schema(cli: Cli) -> None:
    assert cli.json("health")["status"] == "ok"
    code, out, _ = cli("health")
    assert code == ExitCode.OK and "executions" in out
    for kind in ("workflow", "node"):
        code, out, _ = cli("schema", kind)
        assert code == ExitCode.OK
        assert json.loads(out)["$schema"].startswith("https://json-schema.org/")


def test_cli_global_options_after_the_command(
    serve: ServerFactory, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    serve()
    assert main(["health", "--json", "--data-dir", str(data_dir), "--timeout", "5"]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "ok"


def test_cli_errors_and_exit_codes(cli: Cli, tmp_path: Path) -> None:
    code, _, err = cli("get", "nope")
    assert code == ExitCode.FAILURE and "[not_found] no execution 'nope'" in err
    invalid = tmp_path / "invalid.yaml"
    invalid.write_text("name: bad\nsteps:\n  - name: a\n  - name: a\n  - {}\n")
    code, _, err = cli("start", str(invalid))
    assert code == ExitCode.USAGE
    assert "2 problem(s)" in err
    assert "steps.1.name: duplicate step name 'a'" in err
    assert "steps.2.name: a step needs a name" in err
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [\n")
    code, _, err = cli("start", str(broken))
    assert code == ExitCode.USAGE and str(broken) in err
    code, _, err = cli("start", str(invalid), "--input", "no-equals-sign")
    assert code == ExitCode.USAGE and "KEY=VALUE" in err
    code, _, err = cli("start", str(invalid), "--inputs-json", "[1]")
    assert code == ExitCode.USAGE and "JSON object" in err
    code, _, err = cli("start", str(invalid), "--inputs-json", "{")
    assert code == ExitCode.USAGE and "not valid JSON" in err
    deep = "[" * 100_000 + "]" * 100_000  # was a RecursionError's traceback
    code, _, err = cli("start", str(invalid), "--inputs-json", '{"a": ' + deep + "}")
    assert code == ExitCode.USAGE and "not valid JSON" in err
    code, _, _ = cli()
    assert code == ExitCode.USAGE
    code, _, err = cli("list", "--limit", "-1")
    assert code == ExitCode.USAGE and "limit" in err
    code, _, err = cli("list", "--offset", "-3")
    assert code == ExitCode.USAGE and "offset" in err
    code, out, _ = cli("--help")
    assert code == ExitCode.OK and "watch" in out
    big = tmp_path / "big.json"  # a request over the frame cap is the caller's, not the node's
    big.write_text(json.dumps({"name": "big", "steps": [
        {"name": "a", "implementation": "noop", "config": {"blob": "x" * (9 << 20)}}
    ]}))  # fmt: skip
    code, _, err = cli("start", str(big))
    assert code == ExitCode.USAGE and "[too_large]" in err


def test_cli_unreachable_node(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--data-dir", str(tmp_path / "nothing"), "--timeout", "0.2", "health"])
    assert code == ExitCode.UNAVAILABLE
    err = capsys.readouterr().err
    assert "[timeout]" in err  # and why, when an ipc:// node's socket file is not there
    assert f"there is no socket file {tmp_path}/nothing/control.sock: no node is running" in err


def _tamma(*argv: str, stdout: Any = subprocess.PIPE) -> subprocess.CompletedProcess[str]:
    """``tamma ARGV`` in a process of its own, killed if it is not done within a minute; its
    output buffered as from a shell (not as PYTHONUNBUFFERED would have it)."""
    command = [sys.executable, "-m", "tamma_actors._cli", *argv]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    return subprocess.run(
        command, stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=60, env=env
    )


def test_cli_watch_reports_a_node_it_cannot_reach(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """As every other command does (exit 3): it waited for ever, and a refused endpoint was
    a ZeroMQ traceback."""
    nothing = tmp_path / "nothing"
    done = _tamma("--data-dir", str(nothing), "--timeout", "0.2", "watch", "--count", "1")
    assert done.returncode == ExitCode.UNAVAILABLE, done.stderr
    assert done.stderr.startswith(f"error: [timeout] no connection to ipc://{nothing}/events")
    assert done.stderr.count("\n") == 1
    code = main(["watch", "--events-endpoint", "bogus://x", "--timeout", "5"])
    assert code == ExitCode.UNAVAILABLE
    assert capsys.readouterr().err.startswith("error: [unavailable] cannot connect to bogus://x")


@pytest.mark.parametrize("count", ["0", "-1", "two"])
def test_cli_watch_refuses_a_count_below_one(
    count: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["--data-dir", str(tmp_path), "watch", "--count", count])
    assert code == ExitCode.USAGE
    assert f"argument --count: must be a whole number of 1 or more, not '{count}'" in (
        capsys.readouterr().err
    )


def _closed_pipe() -> int:
    """The writing end of a pipe whose reader has gone: every write to it fails (EPIPE)."""
    read, write = os.pipe()
    os.close(read)
    return write


@pytest.mark.parametrize(
    "argv",
    [["list"], ["--json", "list"], ["events", "{id}"], ["--json", "events", "{id}"]],
    ids=["list", "list --json", "events", "events --json"],
)
def test_cli_output_to_a_reader_that_went_away_ends_quietly(
    cli: Cli, engine: FakeEngine, argv: list[str]
) -> None:
    """``tamma list | head -n 1``: exit 0, nothing on stderr (it was rich's exit 1, or
    "Exception ignored ... BrokenPipeError" and exit 120)."""
    eid = engine.start_workflow(ONE_STEP, {}).result()["id"]
    pipe = _closed_pipe()
    try:
        argv = [a.format(id=eid) for a in argv]
        done = _tamma("--data-dir", str(cli.data_dir), "--timeout", "10", *argv, stdout=pipe)
    finally:
        os.close(pipe)
    assert (done.returncode, done.stderr) == (ExitCode.OK, "")


def test_cli_output_gone_at_the_last_flush_keeps_the_commands_exit_code(
    cli: Cli, engine: FakeEngine
) -> None:
    eid = engine.start_workflow(ONE_STEP, {}).result()["id"]
    engine.abort_workflow(eid, None).result()
    pipe = _closed_pipe()
    try:
        done = _tamma("--data-dir", str(cli.data_dir), "--json", "wait", eid, stdout=pipe)
    finally:
        os.close(pipe)
    assert (done.returncode, done.stderr) == (ExitCode.FAILURE, f"execution {eid} is aborted\n")


@pytest.mark.parametrize("json_output", [True, False], ids=["json", "plain"])
def test_cli_watch_into_a_reader_that_went_away_ends_quietly(
    ctx: zmq.Context[Any], tmp_path: Path, json_output: bool
) -> None:
    """``tamma watch | head -n 1``: it ended with a BrokenPipeError traceback, exit 1 (and
    without --json, rich's own exit 1)."""
    pub: zmq.Socket[Any] = ctx.socket(zmq.XPUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.bind(f"ipc://{tmp_path}/events.sock")
    pipe = _closed_pipe()
    command = [sys.executable, "-m", "tamma_actors._cli", "--data-dir", str(tmp_path), "watch"]
    command += ["--json"] if json_output else []
    watch = subprocess.Popen(command, stdout=pipe, stderr=subprocess.PIPE, text=True)
    os.close(pipe)
    try:
        assert pub.poll(30_000), "the watcher never subscribed"
        assert pub.recv() == b"\x01"
        body = {"seq": 1, "type": "x.y", "execution_id": "e1", "timestamp": 0, "data": {}}
        pub.send_multipart([b"x.y", pack(body)])
        _, err = watch.communicate(timeout=30)
        assert (watch.returncode, err) == (ExitCode.OK, "")
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait(timeout=10)
        pub.close(linger=0)


def test_cli_remote_unavailable(
    cli: Cli, engine: FakeEngine, capsys: pytest.CaptureFixture[str]
) -> None:
    engine.inject_failure("health", TransportError("node is shutting down"))
    code, _, err = cli("health")
    assert code == ExitCode.UNAVAILABLE and "shutting down" in err


def test_cli_forbidden(
    serve: ServerFactory, data_dir: Path, workflow_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    serve(tokens={"v": "viewer"})
    code = main(["--data-dir", str(data_dir), "--token", "v", "start", str(workflow_file)])
    assert code == ExitCode.FAILURE
    assert "forbidden" in capsys.readouterr().err


def test_cli_watch(
    ctx: zmq.Context[Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pub: zmq.Socket[Any] = ctx.socket(zmq.XPUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.bind(f"ipc://{tmp_path}/events.sock")
    try:
        argv = ["--data-dir", str(tmp_path), "watch", "step.c*", "workflow.completed"]
        thread, box = in_thread(lambda: main([*argv, "--count", "2", "--json"]))
        subscriptions: set[bytes] = set()
        while len(subscriptions) < 2:
            assert pub.poll(10_000), "the watcher never subscribed"
            subscriptions.add(pub.recv())
        assert subscriptions == {b"\x01step.c", b"\x01workflow.completed"}

        def event(kind: str, seq: int) -> list[bytes]:
            body = {"seq": seq, "type": kind, "execution_id": "e1", "timestamp": 1.0 + seq}
            return [kind.encode(), pack({**body, "data": {"n": seq}})]

        pub.send_multipart(event("step.started", 1))  # filtered by ZeroMQ
        pub.send_multipart(event("step.cancelled", 2))
        pub.send_multipart([b"step.corrupt", b"\xc1"])
        pub.send_multipart([b"step.cut"])  # a frame short
        # as a node with events_publish_time sends it: the publish time follows
        pub.send_multipart([*event("workflow.completed", 3), struct.pack("<d", 5.0)])
        thread.join(timeout=10)
        assert box == [ExitCode.OK]
        captured = capsys.readouterr()
        lines = [json.loads(line) for line in captured.out.splitlines()]
        assert [(e["seq"], e["type"]) for e in lines] == [
            (2, "step.cancelled"),
            (3, "workflow.completed"),
        ]
        assert set(lines[0]) == {"seq", "type", "execution_id", "timestamp", "data"}
        assert "malformed event" in captured.err and "1 frame(s)" in captured.err
    finally:
        pub.close(linger=0)


def test_cli_watch_human_output(
    ctx: zmq.Context[Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pub: zmq.Socket[Any] = ctx.socket(zmq.XPUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.bind("tcp://127.0.0.1:*")
    endpoint = pub.getsockopt_string(zmq.LAST_ENDPOINT)
    try:
        argv = ["watch", "--events-endpoint", endpoint, "--count", "1"]
        thread, box = in_thread(lambda: main(argv))
        assert pub.poll(10_000)
        assert pub.recv() == b"\x01"  # no pattern: everything
        body = {"seq": 7, "type": "x.y", "execution_id": "e9", "timestamp": 0, "data": {}}
        pub.send_multipart([b"x.y", pack(body)])
        thread.join(timeout=10)
        assert box == [ExitCode.OK]
        assert "e9 #7 x.y {}" in capsys.readouterr().out
    finally:
        pub.close(linger=0)


def test_cli_timeouts_must_be_a_number_of_seconds_above_0(cli: Cli, engine: FakeEngine) -> None:
    # nan and inf ended in a traceback, -1 waited "within -1s" and 0 meant 30 s (a wait's
    # timeout may be 0: look once, see test_cli_start_wait).
    for value in ("nan", "inf", "0", "-1", "soon"):
        for args, option in [
            (("--timeout", value, "health"), "--timeout"),
            (("wait", "x", "--timeout", value), "--timeout"),
            (("start", "x.yaml", "--wait", "--wait-timeout", value), "--wait-timeout"),
            (("exec", "x", "s", "--step-timeout", value), "--step-timeout"),
        ]:
            if value == "0" and option != "--step-timeout" and args[0] in ("wait", "start"):
                continue
            code, _, err = cli(*args)
            assert code == ExitCode.USAGE, (args, err)
            assert f"argument {option}: " in err and "seconds" in err
    assert engine.calls == []
    assert cli("--timeout", "2.5", "health")[0] == ExitCode.OK
