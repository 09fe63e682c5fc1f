"""check_store: every kind of fault is found and named, a healthy store passes.

Executions are built with the real reducer (make_event + apply), stored in the memory twin
(the same record rules as LMDB), then damaged one way at a time.
"""

from __future__ import annotations

from typing import Any

import pytest

from tamma_actors import _verify
from tamma_actors._admin import verify_store
from tamma_actors._keys import DEFINITIONS, EVENTS, EXECUTIONS, SNAPSHOTS, event_key, id_key
from tamma_actors._state import ExecutionState, apply, make_event, to_summary
from tamma_actors._store import MemoryStore, RecordTxn, Write


def _events(
    eid: str, *, steps: int = 2, complete: bool = True, output: Any = None
) -> tuple[list[Any], ExecutionState]:
    """An execution's events; each step's output is ``output``, or ``{"n": its name}``."""
    state = ExecutionState(id=eid)
    out: list[dict[str, Any]] = []
    names = [f"s{i}" for i in range(steps)]

    def emit(etype: str, **data: Any) -> None:
        event = make_event(state, etype, 1000.0 + state.seq, **data)
        apply(state, event)
        out.append(event)

    emit("workflow.created", workflow_id="w", digest="d1", steps=names, inputs={"k": 1})
    emit("workflow.started")
    for name in names if complete else names[:1]:
        emit("step.ready", step=name)
        emit("step.dispatched", step=name, attempt=1)
        emit("step.started", step=name, attempt=1, worker="w1")
        data = {"n": name} if output is None else output
        emit("step.completed", step=name, attempt=1, output=data, duration_ms=1.0)
    if complete:
        emit("workflow.completed")
    return out, state


def _store(*eids: str, snapshot_at: int | None = 4, output: Any = None) -> MemoryStore:
    store = MemoryStore()
    for eid in eids:
        events, state = _events(eid, output=output)
        snap = None
        if snapshot_at is not None:
            partial = ExecutionState(id=eid)
            for ev in events[:snapshot_at]:
                apply(partial, ev)
            snap = partial.to_dict()
        store.commit(
            [
                Write(
                    eid,
                    events=events,
                    summary=to_summary(state),
                    snapshot=snap,
                    definition=("d1", {"name": "w"}),
                )
            ]
        )
    return store


def _raw(store: MemoryStore, fn: Any) -> None:
    def run(txn: RecordTxn) -> None:
        fn(txn)

    store._transact(run)


def test_a_healthy_store_passes() -> None:
    report = verify_store(_store("e1", "e2"))
    assert report.ok, report.problems
    assert report.executions == 2 and report.events == 2 * 11
    assert report.to_dict() == {
        "ok": True,
        "executions": 2,
        "events": 22,
        "problems": [],
        "damaged": False,
    }


def test_a_summary_key_that_is_no_execution_id_is_reported_not_raised() -> None:
    """In a damaged file a page of the events can stand in the summaries' tree: the keys
    there hold a NUL. The check raised on the first and reported nothing."""
    store = _store("e1")
    summary = store.read(lambda view: view.get(EXECUTIONS, id_key("e1")))
    _raw(store, lambda txn: txn.put(EXECUTIONS, event_key("e1", 1), summary))
    report = verify_store(store)
    bad = event_key("e1", 1).decode()
    assert [p for p in report.problems if p.startswith("executions: ")] == [
        f"executions: id {bad!r} must not contain NUL (it separates key parts)"
    ]
    assert not report.damaged


def test_a_nan_in_the_data_is_equal_to_itself_through_the_snapshot() -> None:
    """A NaN a step returned (msgpack keeps it) is decoded once from the snapshot and once
    from the event: the two states are the same, though ``==`` says a NaN is not."""
    store = _store("e1", snapshot_at=7, output={"x": float("nan")})  # after s0's output
    report = verify_store(store)
    assert report.ok, report.problems


def test_a_snapshot_that_disagrees_with_the_log_is_named() -> None:
    store = _store("e1")
    events, _ = _events("e1")
    wrong = ExecutionState(id="e1")
    for ev in events[:4]:
        apply(wrong, ev)
    wrong.context = {"k": 2}  # what a buggy snapshot writer might have stored
    store.commit([Write("e1", snapshot=wrong.to_dict())])
    report = verify_store(store)
    assert report.problems == [
        "execution e1: snapshot (seq 4) + replay differs from the full replay in context"
    ]


def test_a_snapshot_that_does_not_decode_into_a_state_is_named() -> None:
    store = _store("e1")
    store.commit([Write("e1", snapshot={"seq": 2, "steps": {"s0": {"bogus": 1}}, "nope": 1})])
    store.commit([Write("e1", snapshot={"seq": 2, "steps": "not a map"})])
    (problem,) = verify_store(store).problems
    assert problem.startswith("execution e1: the snapshot path does not rebuild the state")


def test_a_summary_that_disagrees_with_the_events_is_named() -> None:
    store = _store("e1")
    store.commit([Write("e1", summary={"id": "e1", "status": "running", "seq": 11})])
    (problem,) = verify_store(store).problems
    assert "summary disagrees with its events" in problem and "status 'running'" in problem
    assert "'completed'" in problem
    # a summary's current step, where it has one, is checked too (older ones have none)
    wrong_step = {**to_summary(_events("e1")[1]), "current_step": "nowhere"}
    store.commit([Write("e1", summary=wrong_step)])
    (problem,) = verify_store(store).problems
    assert "current_step 'nowhere' (events say None)" in problem


def _waiting(store: MemoryStore, eid: str, rest: Any, definition: dict[str, Any]) -> None:
    """An execution whose one step, a wait, runs until 1030: its summary holds ``rest``."""
    state = ExecutionState(id=eid)
    events = []
    for etype, data in (
        ("workflow.created", {"workflow_id": "w", "digest": "d2", "steps": ["w"], "inputs": {}}),
        ("workflow.started", {}),
        ("step.ready", {"step": "w"}),
        ("step.dispatched", {"step": "w", "attempt": 1}),
        ("step.started", {"step": "w", "attempt": 1, "worker": None, "deadline": 1030.0}),
    ):
        event = make_event(state, etype, 1000.0 + state.seq, **data)
        apply(state, event)
        events.append(event)
    summary = {**to_summary(state), "rest": rest}
    store.commit([Write(eid, events=events, summary=summary, definition=("d2", definition))])


def test_a_summary_rest_time_that_its_events_do_not_give_is_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    wait = {"name": "w", "steps": [{"name": "w", "implementation": "wait",
                                    "config": {"seconds": 30}}]}  # fmt: skip
    parsed: list[str] = []
    parse = _verify.parse_workflow
    monkeypatch.setattr(
        _verify, "parse_workflow", lambda d, **kw: parsed.append(d["name"]) or parse(d, **kw)
    )
    store = MemoryStore()
    _waiting(store, "right", 1030.0, wait)
    _waiting(store, "wrong", 9999.0, wait)
    assert verify_store(store).problems == [
        "execution wrong: summary rest 9999.0 disagrees with its events (they say 1030.0)"
    ]
    assert parsed == ["w"]  # one definition: parsed once for both executions
    broken = MemoryStore()
    _waiting(broken, "e", 1030.0, {"name": "w", "steps": []})
    _waiting(broken, "f", 1030.0, {"name": "w", "steps": []})
    problems = verify_store(broken).problems
    assert [p.split(":")[0] for p in problems] == ["execution e", "execution f"]
    assert all("its definition does not load:" in p for p in problems)


def test_orphans_missing_definitions_and_empty_logs_are_named() -> None:
    store = _store("e1", "e2", "e3")
    _raw(store, lambda t: t.delete(EXECUTIONS, id_key("e1")))
    _raw(store, lambda t: t.delete(DEFINITIONS, id_key("d1")))
    for seq in range(1, 12):
        _raw(store, lambda t, s=seq: t.delete(EVENTS, event_key("e3", s)))
    _raw(store, lambda t: t.delete(SNAPSHOTS, id_key("e3")))
    problems = verify_store(store).problems
    assert "execution e1: has events but no summary" in problems
    assert "execution e1: has a snapshot but no summary" in problems
    assert "execution e2: workflow definition d1 is missing" in problems
    assert "execution e3: has a summary but no events" in problems


def test_a_log_that_does_not_replay_is_named() -> None:
    store = MemoryStore()
    bad = [
        {"seq": 1, "type": "workflow.created", "timestamp": 1.0, "data": {}},  # lacks steps
    ]
    store.commit([Write("e1", events=bad, summary={"id": "e1", "status": "pending", "seq": 1})])
    (problem,) = verify_store(store).problems
    assert problem.startswith("execution e1: the event log does not replay")


@pytest.mark.parametrize("damage", ["value", "key"])
def test_damaged_records_are_named_by_key_and_the_execution_is_not_replayed(damage: str) -> None:
    store = _store("e1")
    key = event_key("e1", 3)
    if damage == "value":
        _raw(store, lambda t: t.put(EVENTS, key, b"\x00\x00\x00\x00junk"))
    else:
        _raw(store, lambda t: t.put(EVENTS, b"short", b"\x00\x00\x00\x00junk"))
    problems = verify_store(store).problems
    if damage == "value":
        assert any(key.hex() in p and "checksum" in p for p in problems)
        assert "execution e1: its event log has damaged records; not replayed" in problems
    else:
        assert any(b"short".hex() in p for p in problems)


def test_damaged_summaries_and_unreadable_keys_are_named_once() -> None:
    store = _store("e1", "e2")
    _raw(store, lambda t: t.put(EXECUTIONS, id_key("e2"), b"\x00\x00\x00\x00bad"))
    _raw(store, lambda t: t.put(EXECUTIONS, b"\xff\xfe", b"\x00\x00\x00\x00bad"))
    _raw(store, lambda t: t.put(SNAPSHOTS, b"\xff\xfe", b"\x00\x00\x00\x00bad"))
    problems = verify_store(store).problems
    assert any(id_key("e2").hex() in p and "checksum" in p for p in problems)
    assert sum("fffe" in p for p in problems) >= 2
    assert not any("e1" in p for p in problems)  # the healthy execution passes
