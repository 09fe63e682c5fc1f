"""One 'events' reply holds at most LIST_MOST events: the embedded engine refuses a bigger
limit as its control server does (the two share the argument check), and a client asking
for more pages within it."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tamma_actors import Client, ExecutionStatus, InvalidRequest, ProtocolError, WorkflowEngine
from tamma_actors._protocol import LIST_MOST

pytestmark = pytest.mark.integration

WAIT = 60.0
TWO_STEPS = {
    "name": "two",
    "steps": [
        {"name": "a", "implementation": "noop"},
        {"name": "b", "implementation": "noop", "dependencies": ["a"]},
    ],
}


@pytest.fixture(scope="module")
def engine_and_run() -> Iterator[tuple[WorkflowEngine, str]]:
    home = Path(tempfile.mkdtemp(prefix="tamma-"))  # short: an ipc:// path
    try:
        with WorkflowEngine(timeout=WAIT) as engine:
            engine.initialize({"data_dir": home / "var", "workers": 1, "worker_slots": 2})
            run = engine.start_workflow(TWO_STEPS).id
            assert engine.wait(run, timeout=WAIT).status is ExecutionStatus.COMPLETED
            yield engine, run
    finally:
        shutil.rmtree(home, ignore_errors=True)


def test_the_engine_refuses_a_limit_over_a_replys_worth(
    engine_and_run: tuple[WorkflowEngine, str],
) -> None:
    engine, run = engine_and_run
    everything = engine.get_events(run)
    assert len(everything) > 2
    assert engine.get_events(run, limit=LIST_MOST) == everything
    says = r"invalid arguments for 'events': limit: Input should be less than or equal to 10000"
    with pytest.raises(InvalidRequest, match=says):
        engine.get_events(run, limit=LIST_MOST + 1)


def test_the_node_refuses_it_and_a_client_pages_within_it(
    engine_and_run: tuple[WorkflowEngine, str],
) -> None:
    engine, run = engine_and_run
    with Client(engine.node.config.control_address, timeout=WAIT) as client:
        with pytest.raises(ProtocolError, match="limit: Input should be less than or equal"):
            client.request("events", {"id": run, "from_seq": 1, "limit": LIST_MOST + 1})
        assert client.get_events(run, limit=LIST_MOST + 1) == engine.get_events(run)
