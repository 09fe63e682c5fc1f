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


class _FailingStore:
    def delete_terminal_before(self, ts: float, terminal: Any) -> list[str]:
        raise StoreError("disk on fire")


class _FailingEngine:
    def admin_cleanup(self, days: float) -> Future[dict[str, Any]]:
        fut: Future[dict[str, Any]] = Future()
        fut.set_exception(TammaError("cleanup refused"))
        return fut


def test_retention_failures_are_logged_and_the_node_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    node = Node(load_node_config(None, data_dir=tmp_path, workers=0, retention_days=1.0))
    try:
        node._store = _FailingStore()  # type: ignore[assignment]
        node._engine = _FailingEngine()  # type: ignore[assignment]
        with caplog.at_level(logging.ERROR):
            node._retention()
            node._retention_in_background()
        messages = [r.getMessage() for r in caplog.records]
        assert "retention cleanup failed: disk on fire" in messages
        assert "retention cleanup failed: cleanup refused" in messages
    finally:
        node._store = None
        node._engine = None
        node.close()
