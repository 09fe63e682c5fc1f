"""The engine side of subflow steps: start (or re-attach to) a child and report its end.

A parent supervisor chooses its child's id and commits it before anything starts, so
after a restart :meth:`EngineChildren.run` finds the child in the store and only waits for
it; a child that was never started (the node stopped between the parent's commit and the
child's) is started then, under that same id.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from tamma_actors._errors import (
    Problem,
    StoreWriterLost,
    SubflowTooDeep,
    TammaError,
    WorkflowError,
)
from tamma_actors._models import WorkflowConfig
from tamma_actors._step_types import ChildRun
from tamma_actors._store import Store
from tamma_actors._timers import TimerService
from tamma_actors._workflow_file import read_workflow_mapping

__all__ = [
    "ANY_FILE",
    "EngineChildren",
    "WorkflowFiles",
    "WorkflowNames",
    "resolve_workflow",
    "subflow_file",
    "unreadable_subflow_files",
]

log = logging.getLogger(__name__)

_TERMINAL = frozenset({"completed", "failed", "aborted"})
_REWAIT_S = 0.05  # a child not yet re-activated during recovery: ask again shortly
# A child's start or wait refused because the store writer died (StoreWriterLost): asked
# again after this, while the node restarts its writer (a start under the child's id is
# made once, so one that landed unconfirmed is found, not made twice).
_WRITER_BACK_S = 0.2
_READ_S = 10.0  # the most a child's status may take to read before steering it
MAX_DEPTH = 16  # subflows within subflows; deeper is taken for a workflow that runs itself
Outcome = dict[str, Any] | BaseException


class _Engine(Protocol):
    def start_workflow(
        self,
        definition: dict[str, Any],
        inputs: dict[str, Any],
        *,
        source: str | None = None,
        execution_id: str | None = None,
        parent: str | None = None,
    ) -> Future[dict[str, Any]]: ...

    def wait(self, execution_id: str, timeout: float | None = None) -> Future[dict[str, Any]]: ...

    def pause_workflow(
        self, execution_id: str, reason: str | None = None
    ) -> Future[dict[str, Any]]: ...

    def get_workflow_status(self, execution_id: str) -> Future[dict[str, Any]]: ...

    def resume_workflow(self, execution_id: str) -> Future[dict[str, Any]]: ...

    def abort_workflow(
        self, execution_id: str, reason: str | None = None
    ) -> Future[dict[str, Any]]: ...


@dataclass(frozen=True)
class WorkflowFiles:
    """Where a subflow may read its workflow file: anywhere (``dirs`` None), or only
    inside one of ``dirs`` once symbolic links are followed (none at all when empty).

    A subflow's file is read by the node, on the node's machine, so a caller that may
    start workflows but is not trusted with the node's files must not name any file:
    what a file holds would come back in the step's error.
    """

    dirs: tuple[Path, ...] | None = None

    def allowed(self, path: Path) -> Path:
        """The path to read for ``path``: itself, or within ``dirs`` the file it resolves
        to (read as checked: a link changed meanwhile is not followed elsewhere); else
        :class:`WorkflowError` naming why."""
        if self.dirs is None:
            return path
        if not self.dirs:
            raise WorkflowError(
                f"subflow workflow file {str(path)!r}: this node has tokens and no "
                "workflow_dirs, so it reads no workflow file for a subflow (configure "
                "workflow_dirs, or name a workflow the node has run before)"
            )
        real = path.resolve()
        if any(real.is_relative_to(root.resolve()) for root in self.dirs):
            return real
        raise WorkflowError(
            f"subflow workflow file {str(path)!r} is outside the node's workflow_dirs "
            f"({', '.join(str(root) for root in self.dirs)})"
        )


ANY_FILE = WorkflowFiles()  # a node whose callers are all trusted: every one is admin


_Latest = tuple[float, str, str]  # a name's last start: its time, id and digest


class WorkflowNames:
    """Which stored definition each workflow name means for a subflow: that of the
    execution of that name created last (by its start time; ties by id: a client may name
    its executions, so ids alone are no order).

    Found by one pass over every stored summary, the first time a name is asked for, then
    kept: each start this node commits is noted (:meth:`created`), and a deletion
    (:meth:`deleted`) makes the next question pass over the store again. Each subflow by
    name used to pass over every summary: ~0.6 s a start at 100,000 executions.
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._lock = threading.Lock()  # guards what follows
        self._latest: dict[str, _Latest] | None = None  # name -> (start time, id, digest)
        self._noted: list[tuple[str, str, str, float]] | None = None  # starts during a pass
        self._deletions = 0
        self._passing = threading.Lock()  # one pass over the store at a time

    def created(self, eid: str, name: str, digest: str, started: float) -> None:
        """A start of ``name`` under ``eid`` with ``digest``, made at ``started``, was
        committed."""
        with self._lock:
            if self._latest is not None:
                _newer(self._latest, eid, name, digest, started)
            elif self._noted is not None:
                self._noted.append((eid, name, digest, started))

    def definition(self, digest: str) -> dict[str, Any] | None:
        found = self._store.get_definition(digest)
        return None if found is None else dict(found)

    def deleted(self) -> None:
        """Executions were deleted: the next question passes over the store again."""
        with self._lock:
            self._deletions += 1
            self._latest = None

    def digest(self, name: str) -> str | None:
        """The digest of the definition ``name`` means, or None if no execution has it."""
        with self._lock:
            if self._latest is not None:
                return _digest(self._latest, name)
        with self._passing:
            with self._lock:
                if self._latest is not None:  # made by the pass this one waited for
                    return _digest(self._latest, name)
                self._noted, deletions = [], self._deletions
            latest: dict[str, _Latest] = {}
            try:
                for summary in self._store.iter_summaries():
                    workflow, digest = summary.get("workflow_id"), summary.get("digest")
                    if isinstance(workflow, str) and isinstance(digest, str):
                        started = _started(summary.get("start_time"))
                        _newer(latest, str(summary.get("id")), workflow, digest, started)
            finally:
                with self._lock:
                    noted, self._noted = self._noted or [], None
            with self._lock:
                for eid, workflow, digest, started in noted:
                    _newer(latest, eid, workflow, digest, started)
                if deletions == self._deletions:  # none during the pass: it is current
                    self._latest = latest
            return _digest(latest, name)


def _started(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def _newer(latest: dict[str, _Latest], eid: str, name: str, digest: str, started: float) -> None:
    if name not in latest or (started, eid) >= latest[name][:2]:
        latest[name] = (started, eid, digest)


def _digest(latest: dict[str, _Latest], name: str) -> str | None:
    found = latest.get(name)
    return None if found is None else found[2]


def subflow_file(workflow: str, parent_source: str | None) -> Path | None:
    """The file a subflow's ``workflow`` names (relative to the parent's own file when it
    came from one), or None when it names a workflow by its name."""
    if not (workflow.endswith((".yaml", ".yml", ".json")) or "/" in workflow):
        return None
    path = Path(workflow)
    if not path.is_absolute() and parent_source and Path(parent_source).suffix:
        path = Path(parent_source).parent / path
    return path


def unreadable_subflow_files(
    cfg: WorkflowConfig, source: str | None, files: WorkflowFiles
) -> list[Problem]:
    """A problem for each subflow step of ``cfg`` whose workflow file ``files`` would not
    let the node read: found when the workflow starts, not when the step runs."""
    if files.dirs is None:
        return []
    problems = []
    for i, step in enumerate(cfg.steps):
        workflow = step.config.get("workflow") if step.type == "subflow" else None
        path = subflow_file(workflow, source) if isinstance(workflow, str) else None
        if path is None:
            continue
        try:
            files.allowed(path)
        except WorkflowError as exc:
            problems.append(Problem(f"steps[{i}].config.workflow", str(exc)))
    return problems


def resolve_workflow(
    workflow: str,
    parent_source: str | None,
    names: WorkflowNames,
    files: WorkflowFiles = ANY_FILE,
) -> tuple[dict[str, Any], str | None]:
    """The definition a subflow names: a file (relative to the parent's own file when it
    came from one; only where ``files`` allows) or the name of a workflow this node has
    run before (its latest definition)."""
    path = subflow_file(workflow, parent_source)
    if path is not None:
        return read_workflow_mapping(files.allowed(path), regular_only=True), str(path)
    digest = names.digest(workflow)
    definition = None if digest is None else names.definition(digest)
    if definition is None:
        raise WorkflowError(
            f"subflow workflow {workflow!r} is neither a workflow file nor a workflow "
            "this node knows"
        )
    return definition, f"definition {workflow}"


class EngineChildren:
    """:class:`~tamma_actors._step_types.Children` over an engine and its store."""

    def __init__(
        self,
        engine: _Engine,
        store: Store,
        timers: TimerService,
        files: WorkflowFiles = ANY_FILE,
    ) -> None:
        self._engine = engine
        self._store = store
        self._timers = timers
        self.files = files
        self.names = WorkflowNames(store)
        # how deeply each live child is nested (kept in memory: a runaway guard, not a rule)
        self._depth: dict[str, int] = {}
        self._lock = threading.Lock()
        # Starts and steering run here, one at a time in the order the parents' commits
        # asked for them, not on the writer's callback thread that asks: finding a
        # definition may read a file or pass over the store. In order, so a pause asked
        # after a start reaches the child that start made.
        self._serial = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tamma-subflows")

    def close(self) -> None:
        """Drop what was not started yet: the parents re-attach to their children (or start
        them) when the node starts again."""
        self._serial.shutdown(wait=False, cancel_futures=True)

    def _in_order(self, child_id: str, action: Callable[[], None]) -> None:
        def logged() -> None:
            try:
                action()
            except Exception:  # a parent's effect: one failure must not stop the next
                log.exception("child %s: start or steering failed", child_id)

        try:
            self._serial.submit(logged)
        except RuntimeError:  # closed: the node is stopping
            log.info("child %s: not started or steered now (shutting down)", child_id)

    def run(self, run: ChildRun, done: Callable[[Outcome], None]) -> None:
        self._in_order(run.child_id, lambda: self._run(run, done))

    def _run(self, run: ChildRun, done: Callable[[Outcome], None]) -> None:
        with self._lock:
            above = self._depth.get(run.parent_id)
        if above is None:  # not started by this process: its line is in the store
            above = self._stored_depth(run.parent_id)
        depth = above + 1
        with self._lock:
            self._depth[run.child_id] = depth

        def finished(outcome: Outcome) -> None:
            if isinstance(outcome, StoreWriterLost):  # not the child's failure: again
                log.info("child %s: %s; asked again shortly", run.child_id, outcome)
                self._later(run.child_id, _WRITER_BACK_S, lambda: self.run(run, done))
                return
            with self._lock:
                self._depth.pop(run.child_id, None)
            done(outcome)

        if self._store.get_summary(run.child_id) is not None:
            self._wait(run.child_id, finished)
            return
        if depth > MAX_DEPTH:
            finished(
                SubflowTooDeep(
                    f"subflows nest deeper than {MAX_DEPTH} levels: does {run.workflow!r} "
                    "start itself?"
                )
            )
            return
        self._start(run, finished)

    def _stored_depth(self, eid: str) -> int:
        """How many parents above ``eid`` (each child's first event names its parent),
        read up to one past the limit."""
        depth = 0
        while depth <= MAX_DEPTH:
            try:
                first = self._store.read_events(eid, 1, 1)
            except TammaError:  # unreadable: the guard counts what it could read
                break
            parent = first[0]["data"].get("parent") if first else None
            if not isinstance(parent, str):
                break
            depth, eid = depth + 1, parent
        return depth

    def _start(self, run: ChildRun, done: Callable[[Outcome], None]) -> None:
        try:
            definition, source = resolve_workflow(
                run.workflow, run.parent_source, self.names, self.files
            )
        except TammaError as exc:
            done(exc)
            return
        except Exception as exc:  # the parent must hear of it: its step would wait for good
            log.exception("child %s: its workflow %r could not be read", run.child_id, run.workflow)
            done(WorkflowError(f"subflow workflow {run.workflow!r} could not be read: {exc!r}"))
            return
        try:
            started = self._engine.start_workflow(
                definition,
                run.inputs,
                source=source,
                execution_id=run.child_id,
                parent=run.parent_id,
            )
        except TammaError as exc:  # the engine answers with a failed future; be sure
            done(exc)
            return

        def on_started(fut: Future[dict[str, Any]]) -> None:
            exc = fut.exception()
            if exc is not None:
                done(exc)
            else:
                self._wait(run.child_id, done)

        started.add_done_callback(on_started)

    def _wait(self, child_id: str, done: Callable[[Outcome], None]) -> None:
        def on_end(fut: Future[dict[str, Any]]) -> None:
            exc = fut.exception()
            if exc is not None:
                done(exc)
                return
            record = fut.result()
            if record.get("status") in _TERMINAL:
                done(record)
                return
            # Recovery re-activates executions one by one: this child is not live yet.
            self._later(child_id, _REWAIT_S, lambda: self._wait(child_id, done))

        self._engine.wait(child_id).add_done_callback(on_end)

    def _later(self, child_id: str, delay: float, action: Callable[[], None]) -> None:
        try:
            self._timers.call_later(delay, action)
        except TammaError:  # the node is stopping; the parent re-attaches on restart
            log.info("child %s: not started or waited for any more (shutting down)", child_id)

    def _paused_for(self, child_id: str, reason: str | None) -> bool:
        """Whether the child is paused with ``reason`` (read here, on the serial thread, so
        that a pause asked after this check cannot be overtaken by its resume)."""
        try:
            status = self._engine.get_workflow_status(child_id).result(_READ_S)
        except TammaError as exc:  # not started after all, or unreadable: nothing to resume
            log.debug("child %s: not resumed: %s", child_id, exc)
            return False
        except TimeoutError:
            log.warning("child %s: its status took over %gs; not resumed", child_id, _READ_S)
            return False
        return status.get("status") == "paused" and status.get("reason") == reason

    def control(self, child_id: str, action: str, reason: str | None = None) -> None:
        self._in_order(child_id, lambda: self._control(child_id, action, reason))

    def _control(self, child_id: str, action: str, reason: str | None) -> None:
        if action == "pause":
            fut = self._engine.pause_workflow(child_id, reason)
        elif action == "resume":
            fut = self._engine.resume_workflow(child_id)
        elif action == "resume_if_paused_by":
            if not self._paused_for(child_id, reason):
                return
            fut = self._engine.resume_workflow(child_id)
        else:
            fut = self._engine.abort_workflow(child_id, reason)

        def logged(f: Future[dict[str, Any]]) -> None:
            if f.exception() is not None:  # it may have ended meanwhile: nothing to steer
                log.debug("child %s: %s not applied: %s", child_id, action, f.exception())

        fut.add_done_callback(logged)
