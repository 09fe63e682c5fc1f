"""Record-level checks of one consistent store view: undecodable records (named by key),
event sequence gaps, snapshots beyond the last event. ``RecordStore.verify`` and the
whole-store check (``_verify.check_store``) both start from :func:`verify_records`.
"""

from __future__ import annotations

from tamma_actors._errors import TammaError
from tamma_actors._keys import (
    BREAKERS,
    DEFINITIONS,
    EVENTS,
    EXECUTIONS,
    HISTORY,
    META,
    SNAPSHOTS,
    decode_record,
    parse_event_key,
    parse_id_key,
)
from tamma_actors._store_records import RecordView, seq_of

__all__ = ["verify_records"]


def _verify_events(view: RecordView, problems: list[str]) -> dict[str, int]:
    last: dict[str, int] = {}
    for key, data in view.scan(EVENTS):
        try:
            eid, seq = parse_event_key(key)
        except TammaError as exc:
            problems.append(str(exc))
            continue
        if seq != last.get(eid, 0) + 1:
            problems.append(f"execution {eid}: events jump from seq {last.get(eid, 0)} to {seq}")
        last[eid] = seq  # even when the value is bad, so one bad record is one problem
        try:
            inner = decode_record(key, data, db=EVENTS).get("seq")
        except TammaError as exc:
            problems.append(str(exc))
            continue
        if inner != seq:
            problems.append(f"execution {eid}: event {seq} carries seq {inner!r}")
    return last


def verify_records(view: RecordView) -> list[str]:
    """Every problem found in one consistent view; empty when the store is healthy."""
    problems: list[str] = []
    last = _verify_events(view, problems)
    for db in (EXECUTIONS, SNAPSHOTS, HISTORY, DEFINITIONS, BREAKERS, META):
        for key, data in view.scan(db):
            try:
                record = decode_record(key, data, db=db)
                if db == SNAPSHOTS:
                    eid = parse_id_key(key)
                    seq = seq_of(record)
                    if seq is None or seq > last.get(eid, 0):
                        problems.append(
                            f"execution {eid}: snapshot seq {record.get('seq')!r} is beyond "
                            f"the last event ({last.get(eid, 0)})"
                        )
            except TammaError as exc:
                problems.append(str(exc))
    return problems
