"""PoolActor on a Dispatcher: pykka semantics without a thread per actor."""

from __future__ import annotations

import gc
import os
import queue
import re
import threading
import tracemalloc
import uuid
import weakref
from collections import defaultdict
from collections.abc import Iterator
from types import TracebackType
from typing import Any, cast

import pykka
import pytest
from pykka import ActorDeadError, ActorRef, ActorRegistry, ThreadingFuture
from pykka._envelope import Envelope

from tamma_actors._dispatch import Dispatcher, PoolActor, _PoolInbox

WAIT = 10.0


@pytest.fixture
def dispatcher() -> Iterator[Dispatcher]:
    with Dispatcher(threads=4, batch=16) as pool:
        try:
            yield pool
        finally:
            ActorRegistry.stop_all(timeout=WAIT)


class Echo(PoolActor):
    def __init__(self, dispatcher: Dispatcher) -> None:
        super().__init__(dispatcher)
        self.started_on: str | None = None
        self.seen: list[Any] = []
        self.failures: list[BaseException | None] = []
        self.stopped = threading.Event()
        self.failed = threading.Event()

    def on_start(self) -> None:
        self.started_on = threading.current_thread().name

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, threading.Event):
            message.wait(WAIT)
            return "released"
        if message == "boom":
            raise ValueError("boom")
        if isinstance(message, tuple) and message[0] == "hold":
            message[1].set()
            message[2].wait(WAIT)
            return "released"
        if isinstance(message, tuple) and message[0] == "close":
            message[1].close(timeout=WAIT)
            return "closed"
        if message == "exit":
            raise SystemExit(1)
        self.seen.append(message)
        return message

    def double(self, x: int) -> int:
        return 2 * x

    def on_failure(
        self,
        exception_type: type[BaseException] | None,
        exception_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.failures.append(exception_value)
        self.failed.set()

    def on_stop(self) -> None:
        self.stopped.set()


def test_ask_tell_proxy_and_on_start_on_the_pool(dispatcher: Dispatcher) -> None:
    ref = Echo.start(dispatcher)
    ref.tell("a")
    assert ref.ask("b", timeout=WAIT) == "b"
    proxy = ref.proxy()
    assert proxy.double(21).get(timeout=WAIT) == 42
    assert proxy.seen.get(timeout=WAIT) == ["a", "b"]
    assert proxy.started_on.get(timeout=WAIT).startswith("tamma-dispatch-")
    assert ref in dispatcher.actors()
    assert ref not in ActorRegistry.get_all()  # the dispatcher keeps its actors
    assert ref.stop(timeout=WAIT) is True
    assert ref not in dispatcher.actors()


def test_an_actor_is_made_without_a_system_call_and_has_what_pykka_gives_one(
    dispatcher: Dispatcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pykka names each actor with ``uuid4``, whose ``os.urandom`` gives up the GIL: a
    start would wait to get it back behind every busy thread of the node."""
    plain = pykka.ThreadingActor()  # what pykka's own __init__ sets up, to compare with

    def no_urandom(n: int) -> bytes:
        raise AssertionError("os.urandom called while making an actor")

    monkeypatch.setattr(os, "urandom", no_urandom)
    actors = [Echo(dispatcher) for _ in range(200)]
    assert set(vars(plain)) <= set(vars(actors[0]))
    urns = {a.actor_urn for a in actors}
    assert len(urns) == len(actors)
    assert all(uuid.UUID(urn[len("urn:uuid:") :]).version == 4 for urn in urns)
    ref = actors[0].started()
    assert ref.ask("made", timeout=WAIT) == "made" and ref.actor_urn == actors[0].actor_urn
    ref.stop(timeout=WAIT)


def test_an_ask_that_raises_returns_the_error(dispatcher: Dispatcher) -> None:
    ref = Echo.start(dispatcher)
    with pytest.raises(ValueError, match="boom"):
        ref.ask("boom", timeout=WAIT)
    assert ref.ask("alive", timeout=WAIT) == "alive"


class Relay(PoolActor):
    """Forwards numbered messages to a peer and records what it receives."""

    def __init__(self, dispatcher: Dispatcher, index: int, sink: _Sink) -> None:
        super().__init__(dispatcher)
        self.index = index
        self.sink = sink
        self.peer: ActorRef[Relay] | None = None

    def on_receive(self, message: Any) -> Any:
        kind, value = message
        if kind == "peer":
            self.peer = value
        elif kind == "burst":
            assert self.peer is not None
            for seq in range(value):
                self.peer.tell(("msg", (self.index, seq)))
        else:
            self.sink.record(self.index, value)
        return None


class _Sink:
    def __init__(self, expected: int) -> None:
        self.lock = threading.Lock()
        self.by_pair: dict[tuple[int, int], list[int]] = defaultdict(list)
        self.count = 0
        self.expected = expected
        self.done = threading.Event()

    def record(self, receiver: int, value: tuple[int, int]) -> None:
        sender, seq = value
        with self.lock:
            self.by_pair[(sender, receiver)].append(seq)
            self.count += 1
            if self.count == self.expected:
                self.done.set()


def test_thousands_of_actors_deliver_in_order_per_sender(dispatcher: Dispatcher) -> None:
    actors, per_peer = 2000, 20
    sink = _Sink(actors * per_peer * 2)
    refs = [Relay.start(dispatcher, i, sink) for i in range(actors)]
    # Each actor sends to its two neighbours' ... via two bursts to the next one and the
    # previous one, so every receiver interleaves two senders.
    for i, ref in enumerate(refs):
        ref.tell(("peer", refs[(i + 1) % actors]))
    for ref in refs:
        ref.tell(("burst", per_peer))
    for i, ref in enumerate(refs):
        ref.tell(("peer", refs[(i - 1) % actors]))
    for ref in refs:
        ref.tell(("burst", per_peer))
    assert sink.done.wait(WAIT * 3)
    assert len(sink.by_pair) == actors * 2
    assert all(seqs == list(range(per_peer)) for seqs in sink.by_pair.values())


def _tell_many(ref: ActorRef[Any], count: int) -> None:
    for i in range(count):
        ref.tell(i)


def test_an_actor_never_runs_on_two_threads_at_once() -> None:
    class Counter(PoolActor):
        guard = threading.Lock()
        overlaps = 0
        total = 0

        def on_receive(self, message: Any) -> Any:
            # Another thread inside this actor would find the guard taken.
            if not self.guard.acquire(blocking=False):
                self.overlaps += 1
                return None
            try:
                self.total += sum(range(50)) // 1225  # some work, so threads can interleave
            finally:
                self.guard.release()
            return None

    with Dispatcher(threads=4, batch=1) as pool:
        ref = Counter.start(pool)
        senders = [threading.Thread(target=_tell_many, args=(ref, 2000)) for _ in range(4)]
        for t in senders:
            t.start()
        for t in senders:
            t.join(WAIT)
        proxy = ref.proxy()
        assert proxy.total.get(timeout=WAIT) == 8000
        assert proxy.overlaps.get(timeout=WAIT) == 0
        ref.stop(timeout=WAIT)


def test_a_busy_actor_yields_after_a_batch() -> None:
    order: list[str] = []

    class Logger(PoolActor):
        def __init__(self, dispatcher: Dispatcher, name: str) -> None:
            super().__init__(dispatcher)
            self.name = name

        def on_receive(self, message: Any) -> Any:
            if isinstance(message, threading.Event):
                message.wait(WAIT)
            else:
                order.append(f"{self.name}{message}")
            return None

    with Dispatcher(threads=1, batch=8) as pool:
        busy, quiet = Logger.start(pool, "busy"), Logger.start(pool, "quiet")
        gate = threading.Event()
        busy.tell(gate)  # holds the only thread while both queues fill
        for i in range(100):
            busy.tell(i)
        quiet.tell(0)
        gate.set()
        busy.ask("sync", timeout=WAIT)
        quiet.ask("sync", timeout=WAIT)
        assert order.index("quiet0") <= 8
        assert [e for e in order if e.startswith("busy")][:100] == [f"busy{i}" for i in range(100)]
        ActorRegistry.stop_all(timeout=WAIT)


def test_on_turn_end_runs_once_after_the_messages_of_a_turn() -> None:
    turns: list[list[Any]] = []

    class Turns(PoolActor):
        def __init__(self, dispatcher: Dispatcher) -> None:
            super().__init__(dispatcher)
            self.current: list[Any] = []

        def on_receive(self, message: Any) -> Any:
            if isinstance(message, threading.Event):
                message.wait(WAIT)
            else:
                self.current.append(message)
            return None

        def on_turn_end(self) -> None:
            if self.current:
                turns.append(self.current)
            self.current = []

    with Dispatcher(threads=1, batch=4) as pool:
        ref = Turns.start(pool)
        gate = threading.Event()
        ref.tell(gate)  # holds the only thread while the inbox fills
        for i in range(7):
            ref.tell(i)
        gate.set()
        ref.ask("sync", timeout=WAIT)
        # batch 4: the gate and 0-2, then 3-6, then the ask
        assert turns == [[0, 1, 2], [3, 4, 5, 6], ["sync"]]
        ActorRegistry.stop_all(timeout=WAIT)


def test_a_failing_on_turn_end_stops_the_actor(dispatcher: Dispatcher) -> None:
    holder: list[Echo] = []

    class BadTurn(Echo):
        def on_start(self) -> None:
            holder.append(self)

        def on_turn_end(self) -> None:
            if "fail" in self.seen:
                raise ValueError("turn end failed")

    ref = BadTurn.start(dispatcher)
    assert ref.ask("fine", timeout=WAIT) == "fine"
    ref.tell("fail")
    assert ref.actor_stopped.wait(WAIT)
    assert holder[0].failed.wait(WAIT)
    assert [str(e) for e in holder[0].failures] == ["turn end failed"]
    with pytest.raises(ActorDeadError):
        ref.ask("after", timeout=WAIT)


def test_a_told_message_that_raises_stops_the_actor(dispatcher: Dispatcher) -> None:
    holder: list[Echo] = []

    class Kept(Echo):
        def on_start(self) -> None:
            holder.append(self)

    ref = Kept.start(dispatcher)
    ref.tell("boom")
    assert ref.actor_stopped.wait(WAIT)
    with pytest.raises(ActorDeadError):
        ref.ask("after", timeout=WAIT)
    assert holder[0].failed.wait(WAIT)  # on_failure runs after the actor is marked stopped
    assert [str(e) for e in holder[0].failures] == ["boom"]
    assert not holder[0].stopped.is_set()
    assert ref not in dispatcher.actors()


def test_told_messages_queued_behind_a_turn_that_raises_go_to_on_dropped(
    dispatcher: Dispatcher, caplog: pytest.LogCaptureFixture
) -> None:
    dropped: list[Any] = []

    class Dropping(Echo):
        def on_dropped(self, message: Any) -> None:
            if message == "unanswerable":
                raise RuntimeError("cannot answer")
            dropped.append(message)

    entered, go = threading.Event(), threading.Event()
    ref = Dropping.start(dispatcher)
    ref.tell(("hold", entered, go))  # told: when it returns, the next message raises
    assert entered.wait(WAIT)
    ref.tell("boom")
    ref.tell("later")
    ref.tell("unanswerable")
    asked = ref.ask("asked", block=False)
    go.set()
    with pytest.raises(ActorDeadError):
        asked.get(timeout=WAIT)  # an ask is failed as before, not handed to on_dropped
    assert dropped == ["later"]
    assert "could not answer a message it dropped" in caplog.text


def test_on_start_failure_stops_the_actor(dispatcher: Dispatcher) -> None:
    class BadStart(PoolActor):
        def on_start(self) -> None:
            raise RuntimeError("no")

    ref = BadStart.start(dispatcher)
    assert ref.actor_stopped.wait(WAIT)
    with pytest.raises(ActorDeadError):
        ref.ask("x", timeout=WAIT)


def test_stop_with_pending_asks_fails_them(dispatcher: Dispatcher) -> None:
    ref = Echo.start(dispatcher)
    gate = threading.Event()
    blocked = ref.ask(gate, block=False)
    stopping = ref.stop(block=False)
    late = [ref.ask(i, block=False) for i in range(5)]
    gate.set()
    assert blocked.get(timeout=WAIT) == "released"
    assert stopping.get(timeout=WAIT) is True
    for future in late:
        with pytest.raises(ActorDeadError):
            future.get(timeout=WAIT)
    # A second stop of a dead actor answers False, as pykka's does.
    assert ref.stop(timeout=WAIT) is False


def test_a_stopped_actor_is_freed_at_once_and_late_asks_still_name_it(
    dispatcher: Dispatcher,
) -> None:
    """Its inbox lets go of it: no actor-inbox cycle is left for the cyclic collector, and
    an ask that comes later is failed with the actor's name all the same."""
    ref = Echo.start(dispatcher)
    ref.ask("warm", timeout=WAIT)
    name = str(ref)
    gone = weakref.ref(cast(_PoolInbox, ref.actor_inbox).actor)
    was_enabled = gc.isenabled()
    gc.disable()  # what frees it must be reference counting, not a collection
    try:
        assert ref.stop(timeout=WAIT) is True
        assert cast(_PoolInbox, ref.actor_inbox).actor is None
        assert gone() is None
    finally:
        if was_enabled:
            gc.enable()
    # One that passed the ref's liveness check just before the stop reaches the inbox:
    late: ThreadingFuture[Any] = ThreadingFuture()
    ref.actor_inbox.put(Envelope("late", reply_to=late))
    with pytest.raises(ActorDeadError, match=re.escape(f"{name} stopped before handling")):
        late.get(timeout=WAIT)


def test_base_exception_stops_every_actor_without_blocking_the_pool() -> None:
    with Dispatcher(threads=1) as pool:
        bystander = Echo.start(pool)
        ref = Echo.start(pool)
        with pytest.raises(ActorDeadError):
            ref.ask("exit", timeout=WAIT)
        assert bystander.actor_stopped.wait(WAIT)


def test_close_with_live_actors_does_not_hang() -> None:
    pool = Dispatcher(threads=2)
    idle = Echo.start(pool)
    busy = Echo.start(pool)
    idle.ask("warm", timeout=WAIT)
    # The busy actor closes the pool from inside its own turn: that turn ends after the
    # current message, and what it still had queued is failed, never run.
    closing = busy.ask(("close", pool), block=False)
    queued = busy.ask("queued", block=False)
    assert closing.get(timeout=WAIT) == "closed"
    with pytest.raises(ActorDeadError):
        queued.get(timeout=WAIT)
    assert not idle.is_alive() and not busy.is_alive()
    assert idle not in pool.actors()
    with pytest.raises(ActorDeadError):
        idle.ask("after close", timeout=WAIT)
    pool.close()  # idempotent
    late = Echo.start(pool)  # starting on a closed dispatcher gives a dead actor
    assert not late.is_alive()


def test_close_from_outside_stops_the_threads() -> None:
    pool = Dispatcher(threads=3)
    ref = Echo.start(pool)
    ref.ask("warm", timeout=WAIT)
    pool.close(timeout=WAIT)
    assert not ref.is_alive()
    assert all(not t.is_alive() for t in pool._threads)


def test_close_gives_up_on_a_stuck_turn(caplog: pytest.LogCaptureFixture) -> None:
    pool = Dispatcher(threads=1)
    ref = Echo.start(pool)
    entered, gate = threading.Event(), threading.Event()
    held = ref.ask(("hold", entered, gate), block=False)
    queued = ref.ask("queued", block=False)
    assert entered.wait(WAIT)
    pool.close(timeout=0.01)  # the only thread is stuck until the gate opens
    assert "did not finish its turn" in caplog.text
    assert not ref.is_alive()
    with pytest.raises(ActorDeadError):
        queued.get(timeout=WAIT)
    inbox = ref.actor_inbox
    assert isinstance(inbox, _PoolInbox)
    inbox.abandon()  # already dead: nothing more happens
    assert inbox.empty()
    with pytest.raises(queue.Empty):
        inbox.get()
    gate.set()
    assert held.get(timeout=WAIT) == "released"
    pool._threads[0].join(WAIT)
    assert not pool._threads[0].is_alive()


def test_inbox_get_pops_in_order() -> None:
    with Dispatcher(threads=1) as pool:
        entered, gate = threading.Event(), threading.Event()
        ref = Echo.start(pool)
        ref.tell(("hold", entered, gate))
        assert entered.wait(WAIT)
        ref.tell("a")
        ref.tell("b")
        inbox = ref.actor_inbox
        assert isinstance(inbox, _PoolInbox)
        # pykka's ActorInbox protocol: get() takes the oldest waiting message.
        assert not inbox.empty()
        assert inbox.get().message == "a"
        gate.set()
        assert ref.ask("c", timeout=WAIT) == "c"
        assert ref.proxy().seen.get(timeout=WAIT) == ["b", "c"]
        ref.stop(timeout=WAIT)


def test_dispatcher_arguments_are_checked() -> None:
    with pytest.raises(ValueError):
        Dispatcher(threads=0)


def test_idle_pool_actors_are_cheap() -> None:
    count = 20_000  # (W6 parks 100,000 executions; under tracemalloc this many take ~6 s)
    with Dispatcher(threads=2) as pool:
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.take_snapshot()
        refs = [PoolActor.start(pool) for _ in range(count)]
        refs[-1].ask("sync", timeout=WAIT)  # every start turn has run (FIFO run queue)
        gc.collect()
        after = tracemalloc.take_snapshot()
        tracemalloc.stop()
        total = sum(s.size_diff for s in after.compare_to(before, "filename"))
        per_actor = total / count
        print(f"\n{per_actor:.0f} bytes per idle PoolActor ({count} actors)")
        assert per_actor < 8 * 1024
        assert len(pool.actors()) == count
        # Stopping them costs the same per actor however many live: no registry list scan.
        stops = [ref.stop(block=False) for ref in refs]
        for stop in stops:
            stop.get(timeout=WAIT)
        assert pool.actors() == []
