"""A Client shared by threads: the second one at a time is refused, not let onto the
socket (libzmq asserted, or replies went to the wrong caller)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import zmq

from tamma_actors._client import Client
from tamma_actors._errors import RequestTimeout, TransportError

pytestmark = pytest.mark.integration


def test_a_client_used_by_a_second_thread_at_once_refuses_it(tmp_path: Path) -> None:
    endpoint = f"ipc://{tmp_path}/silent.sock"
    context = zmq.Context()
    silent = context.socket(zmq.ROUTER)  # a node that never answers
    silent.setsockopt(zmq.LINGER, 0)
    silent.bind(endpoint)
    outcome: list[Any] = []
    try:
        with Client(endpoint, timeout=5.0) as client:

            def first() -> None:
                try:
                    client.request("health", {}, timeout=3.0)
                except RequestTimeout as exc:
                    outcome.append(exc)

            waiting = threading.Thread(target=first)
            waiting.start()
            assert silent.poll(5000), "the first request never arrived"
            silent.recv_multipart()  # the first thread now waits for its reply
            with pytest.raises(TransportError, match="in use by another thread"):
                client.request("health", {})
            with pytest.raises(TransportError, match="in use by another thread"):
                client.request_many("health", [{}])
            waiting.join(10.0)
            assert not waiting.is_alive() and isinstance(outcome[0], RequestTimeout)
            # its own again once the first thread is done: asked, and times out as alone
            with pytest.raises(RequestTimeout):
                client.request("health", {}, timeout=0.2)
    finally:
        silent.close()
        context.term()


def test_a_client_closed_by_another_thread_ends_the_call_under_way(tmp_path: Path) -> None:
    # the socket was closed under the waiting call: a raw ZMQError (or libzmq's assertion)
    endpoint = f"ipc://{tmp_path}/silent.sock"
    context = zmq.Context()
    silent = context.socket(zmq.ROUTER)
    silent.setsockopt(zmq.LINGER, 0)
    silent.bind(endpoint)
    outcome: list[BaseException] = []
    try:
        client = Client(endpoint, timeout=30.0)

        def call() -> None:
            try:
                client.request("health", {})
            except BaseException as exc:  # whatever it was, the test says
                outcome.append(exc)

        waiting = threading.Thread(target=call)
        waiting.start()
        assert silent.poll(5000), "the request never arrived"
        client.close()  # returns at once: the waiting call closes the socket as it ends
        waiting.join(10.0)
        assert not waiting.is_alive()
        assert isinstance(outcome[0], TransportError) and "was closed" in str(outcome[0])
        with pytest.raises(TransportError, match="closed"):
            client.request("health", {})
        client.close()  # again: nothing to do
    finally:
        silent.close()
        context.term()


def test_a_client_whose_socket_could_not_be_made_again_still_closes_its_context(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tamma_actors._client_socket import ClientSocket

    socket = ClientSocket(
        f"ipc://{tmp_path}/nobody.sock",
        token=None,
        timeout=0.1,
        max_frame_bytes=1 << 20,
        curve_server_key=None,
    )

    def refused() -> Any:
        raise TransportError("cannot connect")

    monkeypatch.setattr(socket, "_connect", refused)
    with pytest.raises(TransportError, match="cannot connect"):  # the reset after no reply
        socket.request("health", {})
    socket.close()
    assert socket._context.closed  # it was left open when no socket was there to close
