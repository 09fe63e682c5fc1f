"""WorkflowEngine: the story's ``IWorkflowEngine``, in process.

``initialize(config)`` starts a whole node inside the calling process — its LMDB store,
its local worker processes, its sockets — and ``shutdown()`` stops it; in between, every
operation of the story's interface is a blocking call that returns the same typed records
as :class:`tamma_actors.Client`. It is the same engine that ``tamma-node run`` serves over
ZeroMQ, so a program may embed the engine and still let ``tamma`` look at it.

Calls are thread-safe (each one is a message to an actor); ``shutdown()`` is idempotent,
and the object is a context manager.
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from pydantic import ValidationError

from tamma_actors._client import Client
from tamma_actors._client import _validated as validated
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
from tamma_actors._protocol import InvalidRequest, StartArgs

__all__ = ["WorkflowEngine"]

T = TypeVar("T")


def _as_sent(what: str, value: Any) -> Any:
    """``value`` as the engine would have it from a client: encoded and decoded as the
    wire does (a tuple becomes a list). What cannot be sent (a date, a set, an object) is
    refused here, naming it, instead of failing the execution's first commit."""
    try:
        return unpack(pack(value))
    except CodecError as exc:
        raise InvalidRequest(f"invalid {what}: {exc}") from exc


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
        sent = _as_sent("inputs", dict(inputs or {}))
        try:  # the same rules as over the wire, in one pass
            StartArgs.model_validate({"workflow": {}, "inputs": sent, "id": execution_id})
        except ValidationError as exc:
            errors = exc.errors()
            if any(e["loc"][:1] == ("id",) for e in errors):
                raise InvalidRequest(f"invalid execution id {execution_id!r}: {exc}") from exc
            where = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors)
            raise InvalidRequest(f"invalid inputs: {where}") from exc
        definition, source = Client._definition(config_or_path)
        future = self._engine.start_workflow(
            definition, sent, source=source, requested_id=execution_id
        )
        return self._execution(future)

    def pause_workflow(self, execution_id: str) -> WorkflowExecution:
        return self._execution(self._engine.pause_workflow(execution_id))

    def resume_workflow(self, execution_id: str) -> WorkflowExecution:
        return self._execution(self._engine.resume_workflow(execution_id))

    def abort_workflow(self, execution_id: str, reason: str | None = None) -> WorkflowExecution:
        future = self._engine.abort_workflow(execution_id, reason)
        return self._execution(future)

    # -- monitoring ----------------------------------------------------------------------

    def get_workflow(self, execution_id: str) -> WorkflowExecution:
        return self._execution(self._engine.get_workflow(execution_id))

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
        try:
            wanted = WorkflowFilter.model_validate(filter or {})
        except ValidationError as exc:
            raise InvalidRequest(f"invalid workflow filter: {exc}") from exc
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
        future = self._engine.get_workflow_status(execution_id)
        return validated(WorkflowStatusInfo, self._result(future))

    def get_events(self, execution_id: str, from_seq: int = 0) -> list[WorkflowEvent]:
        events = self._result(self._engine.get_events(execution_id, from_seq))
        return [validated(WorkflowEvent, e) for e in events]

    def wait(self, execution_id: str, timeout: float | None = None) -> WorkflowExecution:
        """Block until the execution ends, or ``timeout`` passes (then its current record)."""
        future = self._engine.wait(execution_id, timeout)
        limit = None if timeout is None else timeout + self.timeout
        return validated(WorkflowExecution, future.result(limit))

    def health(self) -> dict[str, Any]:
        return self._result(self._engine.health())

    # -- step management -----------------------------------------------------------------

    def execute_step(
        self, execution_id: str, step: str, context: Any = None, *, timeout: float = 300.0
    ) -> StepResult:
        """Run one step once, outside the execution's schedule (see ``Client``)."""
        sent = _as_sent("context", context)
        future = self._engine.execute_step(execution_id, step, sent, timeout=timeout)
        return validated(StepResult, self._result(future, timeout + self.timeout))

    def retry_step(self, execution_id: str, step: str) -> WorkflowExecution:
        return self._execution(self._engine.retry_step(execution_id, step))
