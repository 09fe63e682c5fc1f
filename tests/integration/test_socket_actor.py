"""SocketActor against real ZeroMQ sockets, real pipes and real threads."""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import pykka
import pytest
import zmq
from pykka import ActorDeadError, ActorRegistry
from pykka._envelope import Envelope
from pykka.messages import ProxyCall, _ActorStop

from tamma_actors._errors import SupervisionError
from tamma_actors._socket_actor import SocketActor, Urgent, send_frames
from tamma_actors._socket_inbox import Waker
from tamma_actors._timers import TimerHandle

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


class Recorder(SocketActor):
    """Binds a ROUTER in on_start, echoes requests, records what ran on which thread."""

    def __init__(self, zmq_context: zmq.Context[Any], endpoint: str | None = None) -> None:
        super().__init__(zmq_context)
        self.endpoint = endpoint
        self.router: zmq.Socket[Any] | None = None
        self.log: list[str] = []
        self.threads: set[str] = set()
        self.failures: list[BaseException | None] = []
        self.stopped = threading.Event()

    def on_start(self) -> None:
        if self.endpoint is not None:
            self.router = self.zmq_context.socket(zmq.ROUTER)
            self.router.setsockopt(zmq.LINGER, 0)
            self.router.bind(self.endpoint)
            self.watch(self.router, self._on_router)

    def _on_router(self) -> None:
        assert self.router is not None
        ident, payload = self.router.recv_multipart(zmq.NOBLOCK)
        self.threads.add(threading.current_thread().name)
        self.log.append(f"sock:{payload.decode()}")
        self.router.send_multipart([ident, b"echo:" + payload])

    def on_receive(self, message: Any) -> Any:
        self.threads.add(threading.current_thread().name)
        if isinstance(message, threading.Event):
            message.wait(WAIT)
            return "released"
        if message == "boom":
            raise ValueError("boom")
        if message == "exit":
            raise SystemExit(3)
        self.log.append(f"msg:{message}")
        return f"got {message}"

    def add(self, a: int, b: int) -> int:
        return a + b

    def schedule(self, delay: float, fired: threading.Event) -> TimerHandle:
        def fire() -> None:
            self.threads.add(threading.current_thread().name)
            fired.set()

        return self.call_later(delay, fire)

    def on_failure(
        self,
        exception_type: type[BaseException] | None,
        exception_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.failures.append(exception_value)

    def on_stop(self) -> None:
        self.stopped.set()


def _dealer(ctx: zmq.Context[Any], endpoint: str) -> zmq.Socket[Any]:
    sock: zmq.Socket[Any] = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, int(WAIT * 1000))
    sock.connect(endpoint)
    return sock


def test_tell_ask_and_proxy(ctx: zmq.Context[Any]) -> None:
    ref = Recorder.start(ctx)
    ref.tell("a")
    assert ref.ask("b", timeout=WAIT) == "got b"
    proxy = ref.proxy()
    assert proxy.add(2, 3).get(timeout=WAIT) == 5
    assert proxy.log.get(timeout=WAIT) == ["msg:a", "msg:b"]
    threads = proxy.threads.get(timeout=WAIT)
    assert len(threads) == 1
    assert threads.pop().startswith("Recorder-")
    assert ref.stop(timeout=WAIT) is True
    assert not ref.is_alive()


def test_ask_that_raises_returns_the_error_and_the_actor_lives(ctx: zmq.Context[Any]) -> None:
    ref = Recorder.start(ctx)
    with pytest.raises(ValueError, match="boom"):
        ref.ask("boom", timeout=WAIT)
    assert ref.is_alive()
    assert ref.ask("still", timeout=WAIT) == "got still"


def test_router_owned_by_actor_answers_dealer(ctx: zmq.Context[Any], tmp_path: Path) -> None:
    endpoint = f"ipc://{tmp_path}/router.sock"
    ref = Recorder.start(ctx, endpoint)
    ref.ask("ready", timeout=WAIT)  # on_start has bound the socket
    dealer = _dealer(ctx, endpoint)
    try:
        for i in range(5):
            dealer.send(f"ping{i}".encode())
        replies = [dealer.recv() for _ in range(5)]
    finally:
        dealer.close(linger=0)
    assert replies == [f"echo:ping{i}".encode() for i in range(5)]
    proxy = ref.proxy()
    assert len(proxy.threads.get(timeout=WAIT)) == 1


def test_timer_fires_on_the_actor_thread(ctx: zmq.Context[Any]) -> None:
    ref = Recorder.start(ctx)
    proxy = ref.proxy()
    fired = threading.Event()
    cancelled = threading.Event()
    proxy.schedule(0.05, cancelled).get(timeout=WAIT).cancel()
    handle = proxy.schedule(0.01, fired).get(timeout=WAIT)
    assert fired.wait(WAIT)
    assert not handle.cancelled
    # The cancelled timer was due before the one that fired: it will never run now.
    assert not cancelled.is_set()
    threads = proxy.threads.get(timeout=WAIT)
    assert len(threads) == 1 and threads.pop().startswith("Recorder-")


def test_call_later_from_another_thread_wakes_the_loop(ctx: zmq.Context[Any]) -> None:
    holder: list[Recorder] = []

    class Exposed(Recorder):
        def on_start(self) -> None:
            holder.append(self)

    ref = Exposed.start(ctx)
    ref.ask("ready", timeout=WAIT)
    fired = threading.Event()
    ran_on: list[str] = []

    def fire() -> None:
        ran_on.append(threading.current_thread().name)
        fired.set()

    # The loop sleeps with no deadline; the new timer must wake it.
    holder[0].call_later(0.0, fire)
    assert fired.wait(WAIT)
    assert ran_on[0].startswith("Exposed-")


def test_inbox_and_busy_socket_interleave(ctx: zmq.Context[Any]) -> None:
    # inproc: a send has reached the peer's pipe when it returns, so the flood is really
    # waiting on the ROUTER before the actor is released (ipc/tcp would race the I/O thread).
    endpoint = "inproc://busy"
    gate = threading.Event()
    floods = 500

    class Gated(Recorder):
        def _on_router(self) -> None:
            gate.wait(WAIT)
            super()._on_router()

    ref = Gated.start(ctx, endpoint)
    ref.proxy().add(0, 0).get(timeout=WAIT)  # on_start has bound the socket
    dealer = _dealer(ctx, endpoint)
    try:
        for i in range(floods):
            dealer.send(str(i).encode())
        for i in range(3):
            ref.tell(f"m{i}")
        gate.set()
        for _ in range(floods):
            dealer.recv()
    finally:
        dealer.close(linger=0)
    log = ref.proxy().log.get(timeout=WAIT)
    first_msg = log.index("msg:m0")
    assert log.index(f"sock:{floods - 1}") > first_msg  # messages did not wait for the flood
    assert first_msg <= SocketActor.socket_batch + 1
    assert [e for e in log if e.startswith("msg:")] == ["msg:m0", "msg:m1", "msg:m2"]


def test_stop_closes_watched_sockets_but_not_unwatched_ones(ctx: zmq.Context[Any]) -> None:
    extra: list[zmq.Socket[Any]] = []

    class TwoSockets(Recorder):
        def on_start(self) -> None:
            super().on_start()
            other = self.zmq_context.socket(zmq.PULL)
            other.setsockopt(zmq.LINGER, 0)
            self.watch(other, lambda: None)
            self.unwatch(other)
            self.unwatch(other)  # unknown sockets are ignored
            extra.append(other)

    ref = TwoSockets.start(ctx, "inproc://closing")
    router = ref.proxy().router.get(timeout=WAIT)
    assert router is not None and not router.closed
    assert ref.stop(timeout=WAIT) is True
    # stop() answers only after the actor thread has closed its sockets.
    assert router.closed
    assert not extra[0].closed
    extra[0].close(linger=0)


def test_asks_pending_at_stop_fail_with_actor_dead(ctx: zmq.Context[Any]) -> None:
    ref = Recorder.start(ctx)
    gate = threading.Event()
    blocked = ref.ask(gate, block=False)
    stopping = ref.stop(block=False)
    late = [ref.ask(f"late{i}", block=False) for i in range(3)]
    gate.set()
    assert blocked.get(timeout=WAIT) == "released"
    assert stopping.get(timeout=WAIT) is True
    for future in late:
        with pytest.raises(ActorDeadError):
            future.get(timeout=WAIT)


def test_an_urgent_message_goes_ahead_of_the_waiting_ones(ctx: zmq.Context[Any]) -> None:
    # A read such as health must not wait behind a backlog: an Urgent message is handled
    # before every plain one already waiting, urgent ones in the order they came.
    ref = Recorder.start(ctx)
    gate = threading.Event()
    ref.tell(gate)  # holds the actor's thread while the backlog builds up
    for i in range(5):
        ref.tell(i)
    log_now = ProxyCall(attr_path=("log", "copy"), args=(), kwargs={})
    first = ref.ask(Urgent(log_now), block=False)
    second = ref.ask(Urgent("urgent"), block=False)
    behind = ref.ask(log_now, block=False)
    gate.set()
    assert first.get(timeout=WAIT) == []  # none of the five, though told before it
    assert second.get(timeout=WAIT) == "got urgent"
    assert behind.get(timeout=WAIT) == ["msg:urgent", *(f"msg:{i}" for i in range(5))]


def test_a_message_put_after_the_inbox_closed_is_answered(ctx: zmq.Context[Any]) -> None:
    ref = Recorder.start(ctx)
    assert ref.stop(timeout=WAIT)
    # What a racing ask() sees when it checked is_alive() just before the actor stopped.
    future: pykka.Future[Any] = Recorder._create_future()
    ref.actor_inbox.put(Envelope("late", reply_to=future))
    with pytest.raises(ActorDeadError):
        future.get(timeout=WAIT)
    ref.actor_inbox.put(Envelope("told"))  # a tell is dropped silently, as with pykka


def test_fd_watch_fires_when_a_pipe_becomes_readable(ctx: zmq.Context[Any]) -> None:
    read_fd, write_fd = os.pipe()
    seen: list[bytes] = []
    readable = threading.Event()

    class PipeWatcher(SocketActor):
        def on_start(self) -> None:
            self.watch(read_fd, self._on_pipe)

        def _on_pipe(self) -> None:
            seen.append(os.read(read_fd, 100))
            readable.set()

    try:
        ref = PipeWatcher.start(ctx)
        ref.ask("sync", timeout=WAIT)  # the watch is registered
        assert not readable.is_set()
        os.write(write_fd, b"hello")
        assert readable.wait(WAIT)
        assert seen == [b"hello"]
        assert ref.stop(timeout=WAIT)
        os.fstat(read_fd)  # a watched plain fd is not closed by the actor
    finally:
        os.close(read_fd)
        os.close(write_fd)


class _Failing(Recorder):
    def fail_soon(self, via: str) -> None:
        def boom() -> None:
            raise RuntimeError(f"{via} failed")

        if via == "timer":
            self.call_later(0.0, boom)
        else:
            read_fd, self.write_fd = os.pipe()
            self.read_fd = read_fd
            self.watch(read_fd, boom)
            os.write(self.write_fd, b"x")

    def on_stop(self) -> None:  # not called on failure: pykka calls on_failure instead
        super().on_stop()


@pytest.mark.parametrize("via", ["timer", "watch"])
def test_a_raising_callback_fails_the_actor_like_a_told_message(
    ctx: zmq.Context[Any], via: str
) -> None:
    holder: list[_Failing] = []

    class Kept(_Failing):
        def on_start(self) -> None:
            holder.append(self)

    ref = Kept.start(ctx)
    ref.proxy().fail_soon(via).get(timeout=WAIT)
    assert ref.actor_stopped.wait(WAIT)
    actor = holder[0]
    assert actor._thread is not None
    actor._thread.join(WAIT)
    assert not actor._thread.is_alive()
    assert [str(e) for e in actor.failures] == [f"{via} failed"]
    assert not actor.stopped.is_set()
    assert ref not in ActorRegistry.get_all()
    with pytest.raises(ActorDeadError):
        ref.ask("anything", timeout=WAIT)
    if via == "watch":
        os.close(actor.read_fd)
        os.close(actor.write_fd)


def test_a_told_message_that_raises_stops_the_actor(ctx: zmq.Context[Any]) -> None:
    holder: list[Recorder] = []

    class Kept(Recorder):
        def on_start(self) -> None:
            holder.append(self)

    ref = Kept.start(ctx)
    ref.tell("boom")
    assert ref.actor_stopped.wait(WAIT)
    assert holder[0]._thread is not None
    holder[0]._thread.join(WAIT)
    assert [type(e) for e in holder[0].failures] == [ValueError]


def test_on_start_failure_stops_the_actor(ctx: zmq.Context[Any]) -> None:
    class BadStart(SocketActor):
        def on_start(self) -> None:
            raise OSError("cannot bind")

    ref = BadStart.start(ctx)
    assert ref.actor_stopped.wait(WAIT)
    with pytest.raises(ActorDeadError):
        ref.ask("x", timeout=WAIT)


def test_start_and_wait_raises_what_on_start_raised_and_logs_nothing(
    ctx: zmq.Context[Any], short_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    endpoint = f"ipc://{short_dir}/taken.sock"
    first = Recorder.start_and_wait(ctx, endpoint, timeout=WAIT)  # it has bound: no wait
    assert first.ask(ProxyCall(attr_path=("add",), args=(1, 2), kwargs={}), timeout=WAIT) == 3
    with pytest.raises(zmq.ZMQError, match="Invalid argument"):
        Recorder.start_and_wait(ctx, "tcp://127.0.0.1:notaport", timeout=WAIT)
    assert "Unhandled exception" not in caplog.text  # the caller reports it, once
    assert [ref for ref in ActorRegistry.get_all() if ref is not first] == []
    first.stop(timeout=WAIT)


def test_start_and_wait_gives_up_on_a_slow_start_and_stops_the_actor(
    ctx: zmq.Context[Any],
) -> None:
    release = threading.Event()
    stopped = threading.Event()

    class SlowStart(SocketActor):
        def on_start(self) -> None:
            release.wait(WAIT)

        def on_stop(self) -> None:
            stopped.set()

    with pytest.raises(SupervisionError, match="did not start within"):
        SlowStart.start_and_wait(ctx, timeout=0.05)
    release.set()
    assert stopped.wait(WAIT)  # told to stop: it does once on_start is done


def test_base_exception_stops_this_actor_and_the_others(ctx: zmq.Context[Any]) -> None:
    bystander = Recorder.start(ctx)
    ref = Recorder.start(ctx)
    with pytest.raises(ActorDeadError):
        ref.ask("exit", timeout=WAIT)  # pykka would leave this ask hanging forever
    assert ref.actor_stopped.wait(WAIT)
    assert bystander.actor_stopped.wait(WAIT)


def test_watch_from_another_thread_is_refused(ctx: zmq.Context[Any]) -> None:
    holder: list[Recorder] = []

    class Kept(Recorder):
        def on_start(self) -> None:
            holder.append(self)

    ref = Kept.start(ctx)
    ref.ask("ready", timeout=WAIT)
    with pytest.raises(SupervisionError):
        holder[0].watch(0, lambda: None)
    with pytest.raises(SupervisionError):
        holder[0].unwatch(0)


def test_on_failure_that_raises_is_logged_too(
    ctx: zmq.Context[Any], caplog: pytest.LogCaptureFixture
) -> None:
    holder: list[Recorder] = []

    class BadFailure(Recorder):
        def on_start(self) -> None:
            holder.append(self)

        def on_failure(self, *exc_info: Any) -> None:
            raise RuntimeError("on_failure broke")

    ref = BadFailure.start(ctx)
    ref.tell("boom")
    assert ref.actor_stopped.wait(WAIT)
    thread = holder[0]._thread
    assert thread is not None
    thread.join(WAIT)  # on_failure runs after the actor is marked stopped
    with pytest.raises(ActorDeadError):
        ref.ask("x", timeout=WAIT)
    assert "on_failure broke" in caplog.text


def test_system_exit_in_a_timer_stops_every_actor(ctx: zmq.Context[Any]) -> None:
    bystander = Recorder.start(ctx)
    ref = Recorder.start(ctx)

    def leave() -> None:
        raise SystemExit(2)

    ref.proxy().call_later(0.0, leave).get(timeout=WAIT)
    assert ref.actor_stopped.wait(WAIT)
    assert bystander.actor_stopped.wait(WAIT)


def test_inbox_protocol_and_late_messages_after_stop(ctx: zmq.Context[Any]) -> None:
    holder: list[Recorder] = []

    class Kept(Recorder):
        def on_start(self) -> None:
            holder.append(self)

    ref = Kept.start(ctx)
    gate = threading.Event()
    ref.ask(gate, block=False)
    ref.tell("queued")
    # pykka's ActorInbox protocol: get() takes the oldest waiting message.
    assert not ref.actor_inbox.empty()
    assert ref.actor_inbox.get().message in (gate, "queued")
    gate.set()
    assert ref.stop(timeout=WAIT)
    assert ref.actor_inbox.empty()
    with pytest.raises(queue.Empty):
        ref.actor_inbox.get()
    # A stop racing the end of the actor is answered like pykka's teardown does.
    stop_reply: pykka.Future[Any] = Recorder._create_future()
    ref.actor_inbox.put(Envelope(_ActorStop(), reply_to=stop_reply))
    assert stop_reply.get(timeout=WAIT) is None
    # A timer scheduled from outside after the end neither fires nor raises.
    assert isinstance(holder[0].call_later(0.0, lambda: None), TimerHandle)


def test_a_callback_that_closes_its_socket_without_unwatching(ctx: zmq.Context[Any]) -> None:
    endpoint = "inproc://self-closing"
    closed = threading.Event()

    class Closer(Recorder):
        def _on_router(self) -> None:
            assert self.router is not None
            self.router.close(linger=0)
            closed.set()

    ref = Closer.start(ctx, endpoint)
    ref.proxy().add(0, 0).get(timeout=WAIT)
    dealer = _dealer(ctx, endpoint)
    try:
        dealer.send(b"x")
        assert closed.wait(WAIT)
    finally:
        dealer.close(linger=0)
    # The loop no longer polls the closed socket... and stays alive for messages.
    assert ref.proxy().add(1, 2).get(timeout=WAIT) == 3
    assert ref.stop(timeout=WAIT)


def test_waker_drain_without_a_signal_is_harmless() -> None:
    waker = Waker()
    try:
        waker.drain()
        waker.signal()
        waker.drain()
    finally:
        waker.close()
    waker.signal()  # closed: ignored


class Drainer(SocketActor):
    """Watches a PULL socket with ``drains=True``: each call reads what is waiting."""

    def __init__(self, zmq_context: zmq.Context[Any], endpoint: str) -> None:
        super().__init__(zmq_context)
        self.endpoint = endpoint
        self.pull: zmq.Socket[Any] | None = None
        self.got: list[bytes] = []
        self.calls = 0
        self.done = threading.Event()
        self.expected = 0

    def on_start(self) -> None:
        self.pull = self.zmq_context.socket(zmq.PULL)
        self.pull.setsockopt(zmq.LINGER, 0)
        self.pull.bind(self.endpoint)
        self.watch(self.pull, self._drain, drains=True)

    def expect(self, count: int) -> None:
        self.expected = count

    def _drain(self) -> None:
        assert self.pull is not None
        self.calls += 1
        for _ in range(self.socket_batch):
            try:
                self.got.append(self.pull.recv(zmq.NOBLOCK))
            except zmq.Again:
                break
        if self.expected and len(self.got) >= self.expected:
            self.done.set()

    def stats(self) -> tuple[list[bytes], int]:
        return self.got, self.calls


def test_a_draining_watch_reads_every_message_in_order(
    ctx: zmq.Context[Any], short_dir: Path
) -> None:
    endpoint = f"ipc://{short_dir}/pull.sock"
    ref = Drainer.start(ctx, endpoint)
    proxy = ref.proxy()
    count = 3 * Drainer.socket_batch + 5  # more than one call can read
    proxy.expect(count).get(timeout=WAIT)
    push: zmq.Socket[Any] = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    push.connect(endpoint)
    try:
        for i in range(count):
            push.send(str(i).encode())
        assert ref.proxy().done.get(timeout=WAIT).wait(WAIT)
        got, calls = proxy.stats().get(timeout=WAIT)
    finally:
        push.close(linger=0)
    assert got == [str(i).encode() for i in range(count)]
    assert calls >= 2  # one call reads at most a batch
    ref.stop(timeout=WAIT)


def test_send_frames_sends_one_multipart_message(ctx: zmq.Context[Any], short_dir: Path) -> None:
    endpoint = f"ipc://{short_dir}/pair.sock"
    a: zmq.Socket[Any] = ctx.socket(zmq.PAIR)
    b: zmq.Socket[Any] = ctx.socket(zmq.PAIR)
    for sock in (a, b):
        sock.setsockopt(zmq.LINGER, 0)
    b.setsockopt(zmq.RCVTIMEO, int(WAIT * 1000))
    try:
        b.bind(endpoint)
        a.connect(endpoint)  # the connecting side has its pipe at once: no Again
        send_frames(a, (b"one", b"two", b"three"))
        send_frames(a, (b"solo",))
        assert b.recv_multipart() == [b"one", b"two", b"three"]
        assert b.recv_multipart() == [b"solo"]
    finally:
        a.close(linger=0)
        b.close(linger=0)
