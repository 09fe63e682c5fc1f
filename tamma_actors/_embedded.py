"""WorkflowEngine: the story's ``IWorkflowEngine``, in process.

``initialize(config)`` starts a whole node inside the calling process — its LMDB store,
its local worker processes, its sockets — and ``shutdown()`` stops it; in between, every
operation of the story's interface is a blocking call that returns the same typed records
as :class:`tamma_actors.Client`. It is the same engine that ``tamma-node run`` serves over
ZeroMQ, so a program may embed the engine and still let ``tamma`` look at it.

Calls are thread-safe (each one is a message to an actor); ``shutdown()`` is idempotent,
and the object is a context manager. Each call's arguments are checked by the model the
control server checks the same request's with (``_protocol.OPS``), so a mistake raises the
``InvalidRequest`` a client gets for it.
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from pydantic import BaseModel

from tamma_actors._client import _validated as validated
from tamma_actors._client_args import (
    inputs_map,
    list_filter,
    unsendable_error,
    workflow_definition,
)
from tamma_actors._codec import pack, unpack
from tamma_actors._config import NodeConfig, load_node_config
from tamma_actors._engine import Engine
from tamma_actors._errors import CodecError, RequestTimeout, SupervisionError
from tamma_actors._models import (
    StepResult,
    WorkflowConfig,
    WorkflowEvent,
    WorkflowExecution,
    WorkflowFilter,
    WorkflowStatusInfo,
    WorkflowSummary,
)
from tamma_actors._node import Node
from tamma_actors._protocol import (
    LIST_MOST,
    MAX_WAIT_SECONDS,
    AbortArgs,
    EventsArgs,
    ExecuteArgs,
    ExecutionArgs,
    RetryArgs,
    StartArgs,
    WaitArgs,
    checked_args,
)

__all__ = ["WorkflowEngine"]

T = TypeVar("T")
A = TypeVar("A", bound=BaseModel)


def _as_sent(op: str, args: dict[str, Any]) -> dict[str, Any]:
    """``args`` as the engine would have them from a client: encoded and decoded as the
    wire does (a tuple becomes a list). What cannot be sent (a date, a set, an object) is
    refused here, naming its place, instead of failing the execution's first commit."""
    try:
        sent: dict[str, Any] = unpack(pack(args))
    except CodecError as exc:
        raise unsendable_error(op, args, exc) from exc
    return sent


def _checked(op: str, model: type[A], **args: Any) -> A:
    """``args`` checked as the control server checks ``op``'s (its model is ``model``):
    the same mistake raises the same ``InvalidRequest``."""
    checked = checked_args(op, args)
    assert isinstance(checked, model)
    return checked


class WorkflowEngine:
    """An in-process node. ``timeout`` bounds every call that is not itself a wait."""

    def __init__(self, timeout: float = 30.0) -> None:
        self.timeout = timeout
        self._node: Node | None = None

    # -- life cycle ----------------------------------------------------------------------

    def initialize(
        self, config: NodeConfig | Mapping[str, Any] | str | Path | None = None, **overrides: Any
    ) -> None:
        """Start the node: ``config`` is a NodeConfig, a mapping of settings, or the path
        of a node configuration file; ``overrides`` win over both (``data_dir=...``)."""
        if self._node is not None:
            raise SupervisionError("the engine is already initialized")
        if isinstance(config, NodeConfig):
            cfg = config.model_copy(update=overrides) if overrides else config
        elif isinstance(config, str | Path):
            cfg = load_node_config(Path(config), **overrides)
        else:
            cfg = load_node_config(None, **{**dict(config or {}), **overrides})
        self._node = Node(cfg).start()

    def shutdown(self) -> None:
        node, self._node = self._node, None
        if node is not None:
            node.close()

    def __enter__(self) -> WorkflowEngine:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.shutdown()

    @property
    def node(self) -> Node:
        if self._node is None:
            raise SupervisionError("the engine is not initialized (call initialize())")
        return self._node

    @property
    def _engine(self) -> Engine:
        return self.node.engine

    def _result(self, future: Future[T], timeout: float | None = None) -> T:
        limit = self.timeout if timeout is None else timeout
        try:
            return future.result(timeout=limit)
        except FutureTimeout:
            raise RequestTimeout(f"the engine did not answer within {limit:g}s") from None

    def _execution(
        self, future: Future[dict[str, Any]], timeout: float | None = None
    ) -> WorkflowExecution:
        return validated(WorkflowExecution, self._result(future, timeout))

    # -- workflow management -------------------------------------------------------------

    def start_workflow(
        self,
        config_or_path: WorkflowConfig | Mapping[str, Any] | str | Path,
        inputs: Mapping[str, Any] | None = None,
        *,
        execution_id: str | None = None,
    ) -> WorkflowExecution:
        """As :meth:`Client.start_workflow` (``execution_id`` included)."""
        definition, source = workflow_definition(config_or_path)
        sent = _as_sent("start", {"inputs": inputs_map(inputs), "id": execution_id})
        # The definition is checked by the engine, which reports every problem at once.
        args = _checked("start", StartArgs, workflow={}, **sent)
        future = self._engine.start_workflow(
            definition, args.inputs, source=source, requested_id=args.id
        )
        return self._execution(future)

    def pause_workflow(self, execution_id: str) -> WorkflowExecution:
        args = _checked("pause", ExecutionArgs, id=execution_id)
        return self._execution(self._engine.pause_workflow(args.id))

    def resume_workflow(self, execution_id: str) -> WorkflowExecution:
        args = _checked("resume", ExecutionArgs, id=execution_id)
        return self._execution(self._engine.resume_workflow(args.id))

    def abort_workflow(self, execution_id: str, reason: str | None = None) -> WorkflowExecution:
        args = _checked("abort", AbortArgs, id=execution_id, reason=reason)
        return self._execution(self._engine.abort_workflow(args.id, args.reason))

    # -- monitoring ----------------------------------------------------------------------

    def get_workflow(self, execution_id: str) -> WorkflowExecution:
        args = _checked("get", ExecutionArgs, id=execution_id)
        return self._execution(self._engine.get_workflow(args.id))

    def list_workflows(
        self, filter: WorkflowFilter | Mapping[str, Any] | None = None
    ) -> list[WorkflowExecution]:
        found = self._listed(filter, "record")
        return [validated(WorkflowExecution, r) for r in found]

    def list_summaries(
        self, filter: WorkflowFilter | Mapping[str, Any] | None = None
    ) -> list[WorkflowSummary]:
        """As ``list_workflows``, each execution's summary (see ``Client.list_summaries``)."""
        found = self._listed(filter, "summary")
        return [validated(WorkflowSummary, s) for s in found]

    def _listed(
        self, filter: WorkflowFilter | Mapping[str, Any] | None, view: str
    ) -> list[dict[str, Any]]:
        wanted = list_filter(filter)
        if wanted.limit == 0:
            return []
        future = self._engine.list_workflows(
            status=[s.value for s in wanted.status] if wanted.status else None,
            workflow_id=wanted.workflow_id,
            limit=wanted.limit,
            offset=wanted.offset,
            view=view,
        )
        found: list[dict[str, Any]] = self._result(future)
        return found

    def get_workflow_status(self, execution_id: str) -> WorkflowStatusInfo:
        args = _checked("status", ExecutionArgs, id=execution_id)
        future = self._engine.get_workflow_status(args.id)
        return validated(WorkflowStatusInfo, self._result(future))

    def get_events(
        self, execution_id: str, from_seq: int = 0, limit: int | None = None
    ) -> list[WorkflowEvent]:
        """The execution's events from ``from_seq`` on, at most ``limit`` of them. As a
        client's (which pages), any positive ``limit``: no reply frame bounds this one."""
        beyond = isinstance(limit, int) and not isinstance(limit, bool) and limit > LIST_MOST
        sent = None if beyond else limit
        args = _checked("events", EventsArgs, id=execution_id, from_seq=from_seq, limit=sent)
        wanted = limit if beyond else args.limit
        events = self._result(self._engine.get_events(args.id, args.from_seq, wanted))
        return [validated(WorkflowEvent, e) for e in events]

    def wait(self, execution_id: str, timeout: float | None = None) -> WorkflowExecution:
        """Block until the execution ends, or ``timeout`` passes (then its current record).
        A client waits in chunks of at most an hour, any ``timeout`` in all: so may this."""
        chunk = timeout
        if isinstance(timeout, int | float) and not isinstance(timeout, bool):
            timeout = max(0.0, timeout)  # as a client's: a past deadline is no error
            chunk = min(timeout, MAX_WAIT_SECONDS)
        args = _checked("wait", WaitArgs, id=execution_id, timeout=chunk)
        future = self._engine.wait(args.id, timeout)
        limit = None if timeout is None else timeout + self.timeout
        return validated(WorkflowExecution, future.result(limit))

    def health(self) -> dict[str, Any]:
        return self._result(self._engine.health())

    # -- step management -----------------------------------------------------------------

    def execute_step(
        self, execution_id: str, step: str, context: Any = None, *, timeout: float = 300.0
    ) -> StepResult:
        """Run one step once, outside the execution's schedule (see ``Client``)."""
        sent = _as_sent("execute", {"context": context})
        args = _checked("execute", ExecuteArgs, id=execution_id, step=step, timeout=timeout, **sent)
        future = self._engine.execute_step(args.id, args.step, args.context, timeout=args.timeout)
        return validated(StepResult, self._result(future, args.timeout + self.timeout))

    def retry_step(self, execution_id: str, step: str) -> WorkflowExecution:
        args = _checked("retry", RetryArgs, id=execution_id, step=step)
        return self._execution(self._engine.retry_step(args.id, args.step))
