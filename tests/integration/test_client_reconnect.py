"""A client whose node goes away under a request (stopped, restarted, killed): the reply is
lost with the connection. A request that changes nothing is asked again of the node that
comes back on the endpoint; any other ends at once, saying it may or may not have been
done, instead of waiting out its whole timeout for a reply that cannot come."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from tamma_actors import Client
from tamma_actors._codec import pack, unpack
from tamma_actors._config import load_node_config
from tamma_actors._errors import RequestTimeout, TransportError
from tamma_actors._node import Node
from tests.workers import until

pytestmark = pytest.mark.integration

JOIN = 20.0


class FakeNode:
    """A ROUTER on ``endpoint`` that reads requests and answers them when told."""

    def __init__(self, context: zmq.Context[Any], endpoint: str) -> None:
        self.sock = context.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(endpoint)

    def next_request(self, timeout: float = 10.0) -> tuple[bytes, dict[str, Any]]:
        assert self.sock.poll(int(timeout * 1000)), "no request came"
        route, frame = self.sock.recv_multipart()
        request = unpack(frame, 1 << 20)
        assert isinstance(request, dict)
        return route, request

    def answer(self, route: bytes, request: dict[str, Any], result: Any) -> None:
        reply = {"v": 1, "id": request["id"], "ok": True, "result": result}
        self.sock.send_multipart([route, pack(reply)])

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def context() -> Iterator[zmq.Context[Any]]:
    ctx: zmq.Context[Any] = zmq.Context()
    try:
        yield ctx
    finally:
        ctx.term()


def _call(client: Client, op: str, args: dict[str, Any], timeout: float) -> list[Any]:
    """Run ``client.request`` on a thread; its outcome (result or exception) lands in the
    list returned once the thread is joined."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(client.request(op, args, timeout=timeout))
        except Exception as exc:  # the test says which it expected
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    outcome.append(thread)
    return outcome


def _joined(outcome: list[Any]) -> Any:
    thread = outcome.pop(0)
    thread.join(JOIN)
    assert not thread.is_alive(), "the call did not end"
    return outcome[0]


def test_a_read_whose_node_went_away_unanswered_is_asked_of_the_next_one(
    short_dir: Path, context: zmq.Context[Any]
) -> None:
    endpoint = f"ipc://{short_dir}/control.sock"
    first = FakeNode(context, endpoint)
    with Client(endpoint, timeout=10.0) as client:
        outcome = _call(client, "get", {"id": "x"}, timeout=10.0)
        first.next_request()
        first.close()  # the node stops (or is killed) with the request unanswered
        second = FakeNode(context, endpoint)
        try:
            route, request = second.next_request()  # it came again, to the new node
            assert request["op"] == "get" and request["args"] == {"id": "x"}
            second.answer(route, request, {"id": "x", "status": "completed"})
            assert _joined(outcome) == {"id": "x", "status": "completed"}
        finally:
            second.close()


def test_a_change_whose_node_went_away_unanswered_ends_at_once_and_is_not_sent_again(
    short_dir: Path, context: zmq.Context[Any]
) -> None:
    endpoint = f"ipc://{short_dir}/control.sock"
    first = FakeNode(context, endpoint)
    with Client(endpoint, timeout=60.0) as client:
        began = time.monotonic()
        outcome = _call(client, "abort", {"id": "x", "reason": "r"}, timeout=60.0)
        first.next_request()
        first.close()
        error = _joined(outcome)  # not after its 60 s: the reply went with the connection
        assert time.monotonic() - began < JOIN
        assert isinstance(error, TransportError) and not isinstance(error, RequestTimeout)
        assert "'abort'" in str(error) and "may or may not have been done" in str(error)
        second = FakeNode(context, endpoint)
        try:
            with pytest.raises(RequestTimeout):  # the client serves on, on the new node
                client.request("health", {}, timeout=0.5)
            _, request = second.next_request()
            assert request["op"] == "health"  # the abort was not sent again
        finally:
            second.close()


def test_a_wait_goes_on_across_a_restart_of_its_node(short_dir: Path) -> None:
    def config() -> Any:
        return load_node_config(
            None,
            data_dir=short_dir / "var",
            workers=1,
            heartbeat_interval=0.2,
            heartbeat_timeout=2.0,
            cancel_grace=0.5,
        )

    definition = {
        "name": "restarted",
        "steps": [{"name": "s", "implementation": "sleep", "config": {"seconds": 0.5}}],
    }
    first = Node(config()).start()
    try:
        endpoint = first.config.control_address
        arrived = threading.Event()
        engine = first.engine
        real_wait = engine.wait

        def spied_wait(*args: Any, **kwargs: Any) -> Any:
            arrived.set()
            return real_wait(*args, **kwargs)

        engine.wait = spied_wait  # type: ignore[method-assign]
        with Client(endpoint, timeout=10.0) as starter:
            eid = starter.start_workflow(definition).id
        with Client(endpoint, timeout=10.0) as client:
            outcome: list[Any] = []

            def wait() -> None:
                try:
                    outcome.append(client.wait(eid, timeout=30.0))
                except Exception as exc:
                    outcome.append(exc)

            waiter = threading.Thread(target=wait)
            waiter.start()
            until(arrived.is_set, "the wait reached the first node")
            first.close()  # its running step is left for the next node
            with Node(config()):
                waiter.join(JOIN)
                assert not waiter.is_alive(), "the wait did not end"
            assert getattr(outcome[0], "status", outcome[0]) == "completed"
    finally:
        first.close()
