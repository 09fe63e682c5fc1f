"""Client.request_many / start_workflows: pipelined requests against a real ControlServer."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from tamma_actors._client import Client
from tamma_actors._control import ControlServer
from tamma_actors._errors import RequestTimeout, TransportError, UnknownExecution
from tests.fakes import FakeEngine

pytestmark = pytest.mark.integration

ONE_STEP = {"name": "one", "steps": [{"name": "only", "implementation": "noop"}]}


@pytest.fixture
def ctx() -> Iterator[zmq.Context[Any]]:
    context: zmq.Context[Any] = zmq.Context()
    yield context
    context.term()


@pytest.fixture
def engine() -> Iterator[FakeEngine]:
    with FakeEngine() as fake:
        yield fake


@pytest.fixture
def client(ctx: zmq.Context[Any], engine: FakeEngine, short_dir: Path) -> Iterator[Client]:
    ref = ControlServer.start(ctx, engine, endpoint=f"ipc://{short_dir}/control.sock")
    ref.proxy().address().get(timeout=10)
    try:
        with Client(data_dir=short_dir, timeout=10) as c:
            yield c
    finally:
        ref.stop(block=True, timeout=10)


def test_start_workflows_starts_one_execution_per_inputs_in_order(
    client: Client, engine: FakeEngine
) -> None:
    started = client.start_workflows(ONE_STEP, ({"n": i} for i in range(50)), window=8)
    assert [e.context["inputs"] for e in started] == [{"n": i} for i in range(50)]
    assert len({e.id for e in started}) == 50
    assert [c[1][1] for c in engine.calls if c[0] == "start_workflow"] == [
        {"n": i} for i in range(50)
    ]


def test_request_many_collects_every_reply_then_raises_the_first_error(
    client: Client, engine: FakeEngine
) -> None:
    good = client.start_workflow(ONE_STEP)
    ids = [good.id, "missing-1", good.id, "missing-2"]
    with pytest.raises(UnknownExecution, match="missing-1"):
        client.request_many("status", ({"id": i} for i in ids), window=2)
    # every reply was read: the socket is clean for the next request
    assert client.get_workflow_status(good.id).id == good.id
    assert client.request_many("status", []) == []


def test_request_many_refuses_a_bad_window_and_a_closed_client(client: Client) -> None:
    with pytest.raises(ValueError, match="window"):
        client.request_many("health", [{}], window=0)
    client.close()
    with pytest.raises(TransportError, match="closed"):
        client.request_many("health", [{}])


def test_request_many_times_out_without_a_server(short_dir: Path) -> None:
    with (
        Client(f"ipc://{short_dir}/nobody.sock", timeout=0.2) as lonely,
        pytest.raises(RequestTimeout, match="2 'health' request"),
    ):
        lonely.request_many("health", [{}, {}])
