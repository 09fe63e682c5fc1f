"""Timeouts, wait steps, circuit breakers, error policies and explain on a real node.

Real worker processes, real ZeroMQ sockets, LMDB on disk; the node runs in the test
process (its workers are child processes it starts and stops).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from tamma_actors import Client
from tamma_actors._cli import main
from tamma_actors._codec import unpack
from tamma_actors._config import NodeConfig, load_node_config
from tamma_actors._models import WorkflowEvent
from tamma_actors._node import Node

pytestmark = pytest.mark.integration

WAIT = 60.0
TESTS_DIR = str(Path(__file__).resolve().parents[1])


def node_config(data_dir: Path, **extra: Any) -> NodeConfig:
    settings: dict[str, Any] = {
        "data_dir": data_dir,
        "workers": 2,
        "worker_slots": 4,
        "heartbeat_interval": 0.2,
        "heartbeat_timeout": 2.0,
        "cancel_grace": 0.5,
    }
    settings.update(extra)
    return load_node_config(None, **settings)


@pytest.fixture
def node(short_dir: Path) -> Iterator[Node]:
    with Node(node_config(short_dir / "var")) as n:
        yield n


def wf(name: str, *steps: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"name": name, "steps": list(steps), **extra}


def step(name: str, impl: str, *deps: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "implementation": impl, "dependencies": list(deps), **extra}


def test_a_hung_step_times_out_its_worker_is_replaced_and_a_bystander_keeps_its_attempt(
    short_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # one worker, two slots: the hung step and the bystander share a process
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([TESTS_DIR, *sys.path]))
    cfg = node_config(
        short_dir / "var",
        workers=1,
        worker_slots=2,
        plugins={"stubborn": "plugins_for_tests:stubborn"},
    )
    with Node(cfg) as n, Client(cfg.control_address, timeout=WAIT) as c:
        before = c.health()["workers"]["local_pids"]
        spec = wf(
            "hung",
            step("bystander", "sleep", config={"seconds": 2.0}),
            step(
                "hung",
                "stubborn",
                config={"seconds": 3600},
                timeout=0.5,
                retry_policy={"max_attempts": 1},
            ),
            error_handling="continue",
        )
        final = c.wait(c.start_workflow(spec).id, timeout=WAIT)
        assert final.status == "failed"
        hung, bystander = final.results["hung"], final.results["bystander"]
        assert hung.status == "failed" and hung.error is not None
        assert hung.error.type == "StepTimeout" and "within 0.5s" in hung.error.message
        assert bystander.status == "succeeded" and bystander.attempts == 1
        types = [e.type for e in c.get_events(final.id)]
        assert "step.timed_out" in types and "step.redispatched" in types
        after = c.health()["workers"]["local_pids"]
        assert after and set(after).isdisjoint(before)  # the stuck process was replaced
        assert n.engine.live_count == 0


def test_wait_steps_pause_and_explain_on_a_real_node(client: Client, node: Node) -> None:
    spec = wf("napper", step("nap", "wait", config={"seconds": 30}), step("after", "noop", "nap"))
    eid = client.start_workflow(spec).id
    report = client.explain(eid)
    assert report["steps"]["nap"]["waiting_for"].startswith("wait step: until")
    assert report["steps"]["after"]["waiting_for"] == "dependencies: nap (running)"
    assert client.health()["workers"]["running"] == 0  # a wait step takes no worker slot
    client.pause_workflow(eid)
    report = client.explain(eid)
    assert report["summary"].startswith("paused by request")
    assert "frozen by pause" in report["steps"]["nap"]["waiting_for"]
    client.resume_workflow(eid)
    quick = client.start_workflow(wf("quick", step("nap", "wait", config={"seconds": 0.2})))
    assert client.wait(quick.id, timeout=WAIT).results["nap"].data == {"waited_s": 0.2}
    assert main(["--data-dir", str(node.config.data_dir), "--json", "explain", eid]) == 0
    final = client.abort_workflow(eid, "no more napping")
    assert final.status == "aborted"


def test_a_waiting_execution_rests_on_a_real_node_and_wakes_when_due(short_dir: Path) -> None:
    cfg = node_config(short_dir / "var", rest_after=0)  # rest however soon the wait ends
    napper = wf("napper", step("nap", "wait", config={"seconds": 3}), step("after", "noop", "nap"))
    with Node(cfg), Client(cfg.control_address, timeout=WAIT) as client:
        eid = client.start_workflow(napper).id
        deadline = time.monotonic() + WAIT
        while client.health()["executions"] != {"live": 0, "resting": 1}:
            assert time.monotonic() < deadline, client.health()["executions"]
            time.sleep(0.02)
        assert client.get_workflow_status(eid).steps["nap"] == "running"  # the store's
        final = client.wait(eid, timeout=WAIT)
        assert final.status == "completed" and final.results["nap"].data == {"waited_s": 3.0}
        # the supervisor is retired by an effect of the end's commit, after its replies
        deadline = time.monotonic() + WAIT
        while client.health()["executions"] != {"live": 0, "resting": 0}:
            assert time.monotonic() < deadline, client.health()["executions"]
            time.sleep(0.02)


def test_explain_on_the_command_line(
    client: Client, node: Node, capsys: pytest.CaptureFixture[str]
) -> None:
    eid = client.start_workflow(wf("cli", step("nap", "wait", config={"seconds": 30}))).id
    capsys.readouterr()
    assert main(["--data-dir", str(node.config.data_dir), "--json", "explain", eid]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["status"] == "running" and "summary" in report
    assert main(["--data-dir", str(node.config.data_dir), "explain", eid]) == 0
    text = capsys.readouterr().out
    assert eid in text and "wait step: until" in text
    client.abort_workflow(eid)


def test_status_shows_a_compensation_under_way(
    client: Client, node: Node, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = wf(
        "undoing",
        step("a", "noop", compensation="undo"),
        step("b", "fail", "a", config={"times": 5, "retryable": False}),
        step("undo", "sleep", config={"seconds": 30}),
        error_handling="compensate",
    )
    eid = client.start_workflow(spec).id
    deadline = time.monotonic() + WAIT
    while (status := client.get_workflow_status(eid)).compensations[:1] != [
        {"step": "a", "implementation": "undo", "status": "running"}
    ]:
        assert time.monotonic() < deadline, status
        time.sleep(0.02)
    assert status.waiting == {"a": "compensation 'undo': running"}
    capsys.readouterr()
    assert main(["--data-dir", str(node.config.data_dir), "status", eid]) == 0
    text = capsys.readouterr().out
    assert "0 of 1 done; undoing 'a' now" in text and "compensation 'undo': running" in text
    client.abort_workflow(eid)
    final = client.get_workflow_status(eid)
    assert final.waiting == {} and final.compensations[0]["status"] == "cancelled"
    assert main(["--data-dir", str(node.config.data_dir), "status", eid]) == 0
    assert "1 of 1 done (1 did not succeed)" in capsys.readouterr().out


class Events:
    """A SUB socket on the node's event endpoint (breaker.* and workflow.failed)."""

    def __init__(self, cfg: NodeConfig) -> None:
        self.ctx: zmq.Context[Any] = zmq.Context()
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        for prefix in (b"breaker.", b"workflow.failed"):
            self.sub.setsockopt(zmq.SUBSCRIBE, prefix)
        self.sub.connect(cfg.events_address)

    def __enter__(self) -> Events:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sub.close(linger=0)
        self.ctx.term()

    def warm_up(self, client: Client) -> None:
        """Until a failure of a breaker-free workflow is seen, the subscription may not be
        live yet (ZeroMQ's slow joiner): fail one, bounded, until its event arrives."""
        once = {"max_attempts": 1}
        unguarded = wf("warm-up", step("x", "fail", config={"times": 9}, retry_policy=once))
        for _ in range(10):
            client.wait(client.start_workflow(unguarded).id, timeout=WAIT)
            try:
                self.expect("workflow.failed", timeout=1.0)
                return
            except AssertionError:
                continue
        raise AssertionError("the event subscription never became live")

    def expect(self, etype: str, timeout: float = 10.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if self.sub.poll(int(left * 1000)):
                event: dict[str, Any] = unpack(self.sub.recv_multipart()[-1])
                if event["type"] == etype:
                    return event
        raise AssertionError(f"no {etype} event within {timeout}s")


def test_a_breaker_opens_holds_the_queue_and_survives_a_node_restart(short_dir: Path) -> None:
    cfg = node_config(short_dir / "var")
    breaker = {"failure_threshold": 2, "reset_timeout": "3s", "half_open_max_calls": 1}

    def spec(times: int) -> dict[str, Any]:
        call = step("call", "fail", config={"times": times}, retry_policy={"max_attempts": 1})
        return wf("guarded", call, circuit_breaker=breaker)

    with Node(cfg), Client(cfg.control_address, timeout=WAIT) as c, Events(cfg) as events:
        events.warm_up(c)
        for _ in range(2):
            assert c.wait(c.start_workflow(spec(5)).id, timeout=WAIT).status == "failed"
        opened = c.health()["breakers"]["fail"]
        assert opened["phase"] == "open" and opened["failures"] == 2
        announced = events.expect("breaker.opened")
        assert announced["data"]["breaker"] == "fail" and announced["seq"] == 0
        assert WorkflowEvent.model_validate(announced).type == "breaker.opened"
        held = c.start_workflow(spec(0)).id
        status = c.get_workflow_status(held)
        assert status.waiting == {"call": "breaker fail"}
        assert status.steps["call"] == "ready"
        assert c.explain(held)["steps"]["call"]["waiting_for"].startswith("breaker fail open")
    with Node(cfg) as n, Client(cfg.control_address, timeout=WAIT) as c:
        assert n.recovered == 1
        state = c.health()["breakers"]["fail"]
        assert state["opened_at"] == opened["opened_at"]  # the store kept it
        final = c.wait(held, timeout=WAIT)  # half-opens; the held step is the probe
        assert final.status == "completed" and final.results["call"].attempts == 1
        assert c.health()["breakers"]["fail"]["phase"] == "closed"
        types = [e.type for e in c.get_events(held)]
        assert "step.held" in types and types.count("step.dispatched") == 1


@pytest.mark.parametrize("policy", ["fail_fast", "continue", "compensate"])
def test_each_error_policy_on_a_real_node(client: Client, policy: str) -> None:
    spec = wf(
        f"policy-{policy}",
        step("prepare", "echo", config={"message": "prepared"}, compensation="noop"),
        step("bad", "fail", "prepare", config={"times": 9}, retry_policy={"max_attempts": 1}),
        step("side", "sleep", config={"seconds": 0.5}),
        step("after_side", "noop", "side"),
        error_handling=policy,
    )
    final = client.wait(client.start_workflow(spec).id, timeout=WAIT)
    assert final.status == "failed" and final.error is not None
    assert final.error.step == "bad"
    res = {name: r.status for name, r in final.results.items()}
    if policy == "continue":
        assert res["side"] == "succeeded" and res["after_side"] == "succeeded"
    else:
        assert res["after_side"] == "cancelled"
    record = client.get_workflow(final.id)
    assert record.error is not None and record.error.failed_steps == ["bad"]
    types = [e.type for e in client.get_events(final.id)]
    if policy == "compensate":
        assert types.count("compensation.completed") == 1
        [undone] = record.error.compensations  # the client's model keeps them
        assert (undone.step, undone.implementation) == ("prepare", "noop")
        assert (undone.status, undone.output) == ("succeeded", "prepared")
    else:
        assert "workflow.compensating" not in types and record.error.compensations == []


def test_a_compensation_that_kills_its_worker_fails_after_three_losses(client: Client) -> None:
    spec = wf(
        "undo-crashes",
        step("prepare", "noop", compensation="boom"),
        step("bad", "fail", "prepare", config={"times": 9}),
        step("boom", "crash", config={"times": 99}),  # kills every worker that runs it
        error_handling="compensate",
        retry_policy={"max_attempts": 1},
    )
    final = client.wait(client.start_workflow(spec).id, timeout=WAIT)
    assert final.status == "failed" and final.error is not None
    [undo] = final.error.compensations
    assert (undo.step, undo.status) == ("prepare", "failed")
    assert undo.error is not None and undo.error["type"] == "WorkerLost"
    assert "lost 3 times" in undo.error["message"]
    # not sent again: its cancel reaches the pool just after the end is committed (a
    # compensation sent for ever was always queued or running)
    deadline = time.monotonic() + WAIT
    while (workers := client.health()["workers"])["queued"] or workers["running"]:
        assert time.monotonic() < deadline, f"the compensation was sent again: {workers}"
        time.sleep(0.05)


def test_a_hanging_compensation_times_out_by_its_template_step(client: Client) -> None:
    spec = wf(
        "undo-hangs",
        step("prepare", "noop", compensation="stuck"),
        step("bad", "fail", "prepare", config={"times": 9}),
        step("stuck", "hang", timeout=1),
        error_handling="compensate",
        retry_policy={"max_attempts": 1},
    )
    final = client.wait(client.start_workflow(spec).id, timeout=WAIT)
    assert final.status == "failed" and final.error is not None
    [undo] = final.error.compensations
    assert (undo.status, undo.error and undo.error["type"]) == ("failed", "StepTimeout")
    deadline = time.monotonic() + WAIT  # cancelled on its worker, which then says so
    while client.health()["workers"]["running"]:
        assert time.monotonic() < deadline, "the timed-out compensation kept running"
        time.sleep(0.05)


def test_a_workflow_timeout_under_compensate_undoes_what_completed(client: Client) -> None:
    spec = wf(
        "undo-late",
        step("prepare", "echo", config={"message": "prepared"}, compensation="noop"),
        step("long", "sleep", "prepare", config={"seconds": 60}),
        error_handling="compensate",
        timeout="1s",
    )
    final = client.wait(client.start_workflow(spec).id, timeout=WAIT)
    assert final.status == "failed" and final.error is not None
    assert (final.error.type, final.error.failed_steps) == ("WorkflowTimeout", [])
    [undo] = final.error.compensations
    assert (undo.step, undo.status, undo.output) == ("prepare", "succeeded", "prepared")
    assert final.results["long"].status == "cancelled"


def test_a_wait_step_and_the_workflow_timeout_survive_a_node_restart(short_dir: Path) -> None:
    cfg = node_config(short_dir / "var", workers=1)
    napper = wf("napper", step("nap", "wait", config={"seconds": 2}), step("after", "noop", "nap"))
    doomed = wf("doomed", step("nap", "wait", config={"seconds": 600}), timeout="3s")
    with Node(cfg), Client(cfg.control_address, timeout=WAIT) as c:
        nap_id = c.start_workflow(napper).id
        doomed_id = c.start_workflow(doomed).id
        deadline = c.explain(nap_id)["steps"]["nap"]["waiting_for"]
    with Node(cfg) as n, Client(cfg.control_address, timeout=WAIT) as c:
        assert n.recovered == 2
        assert c.explain(nap_id)["steps"].get("nap", {}).get("waiting_for", deadline) == deadline
        final = c.wait(nap_id, timeout=WAIT)
        assert final.status == "completed" and final.results["nap"].data == {"waited_s": 2.0}
        types = [e.type for e in c.get_events(nap_id)]
        assert types.count("step.started") == 2  # the wait step was never started again
        timed_out = c.wait(doomed_id, timeout=WAIT)
        assert timed_out.status == "failed" and timed_out.error is not None
        assert timed_out.error.type == "WorkflowTimeout"
