"""Exit codes and output (rich tables or JSON) shared by the ``tamma`` command's modules."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from datetime import datetime
from enum import IntEnum
from typing import TYPE_CHECKING, Any

from tamma_actors._models import WorkflowEvent, WorkflowExecution

if TYPE_CHECKING:
    from rich.console import Console

__all__ = [
    "DEFAULT_TIMEOUT",
    "EVENT_FIELDS",
    "PLAIN_FROM_ROWS",
    "ExitCode",
    "Output",
    "discard_stdout",
    "show_events",
    "show_execution",
]

DEFAULT_TIMEOUT = 30.0  # seconds, without --timeout

EVENT_FIELDS = {"seq", "type", "execution_id", "timestamp", "data"}


class ExitCode(IntEnum):
    OK = 0
    FAILURE = 1
    USAGE = 2
    UNAVAILABLE = 3
    INTERRUPTED = 130


class Output:
    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self._console: Console | None = None

    @property
    def console(self) -> Console:
        """rich's console, made (and rich imported, ~70 ms) only when a table or message
        is printed: ``--json`` output and plain listings never pay for it."""
        if self._console is None:
            from rich.console import Console

            class _Console(Console):
                def on_broken_pipe(self) -> None:
                    # rich would exit 1 itself: main ends every command whose reader
                    # went away the one way (see discard_stdout)
                    self.quiet = True
                    raise BrokenPipeError("standard output was closed")

            self._console = _Console(highlight=False)
        return self._console

    def json(self, value: Any) -> None:
        # print, not rich: JSON must reach pipes byte-for-byte, never re-wrapped.
        print(json.dumps(value, indent=2, default=str))

    def listing(
        self, columns: Sequence[str], rows: list[list[Any]], title: str | None = None
    ) -> None:
        """A table that may be long (executions, events, a big workflow's steps): rich's
        up to ``PLAIN_FROM_ROWS`` rows, plain aligned columns beyond (without ``title``)."""
        if len(rows) <= PLAIN_FROM_ROWS:
            self.table(title, columns, rows)
            return
        cells = _cells(rows)
        widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(columns)]
        lines = [
            "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip()
            for row in [list(columns), ["-" * w for w in widths], *cells]
        ]
        print("\n".join(lines))

    def table(self, title: str | None, columns: Sequence[str], rows: list[list[Any]]) -> None:
        from rich.table import Table

        table = Table(title=title)
        for i, column in enumerate(columns):
            table.add_column(column, no_wrap=i == 0)  # ids must stay copy-pasteable
        for row in _cells(rows):
            table.add_row(*row)
        self.console.print(table)


# A listing of more rows is printed as plain aligned columns: rich lays out ~1,000 rows a
# second (a `tamma list` of 30,000 executions took ~45 s to print, `tamma events` of a
# 6,000-item fan-out's 6,009 events 8.8 s), plain text ~100 times faster.
PLAIN_FROM_ROWS = 200


def _cells(rows: list[list[Any]]) -> list[list[str]]:
    return [["" if v is None else _text(v) for v in row] for row in rows]


def _text(value: Any) -> str:
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return value if isinstance(value, str) else json.dumps(value, default=str)


def discard_stdout() -> None:
    """Once standard output's reader has gone (``tamma list | head``): what is still
    buffered, and anything printed later, goes to the null device instead, so the
    interpreter's own flush at exit does not fail again ("Exception ignored ...
    BrokenPipeError", exit 120). What the Python docs advise (signal, "Note on SIGPIPE")."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    finally:
        os.close(devnull)


def show_execution(out: Output, ex: WorkflowExecution, extra: dict[str, Any] | None = None) -> None:
    if out.as_json:
        out.json({**ex.model_dump(mode="json"), **(extra or {})})
        return
    fields = ex.model_dump(mode="json", exclude={"results", "context"})
    rows = [[k, v] for k, v in fields.items() if v not in (None, "", {})]
    rows.append(["context", ex.context])
    out.table(f"execution {ex.id}", ["field", "value"], rows)
    steps = [
        [name, r.status.value, r.attempts, r.error.message if r.error else None, r.data]
        for name, r in ex.results.items()
    ]
    out.listing(["step", "status", "attempts", "error", "data"], steps, "steps")


def show_events(out: Output, events: list[WorkflowEvent]) -> None:
    dumped = [e.model_dump(mode="json", include=EVENT_FIELDS) for e in events]
    if out.as_json:
        out.json(dumped)
        return
    rows = [[e["seq"], e["timestamp"], e["type"], e["data"]] for e in dumped]
    out.listing(["seq", "time", "type", "data"], rows)
