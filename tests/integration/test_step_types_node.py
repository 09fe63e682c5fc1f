"""Decision, parallel and subflow steps on a real node: worker processes, ZeroMQ, LMDB."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tamma_actors import Client
from tamma_actors._config import load_node_config
from tamma_actors._errors import UnknownExecution, WorkflowValidationError
from tamma_actors._lmdb_store import LmdbStore
from tamma_actors._node import Node

pytestmark = pytest.mark.integration

WAIT = 60.0
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def node_settings(node_settings: dict[str, Any]) -> dict[str, Any]:
    return {**node_settings, "worker_slots": 8}  # a fan-out keeps many items in flight


def _until(client: Client, eid: str, cond: Any, timeout: float = WAIT) -> Any:
    """Poll the execution's record (bounded) until ``cond(record)`` holds; a subflow's
    child named in its parent's record may not have been started yet: it is waited for."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        try:
            rec = client.get_workflow(eid)
        except UnknownExecution:
            rec = None
        if rec is not None and cond(rec):
            return rec
        assert time.monotonic() < deadline, f"condition not reached: {rec and rec.status}"
        time.sleep(0.02)


def test_a_decision_picks_a_branch_and_a_fan_out_runs_on_real_workers(client: Client) -> None:
    spec = {
        "name": "branch-and-fan",
        "steps": [
            {"name": "src", "implementation": "echo", "config": {"message": [1, 2, 3]}},
            {
                "name": "pick",
                "type": "decision",
                "dependencies": ["src"],
                "config": {
                    "branches": [
                        {"when": "len(steps.src.output) > 2", "then": ["fan"]},
                        {"otherwise": ["small"]},
                    ]
                },
            },
            {
                "name": "fan",
                "type": "parallel",
                "implementation": "noop",
                "dependencies": ["pick", "src"],
                "config": {"items": "steps.src.output", "max_concurrency": 2},
            },
            {"name": "small", "implementation": "noop", "dependencies": ["pick"]},
            {"name": "report", "implementation": "noop", "dependencies": ["fan", "small"]},
        ],
    }
    final = client.wait(client.start_workflow(spec).id, timeout=WAIT)
    assert final.status == "completed", final.error
    res = final.results
    assert res["pick"].data["branch"] == 0 and res["small"].status == "skipped"
    assert res["fan"].data == [1, 2, 3]
    assert res["fan"].detail == {"items": 3, "succeeded": 3}
    assert res["report"].data == {"fan": [1, 2, 3], "small": None}
    types = [e.type for e in client.get_events(final.id)]
    assert types.count("step.item_completed") == 3


def test_two_hundred_items_and_an_empty_list(client: Client) -> None:
    spec = {
        "name": "wide",
        "steps": [
            {
                "name": "many",
                "type": "parallel",
                "implementation": "noop",
                "config": {"items": "inputs.xs"},
            },
            {"name": "none", "type": "parallel", "implementation": "noop", "config": {"items": []}},
        ],
    }
    xs = [{"i": i} for i in range(200)]
    final = client.wait(client.start_workflow(spec, {"xs": xs}).id, timeout=WAIT)
    assert final.status == "completed", final.error
    assert final.results["many"].data == xs
    assert final.results["none"].data == []
    events = client.get_events(final.id)
    assert sum(1 for e in events if e.type == "step.items_dispatched") == 1  # one batch


def test_items_retry_on_their_own_before_the_join(client: Client) -> None:
    spec = {
        "name": "flaky-items",
        "retry_policy": {"max_attempts": 3, "base_delay": 10, "jitter": 0},
        "steps": [
            {
                "name": "fan",
                "type": "parallel",
                "implementation": "fail",
                "config": {"items": [0, 1, 2], "times": 1, "error": "TimeoutError"},
            }
        ],
    }
    final = client.wait(client.start_workflow(spec).id, timeout=WAIT)
    assert final.status == "completed", final.error
    events = client.get_events(final.id)
    retried = sorted(e.data["index"] for e in events if e.type == "step.item_retry_scheduled")
    assert retried == [0, 1, 2]
    assert all(e.data["attempt"] == 2 for e in events if e.type == "step.item_completed")


def test_a_subflow_from_a_file_returns_the_child_results(client: Client, tmp_path: Path) -> None:
    child = {
        "name": "child",
        "steps": [
            {"name": "greet", "implementation": "noop"},
            {
                "name": "shout",
                "implementation": "echo",
                "config": {"message": "HI"},
                "dependencies": ["greet"],
            },
        ],
    }
    (tmp_path / "child.yaml").write_text(yaml.safe_dump(child))
    parent = {
        "name": "parent",
        "steps": [
            {
                "name": "sub",
                "type": "subflow",
                "config": {"workflow": "child.yaml", "inputs": {"topic": "inputs.topic"}},
            },
            {"name": "after", "implementation": "noop", "dependencies": ["sub"]},
        ],
    }
    path = tmp_path / "parent.yaml"
    path.write_text(yaml.safe_dump(parent))
    final = client.wait(client.start_workflow(path, {"topic": "t"}).id, timeout=WAIT)
    assert final.status == "completed", final.error
    assert final.results["sub"].data == {"greet": {"topic": "t"}, "shout": "HI"}
    assert final.results["after"].data == final.results["sub"].data
    child_ids = [
        e.data["child"] for e in client.get_events(final.id) if e.type == "step.child_started"
    ]
    assert len(child_ids) == 1
    assert client.get_workflow(child_ids[0]).status == "completed"


def test_pause_and_abort_reach_a_subflow_child(client: Client, tmp_path: Path) -> None:
    child = {
        "name": "slow-child",
        "steps": [
            {"name": "nap", "implementation": "sleep", "config": {"seconds": 0.3}},
            {"name": "stuck", "implementation": "hang", "dependencies": ["nap"]},
        ],
    }
    (tmp_path / "child.yaml").write_text(yaml.safe_dump(child))
    parent = {
        "name": "parent",
        "steps": [
            {"name": "sub", "type": "subflow", "config": {"workflow": str(tmp_path / "child.yaml")}}
        ],
    }
    eid = client.start_workflow(parent).id
    rec = _until(client, eid, lambda r: r.results["sub"].status == "running")
    child_id = next(
        e.data["child"] for e in client.get_events(eid) if e.type == "step.child_started"
    )
    assert rec.status == "running"
    client.pause_workflow(eid)
    child_rec = _until(client, child_id, lambda r: r.status == "paused")
    # the running step finishes, the next one is not dispatched while paused
    child_rec = _until(client, child_id, lambda r: r.results["nap"].status == "succeeded")
    assert child_rec.results["stuck"].status == "pending"
    client.resume_workflow(eid)
    _until(client, child_id, lambda r: r.results["stuck"].status == "running")
    aborted = client.abort_workflow(eid, "operator stop")
    assert aborted.status == "aborted" and aborted.results["sub"].status == "cancelled"
    child_rec = _until(client, child_id, lambda r: r.status == "aborted")
    assert child_rec.results["stuck"].status == "cancelled"


def test_pause_holds_a_fan_out_and_abort_cancels_its_items(client: Client) -> None:
    spec = {
        "name": "held-fan",
        "steps": [
            {
                "name": "fan",
                "type": "parallel",
                "implementation": "sleep",
                "config": {"items": [0, 1, 2, 3], "max_concurrency": 2, "seconds": 0.3},
            },
            {"name": "stuck", "implementation": "hang", "dependencies": ["fan"]},
        ],
    }
    eid = client.start_workflow(spec).id
    client.pause_workflow(eid)
    rec = _until(
        client,
        eid,
        lambda r: sum(1 for e in client.get_events(eid) if e.type == "step.item_completed") >= 2,
    )
    assert rec.status == "paused"
    dispatched = [e for e in client.get_events(eid) if e.type == "step.items_dispatched"]
    assert sum(len(e.data["items"]) for e in dispatched) == 2  # nothing new while paused
    client.resume_workflow(eid)
    _until(client, eid, lambda r: r.results["stuck"].status == "running")
    assert len(client.get_workflow(eid).results["fan"].data) == 4
    aborted = client.abort_workflow(eid)
    assert aborted.status == "aborted" and aborted.results["stuck"].status == "cancelled"


def test_the_example_workflows_validate_and_run(client: Client) -> None:
    for name, inputs in (
        ("branching.yaml", {"topic": "bug"}),
        ("fanout.yaml", {"files": ["a.py", "b.py"]}),
        ("parent.yaml", {"topic": "demo"}),
    ):
        final = client.wait(
            client.start_workflow(ROOT / "config" / "workflows" / name, inputs).id, timeout=WAIT
        )
        assert final.status == "completed", (name, final.error)


def test_a_restarted_node_resumes_a_half_done_fan_out(short_dir: Path) -> None:
    def config() -> Any:
        return load_node_config(
            None, data_dir=short_dir / "var", workers=2, heartbeat_interval=0.2, cancel_grace=1.0
        )

    spec = {
        "name": "resumable",
        "steps": [
            {
                "name": "fan",
                "type": "parallel",
                "implementation": "sleep",
                "config": {"items": list(range(6)), "max_concurrency": 2, "seconds": 0.2},
            }
        ],
    }
    with Node(config()) as first, Client(first.config.control_address, timeout=WAIT) as c:
        eid = c.start_workflow(spec).id
        _until(c, eid, lambda r: _completed_items(c, eid) >= 2)
    with LmdbStore(short_dir / "var" / "store") as store:  # what the first node left
        left = [e["type"] for e in store.read_events(eid)]
    assert 2 <= left.count("step.item_completed") < 6  # half done when it stopped
    with Node(config()) as second, Client(second.config.control_address, timeout=WAIT) as c:
        final = c.wait(eid, timeout=WAIT)
        assert final.status == "completed", final.error
        assert final.results["fan"].data == [{"slept": 0.2}] * 6
        events = c.get_events(eid)
    done = [e.data["index"] for e in events if e.type == "step.item_completed"]
    assert sorted(done) == list(range(6))  # every item exactly once: none ran again
    assert any(e.type == "workflow.created" for e in events)


def test_a_subflow_naming_a_fifo_fails_and_the_node_goes_on(client: Client, tmp_path: Path) -> None:
    fifo = tmp_path / "child.yaml"
    os.mkfifo(fifo)  # reading it used to wait for a writer on the writer's callback thread
    parent = {
        "name": "parent",
        "steps": [{"name": "sub", "type": "subflow", "config": {"workflow": str(fifo)}}],
    }
    final = client.wait(client.start_workflow(parent).id, timeout=WAIT)
    assert final.status == "failed"
    assert "is not a regular file" in final.results["sub"].error.message
    after = client.start_workflow(
        {"name": "after", "steps": [{"name": "a", "implementation": "noop"}]}
    )
    assert client.wait(after.id, timeout=WAIT).status == "completed"


@pytest.mark.parametrize("dirs", [True, False], ids=["workflow_dirs", "none"])
def test_a_node_with_tokens_reads_subflow_files_only_from_its_workflow_dirs(
    short_dir: Path, tmp_path: Path, dirs: bool
) -> None:
    flows = tmp_path / "flows"
    flows.mkdir()
    (flows / "child.yaml").write_text(
        yaml.safe_dump({"name": "child", "steps": [{"name": "c", "implementation": "noop"}]})
    )
    (tmp_path / "secret.yaml").write_text("root:hunter2-do-not-leak:20228::\n")  # as /etc/shadow
    (flows / "climber.yaml").write_text(yaml.safe_dump(_subflow_of("../secret.yaml")))
    cfg = load_node_config(
        None,
        data_dir=short_dir / "var",
        workers=1,
        tokens={"op": "operator"},
        workflow_dirs=[flows] if dirs else [],
    )
    expected = "outside the node's workflow_dirs" if dirs else "has tokens and no workflow_dirs"
    with Node(cfg) as node, Client(node.config.control_address, token="op", timeout=WAIT) as c:
        refused = [flows / "child.yaml"] if not dirs else []
        for path in [*refused, tmp_path / "secret.yaml", flows / ".." / "secret.yaml"]:
            with pytest.raises(WorkflowValidationError) as caught:  # at start, nothing runs
                c.start_workflow(_subflow_of(str(path)))
            [problem] = caught.value.problems
            assert problem.loc == "steps[0].config.workflow"
            assert expected in problem.message and "hunter2" not in str(caught.value)
        if dirs:
            inside = c.wait(c.start_workflow(_subflow_of(str(flows / "child.yaml"))).id, WAIT)
            assert inside.status == "completed", inside.error
            # a file inside names one outside: its own start is refused, failing the step
            nested = c.wait(c.start_workflow(_subflow_of(str(flows / "climber.yaml"))).id, WAIT)
            assert nested.status == "failed"
            message = nested.results["sub"].error.message
            assert expected in message and "hunter2" not in message
        started = [(e.workflow_id, e.status) for e in c.list_workflows()]
        ran = [("parent", "completed"), ("child", "completed"), ("parent", "failed")]
        assert started == (ran if dirs else [])  # the climber's own start was refused
        assert c.health()["status"] == "ok"


def _subflow_of(workflow: str) -> dict[str, Any]:
    step = {"name": "sub", "type": "subflow", "config": {"workflow": workflow}}
    return {"name": "parent", "steps": [step]}


def _completed_items(client: Client, eid: str) -> int:
    return _count(client.get_events(eid), "step.item_completed")


def _count(events: list[Any], etype: str) -> int:
    return sum(1 for e in events if e.type == etype)


def test_a_fan_out_whose_outputs_together_are_over_the_cap_fails_and_stays_readable(
    short_dir: Path, node_settings: dict[str, Any]
) -> None:
    # Each item's output fits the node's 256 KiB frames; the eight together do not. Stored
    # as the step's output they would make the execution's events unreadable (no reply can
    # carry that event) and the event unpublishable: the step fails instead.
    settings = {**node_settings, "max_frame_bytes": 256 * 1024}
    spec = {
        "name": "too-much-together",
        "steps": [
            {
                "name": "fan",
                "type": "parallel",
                "implementation": "echo",
                "config": {"items": list(range(8)), "message": "x" * 60_000},
            }
        ],
    }
    config = load_node_config(None, data_dir=short_dir / "var", **settings)
    with Node(config) as node, Client(node.config.control_address, timeout=WAIT) as client:
        final = client.wait(client.start_workflow(spec).id, timeout=WAIT)
        assert final.status == "failed"
        error = final.results["fan"].error
        assert error is not None and error.type == "FrameTooLarge"
        assert error.message.startswith("the output of its 8 items together: more than")
        assert "(the 262,144-byte frame cap, max_frame_bytes," in error.message
        events = client.get_events(final.id)
        assert [e.type for e in events][-2:] == ["step.failed", "workflow.failed"]
        assert sum(e.type == "step.item_completed" for e in events) == 8


def test_items_over_a_big_upstream_list_each_get_it_whole_on_real_workers(
    short_dir: Path, node_settings: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # 400 items taken from the 400-entry output of the step before: each item's context
    # has that list upstream (the node sends it to each worker once, not with each item)
    tests_dir = str(Path(__file__).resolve().parents[1])
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([tests_dir, *sys.path]))
    listing = [f"entry-{i:03}-" + "x" * 90 for i in range(400)]
    spec = {
        "name": "map-over-upstream",
        "steps": [
            {"name": "src", "implementation": "echo", "config": {"message": listing}},
            {
                "name": "fan",
                "type": "parallel",
                "implementation": "sees",
                "dependencies": ["src"],
                "config": {"items": "steps.src.output"},
            },
        ],
    }
    settings = {**node_settings, "plugins": {"sees": "plugins_for_tests:sees_upstream"}}
    config = load_node_config(None, data_dir=short_dir / "var", **settings)
    with Node(config) as node, Client(node.config.control_address, timeout=WAIT) as client:
        final = client.wait(client.start_workflow(spec, {"who": "me"}).id, timeout=WAIT)
        assert final.status == "completed", final.error
        assert final.results["fan"].data == [
            {"item": entry, "index": i, "upstream": 400, "who": "me"}
            for i, entry in enumerate(listing)
        ]
