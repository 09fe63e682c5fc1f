"""EventBus with a real PUB socket and a real SUB subscriber."""

from __future__ import annotations

import os
import stat
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pykka
import pytest
import zmq
from pykka import ActorRegistry

from tamma_actors import _codec
from tamma_actors._errors import ConfigError
from tamma_actors._eventbus import EventBus, Publish

pytestmark = pytest.mark.integration

WAIT = 10.0


@pytest.fixture
def ctx() -> Iterator[zmq.Context[Any]]:
    context: zmq.Context[Any] = zmq.Context()
    try:
        yield context
    finally:
        ActorRegistry.stop_all(timeout=WAIT)
        context.destroy(linger=0)


def _event(seq: int, type_: str, execution_id: str = "ex1", **data: Any) -> dict[str, Any]:
    return {
        "seq": seq,
        "type": type_,
        "execution_id": execution_id,
        "timestamp": 1700000000.0 + seq,
        "data": data,
    }


class _Collector:
    def __init__(self, expected: int = 0) -> None:
        self.events: list[dict[str, Any]] = []
        self.expected = expected
        self.done = threading.Event()
        if expected == 0:
            self.done.set()

    def __call__(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        if len(self.events) >= self.expected:
            self.done.set()

    @property
    def types(self) -> list[str]:
        return [f"{e['type']}@{e['execution_id']}" for e in self.events]


@contextmanager
def _subscriber(
    ctx: zmq.Context[Any], bus: pykka.ActorRef[Any], endpoint: str, *prefixes: bytes
) -> Iterator[zmq.Socket[Any]]:
    """A SUB socket on ``endpoint`` that is known to receive: PUB drops what it sends before
    a subscription has propagated ("slow joiner"), so sync events are published until one
    arrives (they are then drained)."""
    sub: zmq.Socket[Any] = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.RCVTIMEO, int(WAIT * 1000))
    for prefix in (*prefixes, b"sync"):
        sub.setsockopt(zmq.SUBSCRIBE, prefix)
    sub.connect(endpoint)
    try:
        poller = zmq.Poller()
        poller.register(sub, zmq.POLLIN)
        for attempt in range(200):
            bus.tell(Publish([_event(attempt, "sync")]))
            if poller.poll(50):
                break
        while poller.poll(0):
            sub.recv_multipart()
        yield sub
    finally:
        sub.close(linger=0)


def test_a_real_sub_socket_receives_published_events(ctx: zmq.Context[Any], tmp_path: Path) -> None:
    endpoint = f"ipc://{tmp_path}/events.sock"
    bus = EventBus.start(ctx, endpoint)
    proxy = bus.proxy()
    assert proxy.stats().get(timeout=WAIT)["endpoint"] == endpoint
    with _subscriber(ctx, bus, endpoint, b"step.") as sub:
        events = [
            _event(1, "workflow.started"),
            _event(2, "step.started", step="a"),
            _event(3, "step.completed", step="a"),
            _event(4, "workflow.completed"),
        ]
        bus.tell(Publish(events))
        frames = [sub.recv_multipart() for _ in range(2)]
    assert [f[0] for f in frames] == [b"step.started", b"step.completed"]
    assert [_codec.unpack(f[1]) for f in frames] == events[1:3]


def test_events_packed_by_the_store_are_sent_as_they_are(
    ctx: zmq.Context[Any], tmp_path: Path
) -> None:
    endpoint = f"ipc://{tmp_path}/events.sock"
    bus = EventBus.start(ctx, endpoint)
    with _subscriber(ctx, bus, endpoint, b"step.") as sub:
        events = [_event(1, "step.started"), _event(2, "step.completed")]
        packed = [_codec.pack(events[0]), b"\x81\xa1x\x01"]  # the bus does not re-encode
        bus.tell(Publish(events, packed))
        frames = [sub.recv_multipart() for _ in range(2)]
    assert frames == [[b"step.started", packed[0]], [b"step.completed", packed[1]]]


def test_a_third_frame_says_when_each_event_was_sent_if_asked(
    ctx: zmq.Context[Any], tmp_path: Path
) -> None:
    endpoint = f"ipc://{tmp_path}/events.sock"
    bus = EventBus.start(ctx, endpoint, publish_time=True)
    with _subscriber(ctx, bus, endpoint, b"step.") as sub:
        before = time.time()
        bus.tell(Publish([_event(1, "step.started"), _event(2, "step.completed")]))
        frames = [sub.recv_multipart() for _ in range(2)]
        after = time.time()
    assert [(f[0], _codec.unpack(f[1])["seq"]) for f in frames] == [
        (b"step.started", 1),
        (b"step.completed", 2),
    ]
    sent = [struct.unpack("<d", f[2])[0] for f in frames]
    assert all(len(f) == 3 and len(f[2]) == 8 for f in frames)
    assert before <= sent[0] <= sent[1] <= after


def test_handler_globs_select_the_right_events(ctx: zmq.Context[Any]) -> None:
    bus = EventBus.start(ctx, None)
    proxy = bus.proxy()
    steps, completed, everything, one_exec, exec_steps = (
        _Collector(),
        _Collector(),
        _Collector(),
        _Collector(),
        _Collector(),
    )
    ids = [
        proxy.subscribe("step.*", steps).get(timeout=WAIT),
        proxy.subscribe("workflow.completed", completed).get(timeout=WAIT),
        proxy.subscribe("*", everything).get(timeout=WAIT),
        proxy.subscribe("@ex2", one_exec).get(timeout=WAIT),
        proxy.subscribe("step.*@ex2", exec_steps).get(timeout=WAIT),
    ]
    assert len(set(ids)) == 5
    events = [
        _event(1, "workflow.started"),
        _event(2, "step.started"),
        _event(1, "step.completed", "ex2"),
        _event(3, "workflow.completed"),
        _event(2, "workflow.completed", "ex2"),
        _event(4, "stepper.odd"),
    ]
    bus.tell(Publish(events))
    stats = proxy.stats().get(timeout=WAIT)  # the bus has handled the Publish
    assert stats["published"] == 6 and stats["subscribers"] == 5
    assert steps.types == ["step.started@ex1", "step.completed@ex2"]
    assert completed.types == ["workflow.completed@ex1", "workflow.completed@ex2"]
    assert everything.events == events
    assert one_exec.types == ["step.completed@ex2", "workflow.completed@ex2"]
    assert exec_steps.types == ["step.completed@ex2"]

    assert proxy.unsubscribe(ids[2]).get(timeout=WAIT) is True
    assert proxy.unsubscribe(ids[2]).get(timeout=WAIT) is False
    bus.tell(Publish([_event(5, "step.failed")]))
    assert proxy.stats().get(timeout=WAIT)["subscribers"] == 4
    assert len(everything.events) == 6
    assert steps.types[-1] == "step.failed@ex1"


def test_a_failing_handler_does_not_stop_the_others(ctx: zmq.Context[Any]) -> None:
    bus = EventBus.start(ctx, None)
    proxy = bus.proxy()
    calls: list[int] = []

    def broken(event: dict[str, Any]) -> None:
        calls.append(event["seq"])
        raise RuntimeError("handler bug")

    after = _Collector(expected=2)
    proxy.subscribe("*", broken).get(timeout=WAIT)
    proxy.subscribe("*", after).get(timeout=WAIT)
    bus.tell(Publish([_event(1, "step.started")]))
    bus.tell(Publish([_event(2, "step.completed")]))
    assert after.done.wait(WAIT)
    assert calls == [1, 2]  # still subscribed after raising
    assert bus.is_alive()
    assert proxy.stats().get(timeout=WAIT)["subscribers"] == 2


def test_bad_patterns_and_unknown_messages(ctx: zmq.Context[Any]) -> None:
    bus = EventBus.start(ctx, None)
    proxy = bus.proxy()
    with pytest.raises(ValueError, match="no execution"):
        proxy.subscribe("step.*@", _Collector()).get(timeout=WAIT)
    assert bus.ask("not a publish", timeout=WAIT) is None  # logged, ignored
    assert bus.is_alive()


def test_unencodable_and_oversized_events_are_dropped_not_fatal(
    ctx: zmq.Context[Any], tmp_path: Path
) -> None:
    bus = EventBus.start(ctx, f"ipc://{tmp_path}/ev.sock", max_frame_bytes=256)
    proxy = bus.proxy()
    seen = _Collector()
    proxy.subscribe("*", seen).get(timeout=WAIT)
    bus.tell(
        Publish(
            [
                _event(1, "step.output", blob=object()),
                _event(2, "step.output", blob="x" * 1000),
                _event(3, "step.completed"),
            ]
        )
    )
    stats = proxy.stats().get(timeout=WAIT)
    assert stats["published"] == 3 and stats["dropped"] == 2
    assert len(seen.events) == 3  # in-process handlers still see every committed event
    assert bus.is_alive()


def test_bind_failure_stops_the_bus(ctx: zmq.Context[Any], tmp_path: Path) -> None:
    bus = EventBus.start(ctx, f"ipc://{tmp_path}/missing/dir/ev.sock")
    assert bus.actor_stopped.wait(WAIT)


def test_the_socket_file_is_private_whatever_the_umask(
    ctx: zmq.Context[Any], tmp_path: Path
) -> None:
    old = os.umask(0)
    try:
        bus = EventBus.start_and_wait(ctx, f"ipc://{tmp_path}/ev.sock", timeout=WAIT)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "ev.sock").stat().st_mode) == 0o600
    assert bus.stop(timeout=WAIT)


def test_a_start_failing_otherwise_than_at_the_bind_closes_its_socket() -> None:
    """A key libzmq refuses: the PUB socket stayed open and Context.term() never returned."""
    ctx: zmq.Context[Any] = zmq.Context()
    with pytest.raises(ConfigError, match="curve_secret_key"):
        EventBus.start_and_wait(
            ctx, "tcp://127.0.0.1:*", curve_secret_key="not a key", timeout=WAIT
        )
    term = threading.Thread(target=ctx.term, daemon=True)
    term.start()
    term.join(WAIT)
    assert not term.is_alive(), "a socket of the bus was left open"


def test_stop_closes_the_pub_socket_and_frees_the_endpoint(
    ctx: zmq.Context[Any], tmp_path: Path
) -> None:
    endpoint = f"ipc://{tmp_path}/again.sock"
    first = EventBus.start(ctx, endpoint)
    assert first.proxy().stats().get(timeout=WAIT)["published"] == 0
    assert first.stop(timeout=WAIT)
    second = EventBus.start(ctx, endpoint)
    assert second.proxy().stats().get(timeout=WAIT)["published"] == 0
    assert second.is_alive()
