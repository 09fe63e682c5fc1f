"""The whole-store check behind ``tamma admin verify`` and ``tamma-node verify``.

``check_store`` runs inside one consistent read view, so it can run while the node writes:
it sees the store as of one commit. It reports, each naming the key or execution:

- every record that fails its checksum, is truncated or does not decode;
- event sequences that are not gap-free from 1, snapshots beyond the last event;
- index consistency: an events log or snapshot without its summary, a summary whose
  ``seq``/``status`` disagrees with its events, or whose ``rest`` time (recovery rests
  the execution on it alone) is not the one its events and definition give, a missing
  workflow definition;
- the snapshot path (snapshot + the events after it) giving a different state from a
  replay of the whole log, or a log that does not replay at all.

A damaged LMDB file (as opposed to damaged records in a sound file) can make liblmdb abort
the process that reads it: the commands run this check in a child process
(``_store_check.verify_file``), and such a report has ``damaged`` set.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tamma_actors._codec import same_data
from tamma_actors._errors import TammaError
from tamma_actors._execution_rest import rest_until
from tamma_actors._keys import (
    DEFINITIONS,
    EVENTS,
    EXECUTIONS,
    SNAPSHOTS,
    decode_record,
    execution_prefix,
    id_key,
    parse_event_key,
    parse_id_key,
    prefix_end,
)
from tamma_actors._state import ExecutionState, replay, to_summary
from tamma_actors._store import RecordView, verify_records
from tamma_actors._workflow_file import parse_workflow

if TYPE_CHECKING:
    from tamma_actors._models import WorkflowConfig

__all__ = ["VerifyReport", "check_store"]

_SUMMARY_FIELDS = ("status", "seq", "workflow_id", "digest")
# Checked where present: summaries written before these fields lack them.
_SUMMARY_FIELDS_SINCE = ("current_step",)


@dataclass
class VerifyReport:
    """What ``check_store`` found; ``ok`` when ``problems`` is empty. ``damaged``: the
    LMDB file itself is damaged (the one problem says where); nothing else was checked."""

    executions: int = 0
    events: int = 0
    problems: list[str] = field(default_factory=list)
    damaged: bool = False

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "executions": self.executions,
            "events": self.events,
            "problems": list(self.problems),
            "damaged": self.damaged,
        }


def _ids_with_records(view: RecordView, db: str) -> Iterator[str]:
    """Distinct execution ids of an id+seq keyed sub-database: one seek per execution."""
    start = b""
    while (found := next(iter(view.scan(db, start)), None)) is not None:
        try:
            eid = parse_event_key(found[0])[0]
            end = prefix_end(execution_prefix(eid))
        except TammaError:
            start = found[0] + b"\x00"  # a malformed key: verify_records reports it
            continue
        yield eid
        start = end


def _events_of(view: RecordView, eid: str) -> list[dict[str, Any]] | None:
    """The decoded event log, or None when a record is damaged (reported elsewhere)."""
    prefix = execution_prefix(eid)
    try:
        return [
            decode_record(k, d, db=EVENTS) for k, d in view.scan(EVENTS, prefix, prefix_end(prefix))
        ]
    except TammaError:
        return None


def _differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """The fields of two states that differ (a NaN in a step's data is equal to itself)."""
    keys = sorted(set(a) | set(b))
    out = [k for k in keys if k not in ("steps",) and not same_data(a.get(k), b.get(k))]
    steps_a, steps_b = a.get("steps", {}), b.get("steps", {})
    out += [
        f"steps.{s}"
        for s in sorted(set(steps_a) | set(steps_b))
        if not same_data(steps_a.get(s), steps_b.get(s))
    ]
    return out


# A definition parsed (or why it does not load), by digest: a store holds thousands of
# executions of a few definitions, each parsed once, as recovery does (~45 us each).
_Configs = dict[str, "WorkflowConfig | TammaError"]


def _check_execution(view: RecordView, eid: str, report: VerifyReport, configs: _Configs) -> None:
    problems = report.problems
    key = id_key(eid)
    try:
        summary = decode_record(key, view.get(EXECUTIONS, key) or b"", db=EXECUTIONS)
    except TammaError:
        return  # the damaged summary is reported by verify_records
    events = _events_of(view, eid)
    if events is None:
        problems.append(f"execution {eid}: its event log has damaged records; not replayed")
        return
    report.events += len(events)
    if not events:
        problems.append(f"execution {eid}: has a summary but no events")
        return
    try:
        full = replay(eid, events)
    except TammaError as exc:
        problems.append(f"execution {eid}: the event log does not replay: {exc}")
        return
    expected = to_summary(full)
    wrong = [f for f in _SUMMARY_FIELDS if summary.get(f) != expected.get(f)]
    wrong += [f for f in _SUMMARY_FIELDS_SINCE if f in summary and summary[f] != expected.get(f)]
    if wrong:
        detail = ", ".join(
            f"{f} {summary.get(f)!r} (events say {expected.get(f)!r})" for f in wrong
        )
        problems.append(f"execution {eid}: summary disagrees with its events: {detail}")
    if full.digest and view.get(DEFINITIONS, id_key(full.digest)) is None:
        problems.append(f"execution {eid}: workflow definition {full.digest} is missing")
    elif "rest" in summary:
        _check_rest(eid, summary["rest"], full, _config(view, full.digest, configs), problems)
    _check_snapshot(view, eid, events, full, problems)


def _config(view: RecordView, digest: str, configs: _Configs) -> WorkflowConfig | TammaError:
    """The stored definition ``digest`` parsed, or why it does not load (see ``_Configs``)."""
    found = configs.get(digest)
    if found is None:
        try:
            key = id_key(digest)
            definition = decode_record(key, view.get(DEFINITIONS, key) or b"", db=DEFINITIONS)
            found = parse_workflow(definition, source="its definition", stored=True)
        except TammaError as exc:
            found = exc
        configs[digest] = found
    return found


def _check_rest(
    eid: str,
    rest: Any,
    full: ExecutionState,
    config: WorkflowConfig | TammaError,
    problems: list[str],
) -> None:
    """A summary's ``rest`` time must be the one its state gives: recovery would otherwise
    park the execution until then without reading it."""
    if isinstance(config, TammaError):
        problems.append(f"execution {eid}: its definition does not load: {config}")
        return
    expected = rest_until(full, config)
    if rest != expected:
        problems.append(
            f"execution {eid}: summary rest {rest!r} disagrees with its events "
            f"(they say {expected!r})"
        )


def _check_snapshot(
    view: RecordView,
    eid: str,
    events: list[dict[str, Any]],
    full: ExecutionState,
    problems: list[str],
) -> None:
    key = id_key(eid)
    data = view.get(SNAPSHOTS, key)
    if data is None:
        return
    try:
        snapshot = decode_record(key, data, db=SNAPSHOTS)
        seq = int(snapshot["seq"])
        via_snapshot = replay(eid, [e for e in events if e["seq"] > seq], snapshot)
    except (TammaError, KeyError, TypeError, ValueError) as exc:
        problems.append(f"execution {eid}: the snapshot path does not rebuild the state: {exc}")
        return
    differ = _differences(via_snapshot.to_dict(), full.to_dict())
    if differ:
        problems.append(
            f"execution {eid}: snapshot (seq {seq}) + replay differs from the full replay "
            f"in {', '.join(differ)}"
        )


def _execution_id(key: bytes) -> str:
    """The execution id a summary or snapshot key holds (one with a NUL is another
    record's key: in a damaged file, a page of the events can stand in the summaries)."""
    eid = parse_id_key(key)
    id_key(eid)  # raises for a NUL
    return eid


def check_store(view: RecordView) -> VerifyReport:
    """Every fault of the store as seen by ``view`` (see the module docstring)."""
    report = VerifyReport(problems=verify_records(view))
    summaries: set[str] = set()
    for key, _ in view.scan(EXECUTIONS):
        try:
            summaries.add(_execution_id(key))
        except TammaError as exc:
            report.problems.append(f"{EXECUTIONS}: {exc}")
    report.executions = len(summaries)
    for eid in _ids_with_records(view, EVENTS):
        if eid not in summaries:
            report.problems.append(f"execution {eid}: has events but no summary")
    for key, _ in view.scan(SNAPSHOTS):
        try:
            eid = _execution_id(key)
        except TammaError:
            continue
        if eid not in summaries:
            report.problems.append(f"execution {eid}: has a snapshot but no summary")
    configs: _Configs = {}
    for eid in sorted(summaries):
        _check_execution(view, eid, report, configs)
    return report
