"""WorkflowEngine: the story's IWorkflowEngine in process, over a real node (LMDB, workers)."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import pytest

from tamma_actors import (
    Client,
    ExecutionExists,
    ExecutionStatus,
    IllegalTransition,
    NodeConfig,
    ProtocolError,
    StepStatus,
    SupervisionError,
    UnknownExecution,
    WorkflowConfig,
    WorkflowEngine,
    load_node_config,
)

pytestmark = pytest.mark.integration

WAIT = 60.0
SETTINGS: dict[str, Any] = {"workers": 1, "worker_slots": 4, "heartbeat_interval": 0.2}


def chain(name: str = "chain") -> dict[str, Any]:
    return {
        "name": name,
        "steps": [
            {"name": "a", "implementation": "noop"},
            {
                "name": "b",
                "implementation": "echo",
                "config": {"message": "hi"},
                "dependencies": ["a"],
            },
        ],
    }


def test_the_whole_interface_over_one_node(short_dir: Path) -> None:
    engine = WorkflowEngine(timeout=WAIT)
    with pytest.raises(SupervisionError, match="not initialized"):
        engine.get_workflow("x")
    engine.initialize({**SETTINGS, "data_dir": short_dir / "var"})
    with engine:
        with pytest.raises(SupervisionError, match="already initialized"):
            engine.initialize()
        started = engine.start_workflow(chain(), {"topic": "t"})
        assert started.status in (ExecutionStatus.PENDING, ExecutionStatus.RUNNING)
        done = engine.wait(started.id, timeout=WAIT)
        assert done.status is ExecutionStatus.COMPLETED
        assert done.results["a"].data == {"topic": "t"}
        assert done.results["b"].data == "hi"

        status = engine.get_workflow_status(started.id)
        assert status.steps == {"a": StepStatus.SUCCEEDED, "b": StepStatus.SUCCEEDED}
        types = [e.type for e in engine.get_events(started.id)]
        assert types[0] == "workflow.created" and types[-1] == "workflow.completed"
        assert engine.get_events(started.id, from_seq=3)[0].seq == 3

        probe = engine.execute_step(started.id, "a", {"probe": True})
        assert (probe.status, probe.data) == (StepStatus.SUCCEEDED, {"probe": True})

        hung = engine.start_workflow(
            WorkflowConfig.model_validate(
                {"name": "hung", "steps": [{"name": "h", "implementation": "hang"}]}
            )
        )
        assert engine.pause_workflow(hung.id).status is ExecutionStatus.PAUSED
        assert engine.resume_workflow(hung.id).status is ExecutionStatus.RUNNING
        aborted = engine.abort_workflow(hung.id, "enough")
        assert (aborted.status, aborted.reason) == (ExecutionStatus.ABORTED, "enough")
        with pytest.raises(IllegalTransition):
            engine.retry_step(hung.id, "h")

        chosen = engine.start_workflow(chain("chosen"), {"n": 1}, execution_id="job-1")
        assert engine.start_workflow(chain("chosen"), {"n": 1}, execution_id="job-1").id == (
            chosen.id
        )
        assert engine.wait("job-1", timeout=WAIT).status is ExecutionStatus.COMPLETED
        with pytest.raises(ExecutionExists):
            engine.start_workflow(chain("other"), {"n": 1}, execution_id="job-1")
        with pytest.raises(ProtocolError, match="invalid execution id 'no/slash'"):
            engine.start_workflow(chain("chosen"), execution_id="no/slash")
        # inputs and a context are taken as a client would send them: what cannot be sent
        # (it could not be stored either) is refused, and nothing is started
        for inputs, why in [
            ({"due": datetime.date(2026, 12, 1)}, "can not serialize 'datetime.date'"),
            ({1: "x"}, r"inputs\.1\.\[key\]: Input should be a valid string$"),
        ]:
            with pytest.raises(ProtocolError, match=rf"invalid inputs: .*{why}"):
                engine.start_workflow(chain("unsent"), inputs)
        with pytest.raises(ProtocolError, match=r"invalid context: .*'set'"):
            engine.execute_step(chosen.id, "a", {"s": {1}})
        as_sent = engine.start_workflow(chain("sent"), {"pair": (1, 2)}, execution_id="job-2")
        assert as_sent.context == {"pair": [1, 2]}  # as the store gives it back
        assert engine.wait("job-2", timeout=WAIT).status is ExecutionStatus.COMPLETED

        listed = engine.list_workflows({"status": "completed"})
        assert sorted(e.id for e in listed) == sorted([started.id, "job-1", "job-2"])
        assert len(engine.list_workflows()) == 4
        summaries = engine.list_summaries({"status": "completed"})
        assert [s.id for s in summaries] == [e.id for e in listed]
        assert all(s.status is ExecutionStatus.COMPLETED and s.end_time for s in summaries)
        assert engine.list_workflows({"limit": 0}) == []
        with pytest.raises(ProtocolError, match="invalid workflow filter"):
            engine.list_workflows({"limit": -1})
        with pytest.raises(UnknownExecution):
            engine.get_workflow("missing")
        assert engine.health()["status"] == "ok"

        # the embedded node also serves the control socket
        with Client(engine.node.config.control_address, timeout=WAIT) as client:
            assert client.get_workflow(started.id).status is ExecutionStatus.COMPLETED
    engine.shutdown()  # idempotent
    with pytest.raises(SupervisionError):
        engine.health()


def test_initialize_from_a_config_object_or_a_file(short_dir: Path) -> None:
    cfg = load_node_config(None, data_dir=short_dir / "one", **SETTINGS)
    with WorkflowEngine() as engine:
        engine.initialize(cfg, workers=1)
        assert isinstance(engine.node.config, NodeConfig)
        assert engine.node.config.data_dir == short_dir / "one"
    path = short_dir / "node.toml"
    path.write_text(f'data_dir = "{short_dir / "two"}"\nworkers = 1\n')
    with WorkflowEngine() as engine:
        engine.initialize(path, worker_slots=2)
        assert engine.node.config.worker_slots == 2
        run = engine.start_workflow(chain("from-file"))
        assert engine.wait(run.id, timeout=WAIT).status is ExecutionStatus.COMPLETED
