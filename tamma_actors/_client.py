"""Client: the synchronous control client (one DEALER socket to a node's control ROUTER).

``Client`` is the engine's operations as requests, their replies read into models, and
where the endpoint, token and CURVE key come from (``ClientSettings``). The request layer
beneath it (the socket, request ids, pipelining, error replies) is
:class:`~tamma_actors._client_socket.ClientSocket`.

A client is **not thread-safe**: its socket may only be used by one thread at a time (give
each thread its own client).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from tamma_actors._client_args import (
    inputs_map,
    list_filter,
    unsendable,
    unsendable_error,
    workflow_definition,
)
from tamma_actors._client_socket import ClientSocket
from tamma_actors._codec import pack
from tamma_actors._errors import (
    CodecError,
    FrameTooLarge,
    InvalidRequest,
    ProtocolError,
    RemoteError,
    UnknownExecution,
    error_from_code,
)
from tamma_actors._models import (
    StepResult,
    WorkflowConfig,
    WorkflowEvent,
    WorkflowExecution,
    WorkflowFilter,
    WorkflowStatusInfo,
    WorkflowSummary,
)
from tamma_actors._protocol import MAX_WAIT_SECONDS, START_MANY_MOST
from tamma_actors._state import replay, to_record
from tamma_actors._status import is_terminal_execution

__all__ = [
    "DEFAULT_ENDPOINT",
    "WAIT_CHUNK_SECONDS",
    "Client",
    "ClientSettings",
    "resolve_endpoint",
]

M = TypeVar("M", bound=BaseModel)

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


def _start_args(
    definition: dict[str, Any],
    source: str | None,
    inputs: Any,
    execution_id: str | None,
) -> dict[str, Any]:
    """The ``start`` request's arguments (``id`` only when the caller chose one)."""
    args = {"workflow": definition, "inputs": inputs_map(inputs), "source": source}
    return args if execution_id is None else {**args, "id": execution_id}


def _validated(model: type[M], value: Any) -> M:
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        raise ProtocolError(f"the node sent a malformed {model.__name__}: {exc}") from exc


# Records asked for per 'list' or 'events' request (the client pages through more).
LIST_PAGE = 1_000
# Starts per 'start_many' request. The node starts a request's items at once, and its
# allocator keeps the high-water mark: a node that parked 100,000 executions measured 120
# MiB started one by one, 129 in batches of 16, 133 of 64 and 144 of 256.
_START_BATCH = 64
# At most this many bytes of starts per 'start_many' request (and half the frame cap).
_START_BATCH_BYTES = 256 << 10


def _outcomes(reply: Any) -> list[dict[str, Any]]:
    """The per-start outcomes of one 'start_many' reply."""
    if not isinstance(reply, list) or not all(isinstance(o, dict) for o in reply):
        raise ProtocolError(f"the node sent a malformed start_many reply: {reply!r:.200}")
    return reply


def _error_of(reply: dict[str, Any]) -> dict[str, Any]:
    """An error reply's ``error`` map (a malformed one raises ``ProtocolError``)."""
    error = reply.get("error")
    if not isinstance(error, dict):
        raise ProtocolError(f"malformed error reply: {reply!r:.200}")
    return error


def _after_last_seq(_: int, events: list[Any]) -> int:
    """Where the next page of events starts: after the last one of this page."""
    return int(events[-1]["seq"]) + 1


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


class Client(ClientSocket):
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
        super().__init__(
            resolve_endpoint(endpoint, data_dir, settings),
            token=token if token is not None else settings.token,
            timeout=timeout,
            max_frame_bytes=max_frame_bytes,
            curve_server_key=curve_server_key or settings.curve_server_key,
        )

    # -- the engine's operations ------------------------------------------------------------

    def start_workflow(
        self,
        config_or_path: WorkflowConfig | Mapping[str, Any] | str | Path,
        inputs: Mapping[str, Any] | None = None,
        *,
        execution_id: str | None = None,
    ) -> WorkflowExecution:
        """Start a workflow given as a file path (read here), a ``WorkflowConfig`` or a
        mapping; the execution is durable on the node when this returns. Arguments the
        node refuses (inputs that are not a map with string keys, or hold what cannot be
        sent, say a date) raise ``InvalidRequest``, as in ``WorkflowEngine``.

        ``execution_id`` (letters, digits and ``._:@-``, up to 128, starting with a letter
        or digit) makes the start idempotent: the execution gets that id, and the same
        start again (say, after a timeout that left you not knowing whether it happened)
        returns that execution as it is now instead of starting another; a start under
        that id with another workflow or other inputs raises ``ExecutionExists``."""
        definition, source = workflow_definition(config_or_path)
        args = _start_args(definition, source, inputs, execution_id)
        return self._execution(self.request("start", args))

    def _send_request(self, op: str, args: Mapping[str, Any], limit: float) -> int:
        # Arguments that cannot be encoded are the caller's mistake, named where it is.
        try:
            return super()._send_request(op, args, limit)
        except CodecError as exc:
            raise unsendable_error(op, args, exc) from exc

    def start_workflows(
        self,
        config_or_path: WorkflowConfig | Mapping[str, Any] | str | Path,
        inputs_list: Iterable[Mapping[str, Any]],
        *,
        window: int = 256,
        execution_ids: Iterable[str] | None = None,
    ) -> list[WorkflowExecution]:
        """Start one execution of the workflow per inputs mapping; each is durable on the
        node when this returns, and the executions come back in the order of the inputs.
        The starts go in ``start_many`` requests of up to 64 starts each (fewer when their
        inputs are big: see ``_start_batches``), at most ``window`` starts in flight. Every
        start is answered before the first one that failed raises (the others are started).
        ``execution_ids``: one id per inputs mapping (checked before anything is sent),
        each start then idempotent as in :meth:`start_workflow`: the same call again
        starts nothing new."""
        if window < 1:
            raise ValueError("window must be at least 1")
        definition, source = workflow_definition(config_or_path)
        inputs_list = list(inputs_list)
        ids: list[str | None] = [None] * len(inputs_list)
        if execution_ids is not None:
            ids = list(execution_ids)
            if len(ids) != len(inputs_list):
                raise ValueError(f"{len(ids)} execution ids for {len(inputs_list)} inputs mappings")
        items: list[dict[str, Any]] = [
            {"inputs": inputs_map(inputs, f"inputs_list[{i}]")}
            if eid is None
            else {"inputs": inputs_map(inputs, f"inputs_list[{i}]"), "id": eid}
            for i, (inputs, eid) in enumerate(zip(inputs_list, ids, strict=True))
        ]
        if not items:
            return []
        batch = min(window, _START_BATCH)
        batches = self._start_batches(definition, source, items, batch)
        outcomes = self._start_outcomes(batches, window=max(1, window // batch))
        if outcomes is None:  # a node older than 'start_many' (it started nothing)
            calls = (
                _start_args(definition, source, item["inputs"], item.get("id")) for item in items
            )
            return [self._execution(r) for r in self.request_many("start", calls, window=window)]
        for outcome in outcomes:
            if outcome.get("ok") is not True:
                self._result(outcome)  # raises the first failure, as a reply's would
        return [self._execution(record) for record in self._records_of(outcomes, window)]

    def _start_outcomes(
        self, batches: list[dict[str, Any]], window: int
    ) -> list[dict[str, Any]] | None:
        """Every start's outcome, in order (None: the node has no 'start_many'). A batch
        the node refused before starting anything (too many starts or bytes for its frame
        cap, which may be smaller than this client's) goes again in two halves."""
        outcomes: list[dict[str, Any]] = []
        todo: list[tuple[int, dict[str, Any]]] = []  # (its first item's index, batch)
        for batch in batches:
            todo.append((len(outcomes), batch))
            outcomes.extend({} for _ in batch["items"])
        while todo:
            replies = self.exchange_many("start_many", [b for _, b in todo], window=window)
            again: list[tuple[int, dict[str, Any]]] = []
            for (offset, batch), reply in zip(todo, replies, strict=True):
                if reply.get("ok") is True:
                    got = _outcomes(reply.get("result"))
                    if len(got) != len(batch["items"]):
                        raise ProtocolError(
                            f"{len(got)} start outcomes for {len(batch['items'])} starts"
                        )
                    outcomes[offset : offset + len(got)] = got
                    continue
                error, items = _error_of(reply), batch["items"]
                if error.get("code") == "unknown_op":
                    return None
                none_started = error.get("details") == {"started": []}
                if error.get("code") == "too_large" and none_started and len(items) > 1:
                    half = len(items) // 2
                    again.append((offset, {**batch, "items": items[:half]}))
                    again.append((offset + half, {**batch, "items": items[half:]}))
                    continue
                self._result(reply)  # raises
            todo = again
        return outcomes

    def _records_of(self, outcomes: list[dict[str, Any]], window: int) -> list[Any]:
        """The record of each started execution: in its outcome, or, where the node sent
        the outcome compact (the records together were over its frame cap), read with
        'get' (or, over the cap alone, rebuilt: see ``_record``). A record that cannot be
        read raises, naming it, and every execution started in ``details``."""
        records = [outcome.get("result") for outcome in outcomes]
        compact = [i for i, outcome in enumerate(outcomes) if "result" not in outcome]
        if not compact:
            return records
        ids = [outcomes[i].get("id") for i in compact]
        replies = self.exchange_many("get", ({"id": eid} for eid in ids), window=window)
        for i, eid, reply in zip(compact, ids, replies, strict=True):
            if reply.get("ok") is True:
                records[i] = reply.get("result")
                continue
            error = _error_of(reply)
            if error.get("code") == "too_large":  # its record alone is over the cap
                records[i] = self._rebuilt(str(eid))
                continue
            raise error_from_code(
                str(error.get("code", "internal")),
                f"execution {eid!r} was started, but its record could not be read: "
                f"{error.get('message', '')}",
                {"started": [o.get("id") or o["result"]["id"] for o in outcomes]},
            )
        return records

    def _start_batches(
        self,
        definition: dict[str, Any],
        source: str | None,
        items: list[dict[str, Any]],
        most: int,
    ) -> list[dict[str, Any]]:
        """The ``start_many`` arguments for ``items``: at most ``most`` (and
        ``START_MANY_MOST``) starts each, and few enough that the request and its reply
        (a record per start, holding its inputs again) stay within half the frame cap and
        within ``_START_BATCH_BYTES`` (a node may have a smaller cap than this client:
        bigger batches gain nothing). An item whose start alone is over the cap raises
        ``FrameTooLarge`` before anything is sent; one over the budget goes alone."""
        most = min(most, START_MANY_MOST)
        budget = min(self.max_frame_bytes // 2, _START_BATCH_BYTES)
        base = len(pack({"workflow": definition, "source": source, "items": []})) + 256
        per_item = 256 + 160 * len(definition.get("steps") or ())  # a record's own fields
        batches: list[dict[str, Any]] = []
        batch: list[dict[str, Any]] = []
        used = base
        for i, item in enumerate(items):
            try:
                size = len(pack(item)) + per_item
            except CodecError as exc:
                where = f"inputs_list[{i}]"
                problem = unsendable(item["inputs"], where) or f"{where}: {exc}"
                raise InvalidRequest(f"invalid arguments for 'start_many': {problem}") from exc
            if base + size > self.max_frame_bytes:
                raise FrameTooLarge(
                    f"a start of ~{base + size} bytes (its inputs and the workflow) exceeds "
                    f"the {self.max_frame_bytes}-byte cap (max_frame_bytes)"
                )
            if batch and (len(batch) >= most or used + size > budget):
                batches.append({"workflow": definition, "source": source, "items": batch})
                batch, used = [], base
            batch.append(item)
            used += size
        batches.append({"workflow": definition, "source": source, "items": batch})
        return batches

    def pause_workflow(self, execution_id: str) -> WorkflowExecution:
        return self._record("pause", {"id": execution_id})

    def resume_workflow(self, execution_id: str) -> WorkflowExecution:
        return self._record("resume", {"id": execution_id})

    def abort_workflow(self, execution_id: str, reason: str | None = None) -> WorkflowExecution:
        return self._record("abort", {"id": execution_id, "reason": reason})

    def get_workflow(self, execution_id: str) -> WorkflowExecution:
        return self._record("get", {"id": execution_id})

    def _record(
        self, op: str, args: Mapping[str, Any], timeout: float | None = None
    ) -> WorkflowExecution:
        """The record ``op`` answers with. One over the node's frame cap (big step outputs)
        is not sent, although ``op`` was done: it is then rebuilt here from the execution's
        events, read in pages (an event fits where the record does not), by the reducer
        the node itself replays them with."""
        try:
            record = self.request(op, args, timeout=timeout)
        except RemoteError as exc:
            if exc.code != "too_large":
                raise
            record = self._rebuilt(str(args["id"]))
        return self._execution(record)

    def _rebuilt(self, execution_id: str) -> dict[str, Any]:
        """The execution's record as of its last event, from its events (see ``_record``)."""
        args = {"id": execution_id, "from_seq": 1}
        events = self._in_pages("events", args, None, "from_seq", _after_last_seq)
        return to_record(replay(execution_id, events))

    def list_workflows(
        self, filter: WorkflowFilter | Mapping[str, Any] | None = None
    ) -> list[WorkflowExecution]:
        """The matching executions, oldest first, in pages (see ``_in_pages``): any number
        of them, without one long request. A record over the node's frame cap alone is
        rebuilt from its events, as ``get`` does (see ``_record``)."""
        return [self._execution(r) for r in self._listed(filter, "record")]

    def list_summaries(
        self, filter: WorkflowFilter | Mapping[str, Any] | None = None
    ) -> list[WorkflowSummary]:
        """As :meth:`list_workflows`, each execution's summary (id, workflow, status,
        times, current step, seq; as of its last commit): no record is built on the node,
        so this costs a fraction of a full list, and an execution of any size lists."""
        return [_validated(WorkflowSummary, s) for s in self._listed(filter, "summary")]

    def _listed(self, filter: WorkflowFilter | Mapping[str, Any] | None, view: str) -> list[Any]:
        args = list_filter(filter).model_dump(mode="json", exclude_none=True)
        wanted = args.pop("limit", None)
        if wanted == 0:
            return []  # the filter model allows an empty page; the wire does not
        if view != "record":  # a node without views is asked as before
            args["view"] = view
        alone = self._record_alone if view == "record" else None
        return self._in_pages(
            "list", args, wanted, "offset", lambda at, got: at + len(got), alone=alone
        )

    def _record_alone(self, args: dict[str, Any]) -> list[Any]:
        """The one record ``list`` would answer with ``args`` (a page of one) but cannot, as
        it is over the frame cap: the summary at that place names the execution, whose
        record is then rebuilt from its events. One deleted meanwhile (``admin cleanup``)
        is passed over: the execution now at that place is taken instead; the loop ends, as
        each turn of it follows a deletion."""
        while True:
            found = self.request("list", {**args, "view": "summary", "limit": 1})
            if not found:
                return []
            try:
                return [self._rebuilt(str(found[0]["id"]))]
            except UnknownExecution:
                continue

    def get_workflow_status(self, execution_id: str) -> WorkflowStatusInfo:
        result = self.request("status", {"id": execution_id})
        return _validated(WorkflowStatusInfo, result)

    def retry_step(self, execution_id: str, step: str) -> WorkflowExecution:
        return self._record("retry", {"id": execution_id, "step": step})

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
        """The execution's events from ``from_seq`` on, in pages (see ``_in_pages``)."""
        args = {"id": execution_id, "from_seq": from_seq}
        if not (limit is None or (_is_count(limit) and limit > 0)) or not _is_count(from_seq):
            events = self.request("events", {**args, "limit": limit})  # the node says why
        else:
            events = self._in_pages("events", args, limit, "from_seq", _after_last_seq)
        return [_validated(WorkflowEvent, e) for e in events]

    def _in_pages(
        self,
        op: str,
        args: dict[str, Any],
        wanted: int | None,
        key: str,
        after: Callable[[int, list[Any]], int],
        *,
        alone: Callable[[dict[str, Any]], list[Any]] | None = None,
    ) -> list[Any]:
        """Up to ``wanted`` (None: all) of ``op``'s items, asked for ``LIST_PAGE`` at a
        time, fewer (down to one) while a page's reply is over the frame cap; the next page
        starts at ``args[key]`` = ``after(args[key], items of the page before)``. An item
        over the cap alone is ``alone(args)`` when given (else ``FrameTooLarge``), and the
        pages after it are ``LIST_PAGE`` again."""
        out: list[Any] = []
        page = LIST_PAGE
        while wanted is None or len(out) < wanted:
            size = page if wanted is None else min(page, wanted - len(out))
            try:
                items = self.request(op, {**args, "limit": size})
            except FrameTooLarge:
                if size > 1:
                    page = max(1, size // 2)
                    continue
                if alone is None:
                    raise
                items, page = alone(args), LIST_PAGE
            out.extend(items)
            if len(items) < size:
                break
            args = {**args, key: after(args[key], items)}
        return out

    def wait(self, execution_id: str, timeout: float | None = None) -> WorkflowExecution:
        """Block until the execution is terminal, or ``timeout`` seconds pass (then the
        current record is returned: look at its ``status``). The node long-polls in chunks
        of at most ``WAIT_CHUNK_SECONDS``; each chunk extends the socket timeout."""
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, int | float)
        ):
            raise InvalidRequest(
                f"invalid arguments for 'wait': timeout: a number of seconds or None, "
                f"not {type(timeout).__name__}"
            )
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            chunk = WAIT_CHUNK_SECONDS
            if deadline is not None:
                chunk = min(chunk, max(0.0, deadline - time.monotonic()))
            execution = self._record(
                "wait", {"id": execution_id, "timeout": chunk}, timeout=chunk + self.timeout
            )
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
