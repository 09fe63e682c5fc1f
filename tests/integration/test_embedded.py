"""WorkflowEngine: the story's IWorkflowEngine in process, over a real node (LMDB, workers)."""

from __future__ import annotations

import datetime
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tamma_actors import (
    Client,
    ConfigError,
    ExecutionExists,
    ExecutionStatus,
    IllegalTransition,
    InvalidRequest,
    NodeConfig,
    ProtocolError,
    StepStatus,
    SupervisionError,
    UnknownExecution,
    WorkflowConfig,
    WorkflowEngine,
    load_node_config,
)
from tamma_actors._protocol import LIST_MOST

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
        with pytest.raises(ProtocolError, match="id: String should match pattern"):
            engine.start_workflow(chain("chosen"), execution_id="no/slash")
        # inputs and a context are taken as a client would send them: what cannot be sent
        # (it could not be stored either) is refused, and nothing is started
        for inputs, why in [
            ({"due": datetime.date(2026, 12, 1)}, r"inputs\.due: a value of type date"),
            ({1: "x"}, r"inputs\.1\.\[key\]: Input should be a valid string$"),
        ]:
            with pytest.raises(ProtocolError, match=rf"invalid arguments for 'start': {why}"):
                engine.start_workflow(chain("unsent"), inputs)
        with pytest.raises(ProtocolError, match=r"'execute': context\.s: a value of type set"):
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


def test_a_plugin_whose_module_is_missing_is_refused_at_start(short_dir: Path) -> None:
    # it was accepted, and each step naming it failed later with UnknownImplementation
    plugins = {"deploy": "no_such_module_here:deploy"}
    with WorkflowEngine() as engine:
        with pytest.raises(ConfigError, match="'deploy' = 'no_such_module_here:deploy'"):
            engine.initialize({**SETTINGS, "data_dir": short_dir / "var", "plugins": plugins})
        assert not (short_dir / "var").exists()  # refused before anything was made


# Each mistake, made through the engine and through a client of its control socket, and
# what the error must say. Both raise InvalidRequest (a ProtocolError) and start nothing.
MISTAKES: list[tuple[str, Any, str]] = [
    (
        "get_workflow(123)",
        lambda api, run: api.get_workflow(123),
        "id: Input should be a valid string",
    ),
    ("get_workflow_status(None)", lambda api, run: api.get_workflow_status(None), "'status': id: "),
    ("pause_workflow(None)", lambda api, run: api.pause_workflow(None), "'pause': id: "),
    ("abort, reason 5", lambda api, run: api.abort_workflow(run, reason=5), "'abort': reason: "),
    ("retry_step(run, 5)", lambda api, run: api.retry_step(run, 5), "'retry': step: "),
    ("events from -1", lambda api, run: api.get_events(run, -1), "from_seq: .*greater than"),
    ("events from '2'", lambda api, run: api.get_events(run, "2"), "from_seq: .*valid integer"),
    ("events limit 0", lambda api, run: api.get_events(run, 0, limit=0), "limit: .*greater than"),
    ("wait 'soon'", lambda api, run: api.wait(run, "soon"), "'wait': timeout: "),
    (
        "filter typo",
        lambda api, run: api.list_workflows({"wrkflow_id": "x"}),
        "wrkflow_id: unknown key",
    ),
    ("filter status", lambda api, run: api.list_summaries({"status": "done"}), "status"),
    ("filter limit", lambda api, run: api.list_workflows({"limit": -1}), "limit: "),
    (
        "workflow 123",
        lambda api, run: api.start_workflow(123),
        "WorkflowConfig, a mapping .* not int",
    ),
    (
        "inputs [1, 2]",
        lambda api, run: api.start_workflow(chain(), [1, 2]),
        "inputs must be a mapping",
    ),
    (
        "inputs with a date",
        lambda api, run: api.start_workflow(chain(), {"x": {"due": datetime.date(2026, 1, 1)}}),
        r"'start': inputs\.x\.due: a value of type date cannot be sent",
    ),
    (
        "inputs {1: x}",
        lambda api, run: api.start_workflow(chain(), {1: "x"}),
        r"inputs\.1\.\[key\]",
    ),
    (
        "id 'no/slash'",
        lambda api, run: api.start_workflow(chain(), execution_id="no/slash"),
        "'start': id: String should match pattern",
    ),
    (
        "context with a set",
        lambda api, run: api.execute_step(run, "a", {"s": {1}}),
        r"'execute': context\.s: a value of type set cannot be sent",
    ),
]


@pytest.fixture(scope="module")
def both() -> Iterator[tuple[WorkflowEngine, Client, str]]:
    """An engine, a client of its control socket and a completed execution ``run``."""
    home = Path(tempfile.mkdtemp(prefix="tamma-"))  # short: an ipc:// path
    try:
        with WorkflowEngine(timeout=WAIT) as engine:
            engine.initialize({**SETTINGS, "data_dir": home / "var"})
            run = engine.start_workflow(chain("alike"), {"n": 1}).id
            assert engine.wait(run, timeout=WAIT).status is ExecutionStatus.COMPLETED
            with Client(engine.node.config.control_address, timeout=WAIT) as client:
                yield engine, client, run
    finally:
        shutil.rmtree(home, ignore_errors=True)


@pytest.mark.parametrize(("call", "says"), [m[1:] for m in MISTAKES], ids=[m[0] for m in MISTAKES])
@pytest.mark.parametrize("side", ["engine", "client"])
def test_the_client_and_the_engine_refuse_a_mistake_alike(
    both: tuple[WorkflowEngine, Client, str], side: str, call: Any, says: str
) -> None:
    engine, client, run = both
    with pytest.raises(InvalidRequest, match=says) as caught:
        call(engine if side == "engine" else client, run)
    assert isinstance(caught.value, ProtocolError)
    assert [e.id for e in engine.list_workflows()] == [run]  # nothing started


@pytest.mark.parametrize("side", ["engine", "client"])
def test_the_client_and_the_engine_take_the_same_arguments(
    both: tuple[WorkflowEngine, Client, str], side: str
) -> None:
    engine, client, run = both
    api: Any = engine if side == "engine" else client
    assert [e.seq for e in api.get_events(run, 1, limit=2)] == [1, 2]
    every = [e.seq for e in api.get_events(run)]
    assert [e.seq for e in api.get_events(run, limit=LIST_MOST + 1)] == every  # client pages
    for taken in ({"status": "completed"}, {"workflowId": "alike", "limit": 1}):
        assert [s.id for s in api.list_summaries(taken)] == [run]
        assert [e.id for e in api.list_workflows(taken)] == [run]
    assert api.list_summaries({"status": "failed", "workflow_id": "alike"}) == []
    assert api.wait(run, timeout=2 * 3600).status is ExecutionStatus.COMPLETED
