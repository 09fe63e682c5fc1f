"""The exception tree of tamma_actors.

Every error the package raises derives from :class:`TammaError`, with one branch per
seam. Third-party errors (``zmq``, ``lmdb``, ``msgpack``, ``pydantic``) are translated
where they are raised (``raise ... from exc``); nothing above a seam catches them.

::

    TammaError
    ├── CodecError                 bytes that are not a valid message / value not encodable
    ├── TransportError             a socket could not be bound, connected or used
    │   ├── FrameTooLarge          a frame over the configured cap
    │   └── RequestTimeout         no reply within the client's timeout
    ├── StoreError                 the LMDB store failed
    │   ├── StoreClosed            used after close()
    │   ├── StoreFull              the disk (or map ceiling) is full; nothing was written
    │   ├── StoreUnwritable        the disk refused the write (I/O error, read-only)
    │   └── StoreCorrupted         a record failed its checksum or does not decode
    ├── SupervisionError           an actor or child process could not be kept alive
    │   ├── ActorStopped           a message was sent to a stopped actor
    │   ├── ShuttingDown           the node is shutting down: it accepts no new work
    │   └── RestartIntensityExceeded
    ├── WorkflowError              a workflow or execution request is wrong
    │   ├── WorkflowValidationError   a workflow file is invalid (every problem listed)
    │   ├── ExpressionError        an expression does not parse, or fails on its values
    │   ├── SubflowTooDeep         subflows nested past the limit (a workflow runs itself)
    │   ├── IllegalTransition      a status change that the transition table forbids
    │   ├── UnknownExecution       no execution with that id
    │   ├── ExecutionExists        a start names an id another workflow or input already has
    │   ├── UnknownStep            no step with that name in the execution
    │   └── UnknownImplementation  a step implementation that is not registered
    ├── ConfigError                node configuration or supervision tree is invalid
    ├── ProtocolError              a control request is malformed (bad op, args, version)
    │   ├── InvalidRequest         a request (or an engine call) with wrong arguments
    │   └── Forbidden              the caller's role may not do that
    └── RemoteError                the node answered a client request with an error
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "ActorStopped",
    "CodecError",
    "ConfigError",
    "ExecutionExists",
    "ExpressionError",
    "Forbidden",
    "FrameTooLarge",
    "IllegalTransition",
    "InvalidRequest",
    "Problem",
    "ProtocolError",
    "RemoteError",
    "RequestTimeout",
    "RestartIntensityExceeded",
    "ShuttingDown",
    "StoreClosed",
    "StoreCorrupted",
    "StoreError",
    "StoreFull",
    "StoreUnwritable",
    "SubflowTooDeep",
    "SupervisionError",
    "TammaError",
    "TransportError",
    "UnknownExecution",
    "UnknownImplementation",
    "UnknownStep",
    "WorkflowError",
    "WorkflowValidationError",
    "error_code",
    "error_from_code",
]


class TammaError(Exception):
    """Root of every error raised by tamma_actors."""

    code = "internal"


class CodecError(TammaError):
    code = "bad_request"


class TransportError(TammaError):
    code = "unavailable"


class FrameTooLarge(TransportError):
    """``details``, when the node sends it: ``{"started": [ids]}``, the executions the
    request started although its reply is not sent (``[]``: it started nothing)."""

    code = "too_large"

    def __init__(self, message: str, details: object = None) -> None:
        super().__init__(message)
        self.details = details


class RequestTimeout(TransportError):
    code = "timeout"


class StoreError(TammaError):
    code = "store"


class StoreClosed(StoreError):
    pass


class StoreWriterLost(StoreClosed):
    """The store writer could not confirm a write: its process died or is being restarted.
    Whether the write landed is for the store to say; the execution it belonged to is
    re-read from the store once a writer is back."""

    code = "store_writer_lost"


class StoreFull(StoreError):
    code = "store_full"


class StoreUnwritable(StoreError):
    code = "store_unwritable"


class StoreCorrupted(StoreError):
    code = "store_corrupted"


class SupervisionError(TammaError):
    pass


class ActorStopped(SupervisionError):
    code = "unavailable"


class ShuttingDown(SupervisionError):
    """The node is shutting down (draining or closed): it accepts no new work."""

    code = "unavailable"


class RestartIntensityExceeded(SupervisionError):
    pass


class WorkflowError(TammaError):
    code = "workflow"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a workflow file: where (a dotted path) and what."""

    loc: str
    message: str

    def __str__(self) -> str:
        return f"{self.loc}: {self.message}" if self.loc else self.message


class WorkflowValidationError(WorkflowError):
    """A workflow definition is invalid; ``problems`` names every fault with its location."""

    code = "invalid_workflow"

    def __init__(self, problems: Sequence[Problem], source: str | None = None) -> None:
        self.problems = list(problems)
        self.source = source
        where = f"{source}: " if source else ""
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{where}invalid workflow ({len(self.problems)} problem(s)):\n{lines}")


class ExpressionError(WorkflowError):
    """A workflow expression (a decision's ``when``, parallel ``items``, subflow inputs)
    does not parse, or its evaluation meets a value it cannot work with."""

    code = "invalid_expression"


class SubflowTooDeep(WorkflowError):
    """Subflows nested past the node's limit: most likely a workflow that starts itself."""

    code = "subflow_too_deep"


class IllegalTransition(WorkflowError):
    code = "illegal_transition"


class UnknownExecution(WorkflowError):
    code = "not_found"


class ExecutionExists(WorkflowError):
    """A start chose an execution id that an execution of another workflow, or with other
    inputs, already has (the same start again gets that execution instead)."""

    code = "execution_exists"


class UnknownStep(WorkflowError):
    code = "unknown_step"


class UnknownImplementation(WorkflowError):
    code = "unknown_implementation"


class ConfigError(TammaError):
    code = "config"


class ProtocolError(TammaError):
    code = "bad_request"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class InvalidRequest(ProtocolError):
    """A request that cannot be served as asked: its arguments are wrong (an id that is not
    a string, an unknown filter key, inputs that cannot be sent), the same class whether a
    :class:`~tamma_actors.WorkflowEngine` refuses the call or a node refuses a client's
    request (codes ``bad_request``, ``unknown_op``, ``unsupported_version``). Remembers the
    request's id (when readable) for the node's reply."""

    request_id: str | int | None = None
    details: object = None

    def __init__(
        self,
        message: str,
        code: str = "bad_request",
        *,
        request_id: str | int | None = None,
        details: object = None,
    ) -> None:
        super().__init__(message, code)
        self.request_id = request_id
        self.details = details


class Forbidden(ProtocolError):
    code = "forbidden"

    def __init__(self, message: str) -> None:
        super().__init__(message, "forbidden")


class RemoteError(TammaError):
    """The node answered with ``{"ok": false, "error": {...}}``."""

    def __init__(self, code: str, message: str, details: object = None) -> None:
        # Not super(): in the Remote<Base> classes below the next class in the MRO is the
        # specific base, whose constructor takes other arguments.
        Exception.__init__(self, f"[{code}] {message}")
        self.code = code
        self.remote_message = message
        self.details = details


_BY_CODE: dict[str, type[TammaError]] = {
    "bad_request": InvalidRequest,
    "unknown_op": InvalidRequest,
    "unsupported_version": InvalidRequest,
    "not_found": UnknownExecution,
    "execution_exists": ExecutionExists,
    "unknown_step": UnknownStep,
    "illegal_transition": IllegalTransition,
    "invalid_workflow": WorkflowValidationError,
    "unknown_implementation": UnknownImplementation,
    "forbidden": Forbidden,
    "too_large": FrameTooLarge,
    "timeout": RequestTimeout,
    "store": StoreError,
    "store_writer_lost": StoreWriterLost,
    "store_full": StoreFull,
    "store_unwritable": StoreUnwritable,
    "store_corrupted": StoreCorrupted,
}


def error_code(exc: BaseException) -> str:
    """The wire error code for an exception (``internal`` for anything unexpected)."""
    return exc.code if isinstance(exc, TammaError) else "internal"


def _remote(base: type[TammaError]) -> type[RemoteError]:
    return type(f"Remote{base.__name__}", (RemoteError, base), {})


_REMOTE: dict[str, type[RemoteError]] = {code: _remote(base) for code, base in _BY_CODE.items()}


def error_from_code(code: str, message: str, details: object = None) -> RemoteError:
    """Rebuild a client-side exception from a wire error; unknown codes give RemoteError.

    The result is always a :class:`RemoteError` and, for known codes, also an instance of
    the specific class (``UnknownExecution``, ``WorkflowValidationError`` ...), so callers
    can catch either.
    """
    err = _REMOTE.get(code, RemoteError)(code, message, details)
    if isinstance(err, WorkflowValidationError):
        err.problems = [
            Problem(str(p.get("loc", "")), str(p.get("message", "")))
            for p in (details if isinstance(details, list) else [])
            if isinstance(p, dict)
        ]
        err.source = None
    return err
