"""A node with tokens sends its events only to subscriptions that carry one."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from tamma_actors import Client
from tamma_actors._codec import unpack
from tamma_actors._config import load_node_config
from tamma_actors._node import Node

pytestmark = pytest.mark.integration

WAIT = 30.0
VIEWER = "events-test-viewer"
OPERATOR = "events-test-operator"
ONE_STEP = {"name": "one", "steps": [{"name": "a", "implementation": "noop"}]}


@pytest.fixture
def node(short_dir: Path) -> Iterator[Node]:
    cfg = load_node_config(
        None, data_dir=short_dir / "var", workers=1, tokens={VIEWER: "viewer", OPERATOR: "operator"}
    )
    with Node(cfg) as node:
        yield node


def _xsub(ctx: zmq.Context[Any], endpoint: str, *subscriptions: bytes) -> zmq.Socket[Any]:
    sock = ctx.socket(zmq.XSUB)
    sock.setsockopt(zmq.LINGER, 0)
    for subscription in subscriptions:
        sock.send(subscription)
    sock.connect(endpoint)
    return sock


def _refused(client: Client, count: int) -> None:
    deadline = time.monotonic() + WAIT
    while client.health()["events"]["refused"] < count:
        assert time.monotonic() < deadline, client.health()["events"]
        time.sleep(0.02)


def test_only_a_subscription_with_a_known_token_gets_events(node: Node) -> None:
    endpoint = node.config.events_address
    ctx: zmq.Context[Any] = zmq.Context()
    plain = ctx.socket(zmq.SUB)  # a SUB's subscription cannot carry a token
    plain.setsockopt(zmq.LINGER, 0)
    plain.setsockopt(zmq.SUBSCRIBE, b"")
    plain.connect(endpoint)
    wrong = _xsub(ctx, endpoint, b"\x01not-a-token\x00")
    malformed = _xsub(ctx, endpoint, b"\x01" + VIEWER.encode())  # no NUL, no prefix
    good = _xsub(ctx, endpoint, b"\x01" + VIEWER.encode() + b"\x00workflow.completed")
    try:
        with Client(node.config.control_address, token=OPERATOR, timeout=WAIT) as client:
            _refused(client, 3)  # each of the three others has been seen, and ignored
            eid = client.start_workflow(ONE_STEP).id
            assert client.wait(eid, timeout=WAIT).status == "completed"
            assert good.poll(int(WAIT * 1000))
            event = unpack(good.recv_multipart()[1])
            # only what it asked for: the execution's earlier events never came
            assert (event["type"], event["execution_id"]) == ("workflow.completed", eid)
            # the good one has had its event: the others, subscribed before, got none
            for sock in (plain, wrong, malformed):
                assert not sock.poll(200)
            good.send(b"\x00" + VIEWER.encode() + b"\x00workflow.completed")  # unsubscribe
            good.send(b"\x01" + VIEWER.encode() + b"\x00step.")  # and take others
            deadline = time.monotonic() + WAIT
            while True:  # applied in order on the node's bus thread
                second = client.start_workflow(ONE_STEP).id
                client.wait(second, timeout=WAIT)
                if good.poll(500):
                    break
                assert time.monotonic() < deadline
            types = set()
            while good.poll(500):
                types.add(unpack(good.recv_multipart()[1])["type"])
            assert types and all(t.startswith("step.") for t in types)
    finally:
        for sock in (plain, wrong, malformed, good):
            sock.close(0)
        ctx.term()


@contextlib.contextmanager
def _watch(node: Node, *args: str) -> Iterator[subprocess.Popen[str]]:
    """``tamma watch``, killed at the end if it is still there (a failed test included)."""
    command = [sys.executable, "-m", "tamma_actors._cli", "--data-dir", str(node.config.data_dir)]
    watch = subprocess.Popen(
        [*command, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        yield watch
    finally:
        if watch.poll() is None:
            watch.kill()
        watch.wait(WAIT)


def test_tamma_watch_sends_its_token_and_a_wrong_one_is_refused_at_once(node: Node) -> None:
    with _watch(node, "--token", "not-a-token", "watch") as refused:
        _, err = refused.communicate(timeout=WAIT)
    assert refused.returncode == 1 and "forbidden" in err and "unknown token" in err
    with _watch(node, "--token", VIEWER, "--json", "watch", "workflow.*", "--count", "1") as watch:
        with Client(node.config.control_address, token=OPERATOR, timeout=WAIT) as client:
            deadline = time.monotonic() + WAIT
            while watch.poll() is None:  # until its subscription is in, events may pass it
                assert time.monotonic() < deadline
                client.wait(client.start_workflow(ONE_STEP).id, timeout=WAIT)
                time.sleep(0.05)
        out, err = watch.communicate(timeout=WAIT)
        assert watch.returncode == 0, err
        assert '"type": "workflow.' in out
        with Client(node.config.control_address, token=OPERATOR, timeout=WAIT) as client:
            client.wait(client.start_workflow(ONE_STEP).id, timeout=WAIT)  # a round after
            # it sent only what this node takes (the health said it wants tokens), and the
            # unsubscriptions of its closing apply nothing: none of it counts as refused
            assert client.health()["events"]["refused"] == 0
