"""The node's small parts: the writer slot's full-store latch, the pool slot's drain
hold, and retention that fails without taking the node down."""

from __future__ import annotations

import logging
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pykka
import pytest

from tamma_actors._config import load_node_config
from tamma_actors._errors import (
    StoreClosed,
    StoreError,
    StoreFull,
    StoreUnwritable,
    StoreWriterLost,
    TammaError,
)
from tamma_actors._node import Node, _ActorSlot, _WriterSlot
from tamma_actors._store import Write
from tamma_actors._workerpool import Cancel, Dispatch


class _Writer:
    """Answers every submit at once with ``outcome``."""

    def __init__(self, outcome: BaseException | None) -> None:
        self.outcome = outcome

    def submit(self, write: Write, done: Any) -> None:
        done(self.outcome)


class _Ref:
    def __init__(self) -> None:
        self.told: list[Any] = []

    def tell(self, message: Any) -> None:
        self.told.append(message)


def test_the_writer_slot_latches_the_first_store_full(caplog: pytest.LogCaptureFixture) -> None:
    slot = _WriterSlot()
    with pytest.raises(StoreClosed):
        slot.submit(Write("e"))
    assert slot.refusal() is None
    seen: list[BaseException | None] = []
    slot.writer = _Writer(StoreError("other"))  # type: ignore[assignment]
    slot.submit(Write("e"), seen.append)
    assert slot.full is None and slot.refusal() is None
    first = StoreFull("map ceiling")
    slot.writer = _Writer(first)  # type: ignore[assignment]
    slot.submit(Write("e"), seen.append)
    slot.writer = _Writer(StoreFull("later"))  # type: ignore[assignment]
    with caplog.at_level(logging.ERROR):
        slot.submit(Write("e2"))  # no callback: the failure is logged
    assert slot.full is first and seen[-1] is first
    refusal = slot.refusal()
    assert isinstance(refusal, StoreFull)
    assert "accepts no new work" in str(refusal) and "map ceiling" in str(refusal)
    assert any("store write for e2 failed" in r.message for r in caplog.records)


def test_the_writer_slot_latches_an_unwritable_disk() -> None:
    slot = _WriterSlot()
    failed = StoreUnwritable("mdb_txn_commit: the disk refused the write (I/O error)")
    slot.writer = _Writer(failed)  # type: ignore[assignment]
    slot.submit(Write("e"), lambda exc: None)
    assert slot.full is failed
    refusal = slot.refusal()
    assert isinstance(refusal, StoreUnwritable)
    assert "accepts no new work" in str(refusal) and "Check the disk" in str(refusal)


def test_the_pool_slot_holds_dispatches_while_draining() -> None:
    slot = _ActorSlot()
    with pytest.raises(pykka.ActorDeadError):
        slot.tell(Cancel("t"))
    ref = _Ref()
    slot.ref = ref  # type: ignore[assignment]
    dispatch = Dispatch({"task_id": "e/s/1"}, None)  # type: ignore[arg-type]
    slot.tell(dispatch)
    slot.hold_dispatch = True
    slot.tell(Dispatch({"task_id": "e/s/2"}, None))  # type: ignore[arg-type]
    slot.tell(Cancel("e/s/1"))
    assert ref.told == [dispatch, Cancel("e/s/1")]


class _FailingEngine:
    def __init__(self, *errors: TammaError) -> None:
        self.errors = list(errors)

    def admin_cleanup(self, days: float) -> Future[dict[str, Any]]:
        fut: Future[dict[str, Any]] = Future()
        fut.set_exception(self.errors.pop(0))
        return fut


def test_retention_failures_are_logged_and_the_node_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    node = Node(load_node_config(None, data_dir=tmp_path, workers=0, retention_days=1.0))
    try:
        failing = _FailingEngine(StoreError("disk on fire"), TammaError("cleanup refused"))
        node._engine = failing  # type: ignore[assignment]
        with caplog.at_level(logging.ERROR):
            node._retention()
            node._retention_in_background()
        messages = [r.getMessage() for r in caplog.records]
        assert "retention cleanup failed: disk on fire" in messages
        assert "retention cleanup failed: cleanup refused" in messages
    finally:
        node._engine = None
        node.close()


class _Closed:
    """A writer closing under its callers: it refuses with ``refusal``."""

    def __init__(self, refusal: StoreClosed) -> None:
        self.refusal = refusal
        self.on_submit: Any = None

    def submit(self, write: Write, done: Any) -> None:
        if self.on_submit is not None:
            self.on_submit()
        raise self.refusal


def test_a_writer_refusing_while_it_is_replaced_counts_as_lost() -> None:
    """A supervisor may take the slot's writer just before the supervision loop swaps it
    out and closes it: its refusal must have the execution re-read (StoreWriterLost), not
    stop it until the node's next start."""
    slot = _WriterSlot()
    old = _Closed(StoreClosed("the store writer is closed"))
    old.on_submit = lambda: setattr(slot, "writer", None)  # swapped out meanwhile
    slot.writer = old  # type: ignore[assignment]
    with pytest.raises(StoreWriterLost, match=r"being restarted \(the store writer is closed\)"):
        slot.submit(Write("e"))
    old.on_submit = lambda: setattr(slot, "writer", _Writer(None))  # a new one already in
    slot.writer = old  # type: ignore[assignment]
    with pytest.raises(StoreWriterLost):
        slot.submit(Write("e"))
    stopping = _Closed(StoreClosed("the store writer is closed"))
    slot.writer = stopping  # type: ignore[assignment]
    with pytest.raises(StoreClosed) as closed:  # closed and still the slot's: the node stops
        slot.submit(Write("e"))
    assert type(closed.value) is StoreClosed
    lost = _Closed(StoreWriterLost("its process exited"))
    slot.writer = lost  # type: ignore[assignment]
    with pytest.raises(StoreWriterLost, match="its process exited"):
        slot.submit(Write("e"))
