"""The execution supervisor's commit cycle (a mixin of
:class:`~tamma_actors._execution.ExecutionSupervisor`).

A turn's decisions are events: :meth:`CommitCycle._emit` applies each one to the in-memory
state and adds it to the turn's :class:`Batch`, together with the effects
(``_after_commit``) and replies (``_reply_after_commit``) that must wait for it. At the end
of the actor's turn (``on_turn_end``: all the messages it handled in one go) ``_flush``
hands the batch to the StoreWriter as one write; only when the
writer reports it committed are the replies answered and the effects run
(:func:`run_batch`: replies first, then tells). A turn without events still waits for the
batches before it (``_after_tail``), so no reply describes state that is not yet durable.
A failed commit fails the batch's replies and stops the execution: its memory ran ahead of
the store, and the store is right.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tamma_actors._errors import StoreError, StoreWriterLost
from tamma_actors._eventbus import Publish
from tamma_actors._execution_rest import rest_until
from tamma_actors._fanout import detail_items
from tamma_actors._state import apply, make_event, to_record, to_summary
from tamma_actors._store import Write

if TYPE_CHECKING:
    import pykka

    from tamma_actors._deadlines import Deadlines
    from tamma_actors._execution import ExecutionDeps
    from tamma_actors._models import WorkflowConfig
    from tamma_actors._state import ExecutionState

__all__ = ["Batch", "CommitCycle", "Effect", "fail", "resolve", "run_batch"]

# The supervisor's log, wherever in its modules a message comes from.
log = logging.getLogger("tamma_actors._execution")

BIG_SNAPSHOT = 1 << 20  # bytes; see CommitCycle._maybe_snapshot
BIG_SNAPSHOT_WAIT = 4

Effect = Callable[[], None]


@dataclass
class Batch:
    events: list[dict[str, Any]] = field(default_factory=list)
    effects: list[Effect] = field(default_factory=list)
    replies: list[Future[dict[str, Any]]] = field(default_factory=list)
    # the step results this batch records: if its commit fails, they go back to the pool
    reports: list[Any] = field(default_factory=list)
    # What must wait for this batch's commit: later replies and effects that describe or
    # depend on state this batch has not yet made durable. Settled on the writer thread.
    lock: threading.Lock = field(default_factory=threading.Lock)
    settled: bool = False
    error: BaseException | None = None
    followers: list[Callable[[BaseException | None], None]] = field(default_factory=list)

    def then(self, fn: Callable[[BaseException | None], None]) -> None:
        with self.lock:
            if not self.settled:
                self.followers.append(fn)
                return
        fn(self.error)

    def settle(self, error: BaseException | None) -> None:
        """Called once its outcome has been acted on (replies answered, effects run):
        what it held is let go, since the supervisor keeps its last batch as ``_tail``
        and effects close over the supervisor (a cycle that left every ended execution's
        objects to the full collection)."""
        with self.lock:
            self.settled, self.error = True, error
            followers, self.followers = self.followers, []
            self.effects, self.replies, self.reports = [], [], []
        for fn in followers:
            fn(error)


class CommitCycle:
    if TYPE_CHECKING:
        state: ExecutionState
        cfg: WorkflowConfig
        deps: ExecutionDeps
        _definition: tuple[str, dict[str, Any]] | None
        _batch: Batch
        _tail: Batch | None
        _waiters: list[Future[dict[str, Any]]]
        _snapshot_seq: int
        _snapshot_bytes: int
        _bytes_since_snapshot: int
        _broken: bool
        _deadlines: Deadlines
        actor_ref: pykka.ActorRef[Any]

        def _hand_back(self, message: Any) -> None: ...

    def _emit(self, etype: str, **data: Any) -> None:
        event = make_event(self.state, etype, self.deps.clock(), **data)
        apply(self.state, event)
        self._batch.events.append(event)

    def _after_commit(self, effect: Effect) -> None:
        self._batch.effects.append(effect)

    def _reply_after_commit(self, reply: Future[dict[str, Any]] | None) -> None:
        if reply is not None:
            self._batch.replies.append(reply)

    def _flush(self) -> None:
        batch, self._batch = self._batch, Batch()
        if not batch.events:
            if self.state.terminal:  # made for a revival it refused: nothing keeps it live
                eid, me = self.state.id, self.actor_ref
                batch.effects.append(lambda: self.deps.on_terminal(eid, me))
            if batch.replies or batch.effects:
                record = to_record(self.state) if batch.replies else None
                self._after_tail(lambda exc: run_batch(self.state.id, batch, record, exc))
            return
        terminal = self.state.terminal
        if terminal:
            waiters, self._waiters = self._waiters, []
            batch.replies.extend(waiters)
        record = to_record(self.state) if batch.replies else None
        events = batch.events
        write = Write(
            execution_id=self.state.id,
            events=events,
            summary=to_summary(self.state, self._rest_hint()),
            snapshot=self._maybe_snapshot(terminal),
            definition=self._definition,
        ).encode()  # here, on a dispatcher thread: the writer's commit only puts bytes
        self._definition = None
        self._count_snapshot_bytes(write)
        if self.bus is not None:
            bus = self.bus
            packed = None if write.encoded is None else write.encoded.packed_events
            batch.effects.append(lambda: bus.tell(Publish(events, packed)))
        if terminal:
            eid = self.state.id
            self._deadlines.cancel_all()
            me = self.actor_ref
            batch.effects.append(lambda: self.deps.on_terminal(eid, me))

        def done(exc: BaseException | None) -> None:
            if exc is not None:
                self._on_commit_failed(exc, batch)
            else:
                run_batch(self.state.id, batch, record, None)
            batch.settle(exc)

        self._tail = batch
        try:
            self.deps.writer.submit(write, done)
        except StoreError as exc:  # refused at once (closed, or its writer is restarting)
            done(exc)

    def _rest_hint(self) -> float | None:
        """When the execution may rest as this batch leaves it, the time it next needs a
        supervisor, stored in its summary so that recovery rests it from that alone. Only
        waits timed (and the workflow's timeout) is the cheap first test: else a step is in
        flight or retrying, and it may not rest."""
        return rest_until(self.state, self.cfg) if self._deadlines.only_waits() else None

    def _after_tail(self, fn: Callable[[BaseException | None], None]) -> None:
        """Run ``fn`` once everything decided so far is committed (now, if it is)."""
        if self._batch.events:  # decided this turn, committed at its end
            self._batch.then(fn)
        elif self._tail is None:
            fn(None)
        else:
            self._tail.then(fn)

    def _reply_committed(self, reply: Future[dict[str, Any]], value: dict[str, Any]) -> None:
        """Answer a read with state that is durable: after the pending writes commit."""

        def answer(exc: BaseException | None) -> None:
            if exc is not None:
                fail(reply, exc)
            else:
                resolve(reply, value)

        self._after_tail(answer)

    @property
    def bus(self) -> pykka.ActorRef[Any] | None:
        return self.deps.bus

    def _maybe_snapshot(self, terminal: bool) -> dict[str, Any] | None:
        """The state to store with this write: at the end, and every ``snapshot_every``
        events, or, for a state of more steps or holding fan-out items, every as many
        events as it has steps and items (a snapshot copies each one: every 100 events, a
        10,000-item fan-out cost a quarter of its time, and a chain of 1,000 steps copied
        ~40 steps per step; a restart replays at most that many events instead).

        A snapshot of ``BIG_SNAPSHOT`` bytes or more waits, even at the end, until the
        events since the last one add up to its size (up to ``BIG_SNAPSHOT_WAIT`` times as
        many events): it copies all the data the steps returned so far, so a chain passing
        1 MB along wrote each step's data again at every snapshot (125 MB of snapshots for
        50 MB of events in 50 steps). Snapshots then cost no more bytes than the events do,
        and a read replays events of at most one snapshot's size."""
        since = self.state.seq - self._snapshot_seq
        steps = self.state.steps
        every = max(self.deps.snapshot_every, len(steps))
        if since >= every or terminal:  # only then the pass over the steps that counts items
            every = max(every, len(steps) + detail_items(st.detail for st in steps.values()))
        if not terminal and since < every:
            return None
        if (
            self._snapshot_bytes >= BIG_SNAPSHOT
            and self._bytes_since_snapshot < self._snapshot_bytes
            and since < BIG_SNAPSHOT_WAIT * every
        ):
            return None
        self._snapshot_seq = self.state.seq
        return self.state.to_dict()

    def _count_snapshot_bytes(self, write: Write) -> None:
        """What ``_maybe_snapshot`` weighs: the last snapshot's size and the event bytes
        stored since (a write that did not encode here is left out)."""
        encoded = write.encoded
        if encoded is None:
            return
        if encoded.snapshot is not None:
            self._snapshot_bytes, self._bytes_since_snapshot = len(encoded.snapshot), 0
        else:
            self._bytes_since_snapshot += sum(map(len, encoded.events))

    def _on_commit_failed(self, exc: BaseException, batch: Batch) -> None:
        log.error("execution %s: commit failed, execution stops: %s", self.state.id, exc)
        waiters, self._waiters = self._waiters, []  # the engine answers them from the store
        for reply in [*batch.replies, *waiters]:
            fail(reply, exc)
        self._broken = True  # the in-memory state ran ahead of the store; the store is right
        for report in batch.reports:  # not recorded: the supervisor that comes back gets them
            self._hand_back(report)
        self.deps.on_terminal(self.state.id, self.actor_ref)
        if isinstance(exc, StoreWriterLost):
            self.deps.on_commit_lost(self.state.id)
        elif type(exc) is StoreError:  # not the disk, not the writer: the record itself
            # (one that cannot be encoded): as a turn that raised, it is brought back from
            # the store a few times, then named in health, instead of left running unseen
            self.deps.on_failed(self.state.id, exc)


def resolve(reply: Future[dict[str, Any]], value: dict[str, Any] | None) -> None:
    if not reply.done() and value is not None:
        reply.set_result(value)


def fail(reply: Future[dict[str, Any]], exc: BaseException) -> None:
    if not reply.done():
        reply.set_exception(exc)


def run_batch(
    eid: str, batch: Batch, record: dict[str, Any] | None, exc: BaseException | None
) -> None:
    """A committed batch's consequences: replies first, then effects (tells)."""
    if exc is not None:
        for reply in batch.replies:
            fail(reply, exc)
        return
    for reply in batch.replies:
        resolve(reply, record)
    for effect in batch.effects:
        try:
            effect()
        except Exception:  # an effect is a tell; a dead target must not stop the others
            log.exception("execution %s: effect after commit failed", eid)
