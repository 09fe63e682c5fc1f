"""A real node end to end: worker processes, ZeroMQ sockets, LMDB on disk, the client.

The node runs in the test process (its workers are real child processes); the tests
that stop and restart a node or send it signals run `tamma-node` as a child process.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml
import zmq

from tamma_actors import Client, WorkflowValidationError
from tamma_actors import _client as client_module
from tamma_actors import _control as control_module
from tamma_actors._codec import pack, unpack
from tamma_actors._config import load_node_config
from tamma_actors._errors import (
    ExecutionExists,
    FrameTooLarge,
    IllegalTransition,
    TransportError,
    UnknownStep,
)
from tamma_actors._node import Node
from tamma_actors._record_models import WorkflowStatusInfo
from tamma_actors._status import is_terminal_execution

pytestmark = pytest.mark.integration

WAIT = 60.0


def wf(name: str, *steps: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"name": name, "steps": list(steps), **extra}


def step(name: str, impl: str = "noop", *deps: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "implementation": impl, "dependencies": list(deps), **extra}


def test_a_six_step_dag_with_a_diamond_completes_with_the_right_data_flow(client: Client) -> None:
    spec = wf(
        "six",
        step("fetch", "noop"),
        step("left", "echo", "fetch", config={"message": "L"}),
        step("right", "noop", "fetch"),
        step("join", "noop", "left", "right"),
        step("tail", "noop", "join"),
        step("report", "noop", "tail", "fetch"),
    )
    started = client.start_workflow(spec, {"topic": "demo"})
    final = client.wait(started.id, timeout=WAIT)
    assert final.status == "completed", final.error
    res = {name: r.data for name, r in final.results.items()}
    assert res["fetch"] == {"topic": "demo"}
    assert res["left"] == "L" and res["right"] == {"topic": "demo"}
    assert res["join"] == {"left": "L", "right": {"topic": "demo"}}
    assert res["tail"] == res["join"]
    assert res["report"] == {"tail": res["join"], "fetch": {"topic": "demo"}}
    events = client.get_events(final.id)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert events[-1].type == "workflow.completed"


def test_independent_steps_overlap_in_time(client: Client) -> None:
    spec = wf(
        "par",
        step("a", "sleep", config={"seconds": 0.4}),
        step("b", "sleep", config={"seconds": 0.4}),
    )
    final = client.wait(client.start_workflow(spec).id, timeout=WAIT)
    a, b = final.results["a"], final.results["b"]
    assert final.status == "completed"
    assert a.started_at is not None and b.started_at is not None
    assert a.ended_at is not None and b.ended_at is not None
    # each started before the other ended: they ran at the same time
    assert a.started_at < b.ended_at and b.started_at < a.ended_at


def test_a_failing_step_succeeds_on_attempt_three(client: Client) -> None:
    spec = wf(
        "retry",
        step(
            "flaky",
            "fail",
            config={"times": 2, "error": "TimeoutError"},
            retry_policy={"max_attempts": 3, "base_delay": 10, "jitter": 0},
        ),
    )
    final = client.wait(client.start_workflow(spec).id, timeout=WAIT)
    assert final.status == "completed"
    assert final.results["flaky"].attempts == 3
    assert final.metrics.retries == 2


def test_an_invalid_workflow_is_refused_with_every_problem_named(client: Client) -> None:
    spec = wf(
        "bad",
        step("a", "noop", "ghost"),
        step("a", "teleport"),
        step("x", "noop", "y"),
        step("y", "noop", "x"),
    )
    with pytest.raises(WorkflowValidationError) as info:
        client.start_workflow(spec)
    text = str(info.value) + " ".join(str(p) for p in info.value.problems)
    for needle in ("ghost", "teleport", "duplicate", "x -> y -> x"):
        assert needle in text, needle
    assert client.list_workflows() == []  # nothing was started
    # data a JSON definition cannot hold (bytes, NaN, nesting past the stack): named, and
    # nothing is started
    deep: Any = 1
    for _ in range(1000):
        deep = {"k": deep}
    for config, needle in [
        ({"message": b"\xff\x00"}, "bytes"),
        ({"x": float("nan")}, "nan"),
        ({"x": deep}, "nested deeper than 100"),
    ]:
        with pytest.raises(
            WorkflowValidationError, match=rf"steps\[0\]\.config: \w+.*: .*{needle}"
        ):
            client.start_workflow(wf("raw", step("a", "echo", config=config)))
    # a key that is no text is one of the workflow's problems, not a malformed request
    with pytest.raises(WorkflowValidationError) as info:
        client.start_workflow({"name": "odd", 1: "x", "steps": []})
    assert {p.loc for p in info.value.problems} == {"[1]", "steps"}
    assert client.list_workflows() == [] and client.health()["status"] == "ok"


def test_pause_stops_new_dispatch_and_resume_continues(client: Client) -> None:
    spec = wf(
        "pause", step("first", "sleep", config={"seconds": 0.5}), step("second", "noop", "first")
    )
    eid = client.start_workflow(spec).id
    assert client.pause_workflow(eid).status == "paused"
    for _ in range(600):  # `first` runs on while paused; its result is recorded (bounded)
        held = client.get_workflow(eid)
        if held.results["first"].status == "succeeded":
            break
        threading.Event().wait(0.05)
    held = client.wait(eid, timeout=0.3)  # a moment more for a dispatch that must not come
    assert held.status == "paused"
    assert held.results["first"].status == "succeeded"
    assert held.results["second"].status in ("pending", "ready")  # nothing new was dispatched
    assert client.resume_workflow(eid).status == "running"
    assert client.wait(eid, timeout=WAIT).status == "completed"


def test_abort_ends_a_hanging_execution(client: Client) -> None:
    eid = client.start_workflow(wf("hang", step("h", "hang"), step("never", "noop", "h"))).id
    client.wait(eid, timeout=0.5)
    aborted = client.abort_workflow(eid, reason="stuck")
    assert aborted.status == "aborted" and aborted.reason == "stuck"
    assert aborted.results["never"].status == "cancelled"
    with pytest.raises(IllegalTransition):
        client.resume_workflow(eid)
    # the hung step was cancelled on its worker: the worker is free for new work
    final = client.wait(client.start_workflow(wf("after", step("n"))).id, timeout=WAIT)
    assert final.status == "completed"


def test_a_worker_killed_mid_step_is_replaced_and_the_execution_completes(
    node: Node, client: Client
) -> None:
    eid = client.start_workflow(
        wf("kill", step("slow", "sleep", config={"seconds": 1.0}), step("after", "noop", "slow"))
    ).id
    victim = _wait_for_running_worker(client, eid)
    os.kill(victim, signal.SIGKILL)
    final = client.wait(eid, timeout=WAIT)
    assert final.status == "completed"
    assert final.results["slow"].attempts == 1  # a lost worker does not use up an attempt
    types = [e.type for e in client.get_events(eid)]
    assert "step.redispatched" in types
    assert _worker_pids(client, lambda pids: len(pids) == 2 and victim not in pids)


def _worker_pids(client: Client, done: Any) -> list[int]:
    """The connected workers' pids, once ``done(pids)`` holds (bounded wait)."""
    pids: list[int] = []
    for _ in range(100):
        pids = [w["pid"] for w in client.health()["workers"]["workers"]]
        if done(pids):
            return pids
        threading.Event().wait(0.1)
    raise AssertionError(f"workers never settled: {pids}")


def test_crash_steps_kill_their_worker_and_are_dispatched_again(client: Client) -> None:
    spec = wf("crash", step("c", "crash", config={"times": 1}))
    final = client.wait(client.start_workflow(spec).id, timeout=WAIT)
    assert final.status == "completed"


def test_malformed_control_messages_get_errors_while_the_node_keeps_serving(
    node: Node, client: Client
) -> None:
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 10_000)
    sock.connect(node.config.control_address)
    try:
        for frame in (
            b"\xc1\xff garbage",
            pack([1, 2, 3]),
            pack({"v": 1, "id": 7, "op": "nuke"}),
            pack({"v": 1, "id": 8, "op": "get", "args": {"id": 42}}),
            pack({"v": 99, "id": 9, "op": "health", "args": {}}),
        ):
            sock.send(frame)
            reply = unpack(sock.recv())
            assert reply["ok"] is False and reply["error"]["code"] and reply["error"]["message"]
    finally:
        sock.close()
    assert client.health()["status"] in ("ok", "degraded")
    assert (
        client.wait(client.start_workflow(wf("fine", step("n"))).id, timeout=WAIT).status
        == "completed"
    )


def _wait_for_running_worker(client: Client, eid: str) -> int:
    for _ in range(200):
        rec = client.get_workflow(eid)
        if rec.results["slow"].status == "running":
            workers = client.health()["workers"]["workers"]
            busy = [w["pid"] for w in workers if w["busy"]]
            if busy:
                return int(busy[0])
        client.wait(eid, timeout=0.05)
    raise AssertionError("the step never started")


# -- a node as a child process ------------------------------------------------------------


def _tamma_node(data_dir: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tamma_actors._cli_node",
            "run",
            "--data-dir",
            str(data_dir),
            "--workers",
            "1",
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _stop(proc: subprocess.Popen[str], sig: int = signal.SIGTERM) -> int:
    proc.send_signal(sig)
    try:
        return proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def _await_ready(proc: subprocess.Popen[str]) -> None:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert "control" in line, (line, proc.stderr.read() if proc.stderr else "")


def test_a_restarted_node_lists_its_executions_with_their_full_history(short_dir: Path) -> None:
    data = short_dir / "var"
    proc = _tamma_node(data)
    try:
        _await_ready(proc)
        with Client(data_dir=data, timeout=WAIT) as c:
            first = c.wait(
                c.start_workflow(wf("keep", step("a"), step("b", "noop", "a"))).id, timeout=WAIT
            )
            history = [e.model_dump() for e in c.get_events(first.id)]
        children = [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
        assert _stop(proc) == 0  # SIGTERM: a clean shutdown
        assert not [
            p
            for p in children
            if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
        ]
    finally:
        if proc.poll() is None:
            _stop(proc, signal.SIGKILL)
    proc = _tamma_node(data)
    try:
        _await_ready(proc)
        with Client(data_dir=data, timeout=WAIT) as c:
            listed = c.list_workflows()
            assert [r.id for r in listed] == [first.id]
            assert listed[0].status == "completed" and listed[0].results["b"].data == {}
            assert [e.model_dump() for e in c.get_events(first.id)] == history
        assert _stop(proc, signal.SIGINT) == 0
    finally:
        if proc.poll() is None:
            _stop(proc, signal.SIGKILL)


def test_the_cli_starts_waits_and_prints_json(short_dir: Path) -> None:
    data = short_dir / "var"
    flow = short_dir / "flow.yaml"
    flow.write_text(yaml.safe_dump(wf("cli", step("hello", "echo", config={"message": "hi"}))))
    bad = short_dir / "bad.yaml"
    bad.write_text("name: broken\nsteps:\n  - name: a\n    implementation: teleport\n")
    proc = _tamma_node(data)
    try:
        _await_ready(proc)
        tamma = [sys.executable, "-m", "tamma_actors._cli", "--data-dir", str(data)]
        out = subprocess.run(
            [*tamma, "start", str(flow), "--input", "topic=demo", "--wait", "--json"],
            capture_output=True,
            text=True,
            timeout=WAIT,
        )
        assert out.returncode == 0, out.stderr
        record = json.loads(out.stdout)
        assert record["status"] == "completed" and record["context"] == {"topic": "demo"}
        assert record["results"]["hello"]["data"] == "hi"
        refused = subprocess.run(
            [*tamma, "start", str(bad)], capture_output=True, text=True, timeout=WAIT
        )
        assert refused.returncode == 2 and "teleport" in refused.stderr
        listed = subprocess.run(
            [*tamma, "list", "--json"], capture_output=True, text=True, timeout=WAIT
        )
        assert [r["id"] for r in json.loads(listed.stdout)] == [record["id"]]
    finally:
        assert _stop(proc) == 0


def test_a_start_under_a_chosen_id_runs_once(client: Client) -> None:
    flow = wf("once", step("hello", "echo", config={"message": "hi"}))
    first = client.start_workflow(flow, {"pr": 7}, execution_id="pr-7")
    done = client.wait(first.id, timeout=WAIT)
    assert done.status.value == "completed"
    # a retry of the same start (its reply was lost, say) gets that execution, as it is
    again = client.start_workflow(flow, {"pr": 7}, execution_id="pr-7")
    assert again.id == "pr-7" and again.status.value == "completed"
    with pytest.raises(ExecutionExists, match="execution 'pr-7' exists"):
        client.start_workflow(flow, {"pr": 8}, execution_id="pr-7")
    events = client.get_events("pr-7")
    assert [e.type for e in events].count("workflow.created") == 1
    # pipelined, twice: the second batch starts nothing new
    ids = [f"batch-{i}" for i in range(20)]
    inputs = [{"i": i} for i in range(20)]
    first_batch = client.start_workflows(flow, inputs, execution_ids=ids)
    second_batch = client.start_workflows(flow, inputs, execution_ids=ids)
    assert [e.id for e in first_batch] == [e.id for e in second_batch] == ids
    assert len(client.list_workflows()) == 21
    # in one batch, a start under a taken id with other inputs is refused alone
    with pytest.raises(ExecutionExists, match="execution 'batch-3' exists"):
        client.start_workflows(
            flow, [{"i": 100}, {"i": -3}, {"i": 101}], execution_ids=["new-1", "batch-3", "new-2"]
        )
    assert [client.wait(f"new-{i}", timeout=WAIT).status.value for i in (1, 2)] == ["completed"] * 2
    assert client.get_workflow("batch-3").context == {"i": 3}
    assert len(client.list_workflows()) == 23


def test_execute_step_runs_one_step_outside_the_schedule(client: Client) -> None:
    spec = wf("probe", step("a", "noop"), step("b", "noop", "a"), step("f", "fail", "a"))
    spec["steps"][2]["config"] = {"times": 5, "error": "Boom", "retryable": False}
    eid = client.start_workflow(spec, {"topic": "x"}).id
    before = client.wait(eid, timeout=WAIT)
    assert before.status == "failed"

    result = client.execute_step(eid, "b", {"given": 1})
    assert (result.status, result.data, result.attempts) == ("succeeded", {"given": 1}, 1)
    assert result.started_at is not None and result.ended_at is not None
    failed = client.execute_step(eid, "f", None)
    assert failed.status == "failed"
    assert failed.error is not None and failed.error.type == "Boom"

    after = client.get_workflow(eid)  # the execution itself did not move
    assert (after.status, after.seq) == (before.status, before.seq)
    assert after.results["b"].data == before.results["b"].data
    with pytest.raises(UnknownStep):
        client.execute_step(eid, "nope")


def test_execute_step_says_why_a_step_cannot_run_on_its_own(client: Client) -> None:
    spec = wf("probe-kinds", step("w", "wait"))
    spec["steps"][0]["config"] = {"seconds": 0}
    branches = [{"otherwise": []}]
    spec["steps"].append(
        {"name": "d", "type": "decision", "dependencies": ["w"], "config": {"branches": branches}}
    )
    eid = client.start_workflow(spec).id
    assert client.wait(eid, timeout=WAIT).status == "completed"
    with pytest.raises(IllegalTransition, match="'w' is a wait step, which the coordinator keeps"):
        client.execute_step(eid, "w")
    with pytest.raises(IllegalTransition, match="'d' is a decision step, which the coordinator"):
        client.execute_step(eid, "d")


def test_execute_step_that_overruns_is_cancelled(client: Client) -> None:
    eid = client.start_workflow(wf("probe-hang", step("h", "hang"))).id
    overran = client.execute_step(eid, "h", timeout=1.5)  # a result, not a lost request
    assert overran.status == "timed_out" and overran.error is not None
    assert overran.error.type == "StepTimeout"
    assert overran.error.message == "step 'h' did not finish within 1.5s; it was cancelled"
    client.abort_workflow(eid)
    # both the probe's and the execution's hung steps were cancelled: the workers serve again
    final = client.wait(client.start_workflow(wf("after-probe", step("n"))).id, timeout=WAIT)
    assert final.status == "completed"


def test_a_step_s_input_travels_once_and_an_oversized_run_frame_names_the_cap(
    short_dir: Path,
) -> None:
    """A run frame holds the step's input once: with a 1 MiB cap, a 400 KB input passes
    along a chain (the workflow's inputs and one dependency's output: ~800 KB per frame,
    ~1.2 MB when the input was sent a third time), and a join of two such outputs, over
    the cap, fails with an error that names it. The executions' whole records are over
    the cap too: the node does not send them, and the client rebuilds them from their
    events, read in pages."""
    settings = {"workers": 1, "worker_slots": 2, "max_frame_bytes": 1 << 20}
    config = load_node_config(None, data_dir=short_dir / "var", **settings)
    blob = {"text": "x" * 400_000}
    chain = wf("c", step("a"), step("b", "noop", "a"), step("c", "noop", "b"))
    join = wf("j", step("a"), step("b"), step("ab", "noop", "a", "b"))
    with Node(config) as node, Client(node.config.control_address, timeout=WAIT) as client:
        done = _ended(client, client.start_workflow(chain, blob).id)
        failed = _ended(client, client.start_workflow(join, blob).id)
        assert done.status == "completed" and failed.status == "failed"
        events = []
        while not events or events[-1].type != "workflow.failed":
            events += client.get_events(failed.id, from_seq=len(events) + 1, limit=1)
        whole = client.get_workflow(done.id)
        waited = client.wait(failed.id, timeout=WAIT)
        listed = client.list_summaries()  # a summary lists where the record cannot
        records = client.list_workflows()  # rebuilt from their events, as 'get' is
        raw = client.request
        with pytest.raises(FrameTooLarge, match=r"reply to 'get' is .* over the 1,048,576"):
            raw("get", {"id": done.id})
    assert [(s.id, s.status.value, s.seq) for s in listed] == [
        (done.id, "completed", done.seq),
        (failed.id, "failed", failed.seq),
    ]
    assert (whole.status, whole.context, whole.seq) == ("completed", blob, done.seq)
    assert [r.model_dump() for r in records] == [whole.model_dump(), waited.model_dump()]
    assert [whole.results[s].data for s in "abc"] == [blob] * 3
    assert waited.status == "failed" and waited.seq == failed.seq
    assert waited.results["a"].data == waited.results["b"].data == blob
    error = next(e.data["error"] for e in events if e.type == "step.failed")
    assert waited.results["ab"].error is not None
    assert waited.results["ab"].error.message == error["message"]
    assert error["type"] == "FrameTooLarge"
    assert "over the 1,048,576-byte cap (max_frame_bytes)" in error["message"]


def test_starts_whose_records_alone_are_over_the_cap_come_back_whole(short_dir: Path) -> None:
    """A node with a smaller frame cap than its client, and a workflow of 200 steps: a
    batch of more than one start is over half the cap (refused, then halved down to one
    start), the reply to one start goes compact, and its 'get' is over the cap as well (a
    record of 200 results): the client rebuilds each record from the execution's events."""
    settings = {"workers": 1, "worker_slots": 4, "max_frame_bytes": 12 << 10}
    config = load_node_config(None, data_dir=short_dir / "var", **settings)
    wide = wf("wider", *(step(f"s{i:03d}") for i in range(200)))
    with Node(config) as node, Client(node.config.control_address, timeout=WAIT) as client:
        started = client.start_workflows(wide, ({"n": i} for i in range(3)))
        assert [e.context for e in started] == [{"n": i} for i in range(3)]
        assert all(len(e.results) == 200 and e.seq >= 2 for e in started)
        with pytest.raises(FrameTooLarge, match=r"reply to 'get' is .* over the 12,288"):
            client.request("get", {"id": started[0].id})
        ended = [client.wait(e.id, timeout=WAIT) for e in started]
    assert [e.status for e in ended] == ["completed"] * 3
    assert all(r.data == {"n": i} for i, e in enumerate(ended) for r in e.results.values())


def test_starts_whose_records_are_over_a_small_cap_come_back_whole(short_dir: Path) -> None:
    """A node with a smaller frame cap than its client: the client's first batch (51
    starts, by its estimate of the records' size) is more than one reply holds (refused
    before anything starts, then sent as two halves), and the records of every batch, 30
    steps each, are over the cap together: the node answers each start compact and the
    client reads the records one by one."""
    settings = {"workers": 1, "worker_slots": 4, "max_frame_bytes": 12 << 10}
    config = load_node_config(None, data_dir=short_dir / "var", **settings)
    wide = wf("wide", *(step(f"s{i:02d}") for i in range(30)))
    with Node(config) as node, Client(node.config.control_address, timeout=WAIT) as client:
        ops: list[str] = []
        exchange = client.exchange_many

        def counted(op: str, args_list: Any, **kw: Any) -> Any:
            args_list = list(args_list)
            ops.extend([op] * len(args_list))
            return exchange(op, args_list, **kw)

        client.exchange_many = counted  # type: ignore[method-assign]
        started = client.start_workflows(wide, ({"n": i} for i in range(60)))
        assert [e.context for e in started] == [{"n": i} for i in range(60)]
        assert all(set(e.results) == {f"s{i:02d}" for i in range(30)} for e in started)
        assert ops == ["start_many"] * 2 + ["start_many"] * 2 + ["get"] * 60
        assert len(client.list_workflows({"limit": 100})) == 60  # each started once
        assert {client.wait(e.id, timeout=WAIT).status.value for e in started} == {"completed"}
        # a request over the node's cap (within twice it) is answered, naming the cap
        with pytest.raises(FrameTooLarge, match=r"request of \d+ bytes exceeds the 12288-byte cap"):
            client.start_workflow(wide, {"pad": "x" * 15_000})
        assert len(client.list_workflows({"limit": 100})) == 60


def test_a_list_rebuilds_a_record_over_the_cap_and_goes_on(
    short_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``Client.list_workflows`` where one record alone is over the node's frame cap (each
    of its events is not): the summary at its place names it, its record is rebuilt from
    its events, and the pages after it are whole pages again."""
    monkeypatch.setattr(client_module, "LIST_PAGE", 4)
    cap = 8192
    settings = {"workers": 1, "worker_slots": 2, "max_frame_bytes": cap}
    config = load_node_config(None, data_dir=short_dir / "var", **settings)
    chain = wf("c", step("a"), step("b", "noop", "a"), step("c", "noop", "b"))
    pad = {"pad": "x" * 3000}  # the context and each step's output: ~12 KB of record
    address = config.control_address
    with Node(config), Client(address, timeout=WAIT, max_frame_bytes=cap) as client:
        ids = [client.start_workflow(chain, inputs).id for inputs in ({}, pad, {}, {}, {})]
        assert {_ended(client, eid).status.value for eid in ids} == {"completed"}
        with pytest.raises(FrameTooLarge):
            client.request("get", {"id": ids[1]})
        asked: list[tuple[str, Any, Any]] = []
        ask = client.request

        def counted(op: str, args: Any, **kw: Any) -> Any:
            asked.append((op, args.get("view"), args.get("limit")))
            return ask(op, args, **kw)

        monkeypatch.setattr(client, "request", counted)
        listed = client.list_workflows()
        summaries = client.list_summaries()
    assert [e.id for e in listed] == ids
    big = listed[1]
    assert (big.status, big.context, big.seq) == ("completed", pad, summaries[1].seq)
    assert [big.results[s].data for s in "abc"] == [pad] * 3
    lists = [(view, limit) for op, view, limit in asked if op == "list"]
    # 4, 2, 1 (the first), 1 (over the cap), its summary, then a whole page for the rest
    assert lists[:6] == [(None, 4), (None, 2), (None, 1), (None, 1), ("summary", 1), (None, 4)]
    assert any(op == "events" for op, _, _ in asked)


@pytest.mark.parametrize("after", [2, 0])
def test_a_list_passes_over_a_record_deleted_while_it_is_rebuilt(
    short_dir: Path, monkeypatch: pytest.MonkeyPatch, after: int
) -> None:
    """An execution over the cap deleted by ``admin cleanup`` between its summary and its
    events: the list takes the execution now at that place (if any: ``after`` come after
    it) and goes on to the end, instead of failing on the one that is gone or stopping
    short."""
    monkeypatch.setattr(client_module, "LIST_PAGE", 4)
    cap = 8192
    settings = {"workers": 1, "worker_slots": 4, "max_frame_bytes": cap}
    config = load_node_config(None, data_dir=short_dir / "var", **settings)
    chain = wf("c", step("a"), step("b", "noop", "a"), step("c", "noop", "b"))
    parked = wf("p", step("w", "wait", config={"seconds": 600}))
    pad = {"pad": "x" * 3000}
    address = config.control_address
    with (
        Node(config),
        Client(address, timeout=WAIT, max_frame_bytes=cap) as client,
        Client(address, timeout=WAIT) as admin,
    ):
        waiting = [client.start_workflow(parked, {"n": 0}).id]
        big = client.start_workflow(chain, pad).id
        assert _ended(client, big).status.value == "completed"
        waiting += [client.start_workflow(parked, {"n": n + 1}).id for n in range(after)]
        asked: list[tuple[str, Any]] = []
        ask = client.request

        def deleting(op: str, args: Any, **kw: Any) -> Any:
            asked.append((op, args.get("view")))
            found = ask(op, args, **kw)
            summary = (op, args.get("view")) == ("list", "summary")
            if summary and found and found[0]["id"] == big:
                time.sleep(0.01)  # past the tiny retention below
                assert admin.admin_cleanup(1e-7)["deleted"] == [big]
            return found

        monkeypatch.setattr(client, "request", deleting)
        listed = client.list_workflows()
    assert [e.id for e in listed] == waiting
    # the big one's summary, then (its events gone) the summary now at its place
    assert [view for op, view in asked if op == "list"].count("summary") == 2
    assert {e.status.value for e in listed} == {"running"}


def _ended(client: Client, eid: str) -> WorkflowStatusInfo:
    deadline = time.monotonic() + WAIT
    while not is_terminal_execution((status := client.get_workflow_status(eid)).status):
        assert time.monotonic() < deadline, status
        time.sleep(0.02)
    return status


def test_a_long_list_comes_in_pages_and_no_reply_is_over_the_cap(
    short_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``Client.list_workflows`` pages through the executions, with smaller pages while
    a page's reply is over the frame cap; the node refuses a reply over the cap, and a
    'list' without a limit that matches more than ``LIST_MOST``, with errors naming why."""
    monkeypatch.setattr(client_module, "LIST_PAGE", 8)
    monkeypatch.setattr(control_module, "LIST_MOST", 10)
    cap = 8192  # ~1.3 KB per record below: 8 of them are over it, 4 are not
    settings = {"workers": 1, "worker_slots": 2, "max_frame_bytes": cap}
    config = load_node_config(None, data_dir=short_dir / "var", **settings)
    inputs = ({"n": i, "pad": "x" * 700} for i in range(30))
    address = config.control_address
    with Node(config), Client(address, timeout=WAIT, max_frame_bytes=cap) as client:
        ids = [e.id for e in client.start_workflows(wf("one", step("a")), inputs)]
        assert all(client.wait(eid, timeout=WAIT).status == "completed" for eid in ids)
        pages: list[int] = []
        ask = client.request

        def counted(op: str, args: Any, **kw: Any) -> Any:
            pages.append(args.get("limit") if op in ("list", "events") else -1)
            return ask(op, args, **kw)

        monkeypatch.setattr(client, "request", counted)
        assert [e.id for e in client.list_workflows()] == ids  # oldest first, all
        assert pages[0] == 8 and set(pages[1:]) == {4}  # 8 were over the cap: halved
        pages.clear()
        assert [s.id for s in client.list_summaries()] == ids
        assert set(pages) == {8}  # 8 summaries fit where 8 records did not
        one = len(pack(client.request("list", {"limit": 1})))
        assert 8 * one > cap > 4 * one
        assert [e.id for e in client.list_workflows({"offset": 5, "limit": 12})] == ids[5:17]
        with pytest.raises(
            FrameTooLarge, match="more than 10 executions match, and one 'list' reply"
        ):
            client.request("list", {})
        with pytest.raises(FrameTooLarge, match=r"reply to 'list' is .* over the 8,192-byte"):
            client.request("list", {"limit": 10})
        chain = wf("chain", step("a"), step("b", "noop", "a"), step("c", "noop", "b"))
        eid = client.start_workflow(chain).id
        assert client.wait(eid, timeout=WAIT).status == "completed"
        pages.clear()
        events = client.get_events(eid)  # more than LIST_MOST, in pages of 8
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        assert len(events) > 10 and events[-1].type == "workflow.completed"
        assert pages[: len(events) // 8 + 1] == [8] * (len(events) // 8 + 1)
        assert [e.seq for e in client.get_events(eid, from_seq=3, limit=9)] == list(range(3, 12))
        with pytest.raises(FrameTooLarge, match="more than 10 events from there on"):
            client.request("events", {"id": eid})
        assert len(client.request("events", {"id": eid, "from_seq": len(events) - 9})) == 10
        assert client.health()["status"] == "ok"


def test_each_execution_s_events_reach_a_subscriber_in_order_under_load(
    client: Client, node: Node
) -> None:
    """Thirty chains commit and publish at once: each execution's events come in order,
    none twice, its end last."""
    ctx: zmq.Context[Any] = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.RCVHWM, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(node.config.events_address)
    try:
        deadline = time.monotonic() + WAIT
        while not sub.poll(50):  # the slow joiner: until one event arrives
            assert time.monotonic() < deadline, "no event reached the subscriber"
            client.start_workflow(wf("probe", step("a")))
        while sub.poll(200):
            sub.recv_multipart()
        chain = wf(
            "order", *(step(f"s{i}", "noop", *([f"s{i - 1}"] if i else [])) for i in range(5))
        )
        ids = {e.id for e in client.start_workflows(chain, ({"n": i} for i in range(30)))}
        seqs: dict[str, list[int]] = {eid: [] for eid in ids}
        ended: set[str] = set()
        deadline = time.monotonic() + WAIT
        while ended != ids:
            assert time.monotonic() < deadline, f"{len(ids - ended)} executions not seen ending"
            if not sub.poll(100):
                continue
            event = unpack(sub.recv_multipart()[1])
            if event["execution_id"] in seqs:
                seqs[event["execution_id"]].append(event["seq"])
                if event["type"] == "workflow.completed":
                    ended.add(event["execution_id"])
    finally:
        sub.close(linger=0)
        ctx.term()
    for eid, got in seqs.items():
        assert got == sorted(got) and len(set(got)) == len(got), (eid, got)
        assert got[-1] == max(got)  # workflow.completed came last
    assert sum(len(got) for got in seqs.values()) >= 30 * (3 + 5 * 4)


def test_a_node_that_cannot_bind_fails_its_start_and_stops_what_it_started(
    short_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The events socket binds before the worker pool spawns its workers, the control
    socket after: either refusal stops the store writer process and the workers again."""
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        taken = f"tcp://127.0.0.1:{busy.getsockname()[1]}"
        for setting in ("events_endpoint", "control_endpoint"):
            settings: dict[str, Any] = {"workers": 1, "insecure_tcp": True, setting: taken}
            node = Node(load_node_config(None, data_dir=short_dir / "var", **settings))
            with pytest.raises(TransportError) as refused:
                node.start()
            assert str(refused.value) == f"{setting} '{taken}': cannot bind: Address already in use"
            left = {p.pid for p in psutil.Process().children(recursive=True)} - before
            assert left == set(), setting
    # it was four "Unhandled exception" tracebacks (restarts), then "node up"
    assert "Unhandled exception" not in caplog.text and "node up" not in caplog.text
    with Node(load_node_config(None, data_dir=short_dir / "var", workers=0)):
        pass  # the data directory's lock was let go
