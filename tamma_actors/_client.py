"""Client: the synchronous control client (one DEALER socket to a node's control ROUTER).

A client is **not thread-safe**: its socket may only be used by one thread at a time (give
each thread its own client). Replies are matched to requests by id; a reply with a foreign
id (a late answer to a request that timed out) is discarded. After a timeout the socket is
replaced, so a late reply can never be taken for the answer to the next request.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import zmq
from pydantic import BaseModel, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from tamma_actors._codec import pack, unpack
from tamma_actors._curve import curve_client
from tamma_actors._errors import (
    FrameTooLarge,
    ProtocolError,
    RequestTimeout,
    TammaError,
    TransportError,
    error_from_code,
)
from tamma_actors._models import (
    StepResult,
    WorkflowConfig,
    WorkflowEvent,
    WorkflowExecution,
    WorkflowFilter,
    WorkflowStatusInfo,
)
from tamma_actors._protocol import MAX_WAIT_SECONDS, make_request
from tamma_actors._status import is_terminal_execution
from tamma_actors._workflow_file import read_workflow_mapping

__all__ = ["DEFAULT_ENDPOINT", "WAIT_CHUNK_SECONDS", "Client", "ClientSettings", "resolve_endpoint"]

M = TypeVar("M", bound=BaseModel)
log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "ipc://var/control.sock"
# A wait longer than this is split into several server-side long polls.
WAIT_CHUNK_SECONDS = min(60.0, MAX_WAIT_SECONDS)


class ClientSettings(BaseSettings):
    """Client defaults from the environment: ``TAMMA_ENDPOINT``, ``TAMMA_DATA_DIR``,
    ``TAMMA_TOKEN``, ``TAMMA_CURVE_SERVER_KEY``."""

    model_config = SettingsConfigDict(env_prefix="TAMMA_", extra="ignore")

    endpoint: str | None = None
    data_dir: Path | None = None
    token: str | None = None
    curve_server_key: str | None = None


def resolve_endpoint(
    endpoint: str | None = None,
    data_dir: str | Path | None = None,
    settings: ClientSettings | None = None,
) -> str:
    """Explicit endpoint > ``ipc://<data_dir>/control.sock`` > environment > default."""
    if endpoint:
        return endpoint
    if data_dir is not None:
        return f"ipc://{Path(data_dir) / 'control.sock'}"
    settings = settings if settings is not None else ClientSettings()
    if settings.endpoint:
        return settings.endpoint
    if settings.data_dir is not None:
        return f"ipc://{settings.data_dir / 'control.sock'}"
    return DEFAULT_ENDPOINT


def _validated(model: type[M], value: Any) -> M:
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        raise ProtocolError(f"the node sent a malformed {model.__name__}: {exc}") from exc


class Client:
    """Synchronous control client; a context manager (``close()`` is idempotent)."""

    def __init__(
        self,
        endpoint: str | None = None,
        *,
        data_dir: str | Path | None = None,
        token: str | None = None,
        timeout: float = 30.0,
        max_frame_bytes: int = 8 << 20,
        curve_server_key: str | None = None,
    ) -> None:
        settings = ClientSettings()
        self.endpoint = resolve_endpoint(endpoint, data_dir, settings)
        self.token = token if token is not None else settings.token
        # The node's CURVE public key, for a tcp:// endpoint served with CURVE.
        self.curve_server_key = curve_server_key or settings.curve_server_key
        self.timeout = timeout
        self.max_frame_bytes = max_frame_bytes
        self._ids = itertools.count(1)
        self._context: zmq.Context[Any] = zmq.Context()
        self._sock: zmq.Socket[Any] | None = None
        self._closed = False
        self._sock = self._connect()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None
        self._context.term()

    def _connect(self) -> zmq.Socket[Any]:
        sock: zmq.Socket[Any] = self._context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, self.max_frame_bytes)
        try:
            curve_client(sock, self.endpoint, self.curve_server_key)
            sock.connect(self.endpoint)
        except zmq.ZMQError as exc:
            sock.close(linger=0)
            raise TransportError(f"cannot connect to {self.endpoint}: {exc}") from exc
        except TammaError:
            sock.close(linger=0)
            raise
        return sock

    def _reset(self) -> None:
        """Replace the socket: whatever the old one might still receive is dropped."""
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None
        self._sock = self._connect()

    # -- the raw request ------------------------------------------------------------------

    def request(self, op: str, args: Mapping[str, Any], *, timeout: float | None = None) -> Any:
        """Send one request and return its ``result``; an error reply raises the matching
        ``TammaError`` (always also a ``RemoteError``); no reply in time raises
        ``RequestTimeout``."""
        if self._closed or self._sock is None:
            raise TransportError("the client is closed")
        limit = self.timeout if timeout is None else timeout
        request_id = self._send_request(op, args, limit)
        reply = self._receive(request_id, time.monotonic() + limit)
        if reply is None:
            self._reset()
            raise RequestTimeout(f"no reply to {op!r} from {self.endpoint} within {limit:g}s")
        return self._result(reply)

    def request_many(
        self,
        op: str,
        args_list: Iterable[Mapping[str, Any]],
        *,
        window: int = 256,
        timeout: float | None = None,
    ) -> list[Any]:
        """Pipeline one request per ``args_list`` entry over the one socket, at most
        ``window`` in flight; return the results in order. Every reply is collected before
        the first error reply is raised. ``timeout`` bounds the wait for *each next* reply."""
        if self._closed or self._sock is None:
            raise TransportError("the client is closed")
        if window < 1:
            raise ValueError("window must be at least 1")
        limit = self.timeout if timeout is None else timeout
        pending = iter(args_list)
        index_of: dict[int, int] = {}
        replies: list[dict[str, Any] | None] = []
        exhausted = False
        while True:
            while not exhausted and len(index_of) < window:
                args = next(pending, None)
                if args is None:
                    exhausted = True
                    break
                request_id = self._send_request(op, args, limit)
                index_of[request_id] = len(replies)
                replies.append(None)
            if not index_of:
                break
            reply = self._receive_any(index_of, time.monotonic() + limit)
            if reply is None:
                self._reset()
                raise RequestTimeout(
                    f"{len(index_of)} {op!r} request(s) unanswered by {self.endpoint} "
                    f"within {limit:g}s"
                )
            replies[index_of.pop(reply["id"])] = reply
        return [self._result(reply) for reply in replies if reply is not None]

    def _send_request(self, op: str, args: Mapping[str, Any], limit: float) -> int:
        assert self._sock is not None
        request_id = next(self._ids)
        data = pack(make_request(request_id, op, args, self.token))
        if len(data) > self.max_frame_bytes:
            raise FrameTooLarge(
                f"{op} request of {len(data)} bytes exceeds the {self.max_frame_bytes}-byte cap"
            )
        try:
            try:
                self._sock.send(data, zmq.NOBLOCK)
            except zmq.Again:
                # No connection to the node right now (it is starting, restarting, or
                # refused our handshake): wait for one as long as for a reply.
                if not self._sock.poll(int(limit * 1000), zmq.POLLOUT):
                    self._reset()
                    raise RequestTimeout(
                        f"no connection to {self.endpoint} within {limit:g}s to send "
                        f"{op!r} (is the node up, and is its CURVE key the one given?)"
                    ) from None
                self._sock.send(data, zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            self._reset()
            raise TransportError(f"cannot send to {self.endpoint}: {exc}") from exc
        return request_id

    def _receive_any(self, wanted: Mapping[int, int], deadline: float) -> dict[str, Any] | None:
        assert self._sock is not None
        while True:
            remaining_ms = max(0, int((deadline - time.monotonic()) * 1000))
            if not self._sock.poll(remaining_ms, zmq.POLLIN):
                return None
            frames = self._sock.recv_multipart()
            try:
                reply = unpack(frames[-1], self.max_frame_bytes)
            except TammaError as exc:
                log.warning("discarding an undecodable reply from %s: %s", self.endpoint, exc)
                continue
            if isinstance(reply, dict) and reply.get("id") in wanted:
                return reply

    def _receive(self, request_id: int, deadline: float) -> dict[str, Any] | None:
        return self._receive_any({request_id: 0}, deadline)
        # A late reply to an earlier request: not ours, keep waiting.

    @staticmethod
    def _result(reply: dict[str, Any]) -> Any:
        if reply.get("ok") is True:
            return reply.get("result")
        error = reply.get("error")
        if not isinstance(error, dict):
            raise ProtocolError(f"malformed error reply: {reply!r}")
        raise error_from_code(
            str(error.get("code", "internal")),
            str(error.get("message", "")),
            error.get("details"),
        )

    # -- the engine's operations ------------------------------------------------------------

    def start_workflow(
        self,
        config_or_path: WorkflowConfig | Mapping[str, Any] | str | Path,
        inputs: Mapping[str, Any] | None = None,
    ) -> WorkflowExecution:
        """Start a workflow given as a file path (read here), a ``WorkflowConfig`` or a
        mapping; the execution is durable on the node when this returns."""
        definition, source = self._definition(config_or_path)
        args = {"workflow": definition, "inputs": dict(inputs or {}), "source": source}
        return self._execution(self.request("start", args))

    @staticmethod
    def _definition(
        config_or_path: WorkflowConfig | Mapping[str, Any] | str | Path,
    ) -> tuple[dict[str, Any], str | None]:
        if isinstance(config_or_path, str | Path):
            # Absolute: the node resolves a subflow's file against it, from its own cwd.
            return read_workflow_mapping(config_or_path), str(Path(config_or_path).resolve())
        if isinstance(config_or_path, WorkflowConfig):
            return config_or_path.model_dump(mode="json", exclude_none=True), None
        return dict(config_or_path), None

    def start_workflows(
        self,
        config_or_path: WorkflowConfig | Mapping[str, Any] | str | Path,
        inputs_list: Iterable[Mapping[str, Any]],
        *,
        window: int = 256,
    ) -> list[WorkflowExecution]:
        """Start one execution of the workflow per inputs mapping, pipelined (see
        ``request_many``); each is durable on the node when this returns."""
        definition, source = self._definition(config_or_path)
        calls = (
            {"workflow": definition, "inputs": dict(inputs), "source": source}
            for inputs in inputs_list
        )
        return [self._execution(r) for r in self.request_many("start", calls, window=window)]

    def pause_workflow(self, execution_id: str) -> WorkflowExecution:
        return self._execution(self.request("pause", {"id": execution_id}))

    def resume_workflow(self, execution_id: str) -> WorkflowExecution:
        return self._execution(self.request("resume", {"id": execution_id}))

    def abort_workflow(self, execution_id: str, reason: str | None = None) -> WorkflowExecution:
        return self._execution(self.request("abort", {"id": execution_id, "reason": reason}))

    def get_workflow(self, execution_id: str) -> WorkflowExecution:
        return self._execution(self.request("get", {"id": execution_id}))

    def list_workflows(
        self, filter: WorkflowFilter | Mapping[str, Any] | None = None
    ) -> list[WorkflowExecution]:
        if isinstance(filter, WorkflowFilter):
            args: dict[str, Any] = filter.model_dump(mode="json", exclude_none=True)
        else:
            args = dict(filter or {})
        if args.get("limit") == 0:
            return []  # the filter model allows an empty page; the wire does not
        records = self.request("list", args)
        return [self._execution(r) for r in records]

    def get_workflow_status(self, execution_id: str) -> WorkflowStatusInfo:
        result = self.request("status", {"id": execution_id})
        return _validated(WorkflowStatusInfo, result)

    def retry_step(self, execution_id: str, step: str) -> WorkflowExecution:
        return self._execution(self.request("retry", {"id": execution_id, "step": step}))

    def execute_step(
        self, execution_id: str, step: str, context: Any = None, *, timeout: float = 300.0
    ) -> StepResult:
        """Run ``step`` of an execution once on a worker with ``context`` as its input,
        outside the execution's schedule (the execution is not changed); returns when the
        step ends. A step still running after ``timeout`` seconds is cancelled."""
        args = {"id": execution_id, "step": step, "context": context, "timeout": timeout}
        result = self.request("execute", args, timeout=timeout + self.timeout)
        return _validated(StepResult, result)

    def get_events(
        self, execution_id: str, from_seq: int = 0, limit: int | None = None
    ) -> list[WorkflowEvent]:
        args = {"id": execution_id, "from_seq": from_seq, "limit": limit}
        events = self.request("events", args)
        return [_validated(WorkflowEvent, e) for e in events]

    def wait(self, execution_id: str, timeout: float | None = None) -> WorkflowExecution:
        """Block until the execution is terminal, or ``timeout`` seconds pass (then the
        current record is returned: look at its ``status``). The node long-polls in chunks
        of at most ``WAIT_CHUNK_SECONDS``; each chunk extends the socket timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            chunk = WAIT_CHUNK_SECONDS
            if deadline is not None:
                chunk = min(chunk, max(0.0, deadline - time.monotonic()))
            record = self.request(
                "wait", {"id": execution_id, "timeout": chunk}, timeout=chunk + self.timeout
            )
            execution = self._execution(record)
            if is_terminal_execution(execution.status):
                return execution
            if deadline is not None and time.monotonic() >= deadline:
                return execution

    def explain(self, execution_id: str) -> dict[str, Any]:
        """Why an execution is where it is: ``summary`` (one line) and, per unfinished
        step, ``waiting_for`` (a dependency, a retry time, a breaker, a worker, ...)."""
        result: dict[str, Any] = self.request("explain", {"id": execution_id})
        return result

    def health(self) -> dict[str, Any]:
        result = self.request("health", {})
        if not isinstance(result, dict):
            raise ProtocolError(f"malformed health reply: {result!r}")
        return result

    # -- administration (admin role) --------------------------------------------------------

    def _admin(self, op: str, args: Mapping[str, Any], timeout: float | None) -> dict[str, Any]:
        result = self.request(op, args, timeout=timeout)
        if not isinstance(result, dict):
            raise ProtocolError(f"malformed {op} reply: {result!r}")
        return result

    def admin_verify(self, *, timeout: float | None = None) -> dict[str, Any]:
        """Check the whole store: ``{"ok", "executions", "events", "problems"}``."""
        return self._admin("admin.verify", {}, timeout)

    def admin_backup(self, dest: str | Path, *, timeout: float | None = None) -> dict[str, Any]:
        """Copy the node's store into the new directory ``dest`` (made absolute here; it
        is a path on the node's machine): ``{"path", "bytes", "verify"}``."""
        return self._admin("admin.backup", {"dest": str(Path(dest).absolute())}, timeout)

    def admin_cleanup(
        self, older_than_days: float, *, timeout: float | None = None
    ) -> dict[str, Any]:
        """Delete terminal executions that ended more than N days ago."""
        args = {"older_than_days": float(older_than_days)}
        return self._admin("admin.cleanup", args, timeout)

    @staticmethod
    def _execution(record: Any) -> WorkflowExecution:
        return _validated(WorkflowExecution, record)
