"""One 'events' reply holds at most LIST_MOST events: the control server refuses a bigger
limit, a client asking for more pages within it, and the embedded engine, whose answers
are no frames, takes any limit (as its lists do)."""

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


def test_the_engine_takes_any_positive_limit(
    engine_and_run: tuple[WorkflowEngine, str],
) -> None:
    engine, run = engine_and_run
    everything = engine.get_events(run)
    assert len(everything) > 2
    assert engine.get_events(run, limit=LIST_MOST) == everything
    assert engine.get_events(run, limit=LIST_MOST + 1) == everything
    assert [e.seq for e in engine.get_events(run, limit=2)] == [1, 2]
    with pytest.raises(InvalidRequest, match="limit: Input should be greater than or equal"):
        engine.get_events(run, limit=0)
    # numbers past any count there is: everything, or nothing (a ValueError, a StoreError)
    assert engine.get_events(run, limit=2**70) == everything
    assert engine.get_events(run, from_seq=2**64) == engine.get_events(run, 2**70, 3) == []
    assert engine.list_workflows({"offset": 2**70}) == []
    assert [e.id for e in engine.list_workflows({"limit": 2**70})] == [run]


def test_the_node_refuses_it_and_a_client_pages_within_it(
    engine_and_run: tuple[WorkflowEngine, str],
) -> None:
    engine, run = engine_and_run
    with Client(engine.node.config.control_address, timeout=WAIT) as client:
        with pytest.raises(ProtocolError, match="limit: Input should be less than or equal"):
            client.request("events", {"id": run, "from_seq": 1, "limit": LIST_MOST + 1})
        assert client.get_events(run, limit=LIST_MOST + 1) == engine.get_events(run)
