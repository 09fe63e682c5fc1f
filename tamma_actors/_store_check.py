"""Reading an LMDB file of unknown health in a child process (``_store_check_main``).

liblmdb does not answer every damaged page with an error: on some it aborts the process
(an assertion such as ``mdb_page_search_root: Assertion 'IS_LEAF(mp)' failed``), and a
page beyond the end of a truncated file is a SIGBUS. Neither can be caught in the process
that reads, so the reads that must survive a damaged file run here, in a process of their
own, and its death by such a signal becomes a ``StoreCorrupted`` naming the file:

- ``verify``: the whole-store check (``_verify.check_store``), for ``tamma-node verify``,
  ``tamma admin verify`` and the check of a backup before ``tamma-node restore``;
- ``walk``: every page of every database read once, by liblmdb's compacting copy written
  to /dev/null (~10 ms for 10,000 executions), before ``tamma-node run`` opens its store;
- ``copy --dest DIR``: a compacted copy into ``DIR`` (restore, offline backup).

Each mode opens the store read-only (``read_only_view``): nothing is written or created.
The child notes what it reads (the database and key) in a page it shares with the parent
(an unlinked temporary file), so a death is reported with its place.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Self

from tamma_actors._errors import StoreCorrupted, StoreError, TammaError
from tamma_actors._keys import parse_event_key
from tamma_actors._lmdb_env import DATA_FILE
from tamma_actors._store_check_main import HEAD, MARK_SIZE, WALKED

if TYPE_CHECKING:
    from tamma_actors._verify import VerifyReport

__all__ = [
    "CHECK_TIMEOUT",
    "StoreCheck",
    "copy_store",
    "damage_signal",
    "verify_file",
    "walk_store",
]

_CHILD = "tamma_actors._store_check_main"

# How a process that read an LMDB file can die of the file: (name, what it means).
_DAMAGE = {
    signal.SIGABRT: "liblmdb stopped on a page it found inconsistent",
    signal.SIGBUS: "a page lies beyond the end of the file (is it truncated?)",
    signal.SIGSEGV: "liblmdb read outside the file (a page points elsewhere?)",
}
# A whole check or copy takes time in proportion to the store (~1.5 s for 10,000
# executions): the bound is for a child that hangs, not for a big store.
CHECK_TIMEOUT = 3600.0


def damage_signal(returncode: int | None) -> str | None:
    """What a process's death by ``-returncode`` says of the LMDB file it read, or None
    when it did not die of a signal that a damaged file causes."""
    if returncode is None or returncode >= 0 or -returncode not in _DAMAGE:
        return None
    number = signal.Signals(-returncode)
    return f"{number.name}: {_DAMAGE[number]}"


def _key_text(key: bytes) -> str:
    try:
        eid, seq = parse_event_key(key)
        if eid.isprintable():
            return f"{eid!r} seq {seq}"
    except TammaError:
        pass
    try:
        text = key.decode()
    except UnicodeDecodeError:
        return key.hex()
    return repr(text) if text.isprintable() else key.hex()


def _where(mark: bytes) -> str:
    what, _, rest = mark.partition(b"\0")
    db_raw, _, key = rest.partition(b"\0")
    db = db_raw.decode(errors="replace")
    places = {
        b"open": "opening it (its meta pages and list of databases)",
        b"walk": WALKED,
        b"copy": "copying it",
        b"get": f"reading key {_key_text(key)} of database {db!r}",
        b"scan": f"reading database {db!r} from {_key_text(key) if key else 'its first key'}",
        b"after": f"reading database {db!r} after key {_key_text(key)}",
    }
    return places.get(what, "starting")


def _assertion(stderr: str) -> str:
    """liblmdb's assertion (``Assertion '...' failed in f()``), else the last line."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in reversed(lines):
        if "Assertion" in line:
            return line[line.index("Assertion") :]
    return lines[-1] if lines else ""


class StoreCheck:
    """One child run on the store directory ``path``, started at once; ``result()``
    waits for its answer. A context manager: a child still running at the end is killed
    and reaped (closing twice is fine)."""

    def __init__(self, mode: str, path: Path, *, dest: Path | None = None) -> None:
        self.file = Path(path) / DATA_FILE
        self._marks: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 - closed in close()
        self._proc: subprocess.Popen[bytes] | None = None
        try:
            self._marks.truncate(MARK_SIZE)
            fd = self._marks.fileno()
            cmd = [sys.executable, "-m", _CHILD, mode, str(path), "--mark-fd", str(fd)]
            self._proc = subprocess.Popen(
                [*cmd, *(["--dest", str(dest)] if dest is not None else [])],
                pass_fds=(fd,),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,  # a terminal's Ctrl-C is its parent's to handle
            )
        except OSError as exc:
            self.close()
            raise StoreError(f"cannot start the check of {self.file}: {exc}") from exc

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def result(self, timeout: float) -> dict[str, Any]:
        """The child's result. A damaged file (an LMDB error, or the child's death by a
        signal a damaged file causes) raises StoreCorrupted naming the file and where it
        was reading; any other failure a StoreError."""
        assert self._proc is not None
        try:
            out, err = self._proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.close()
            raise StoreError(
                f"the check of {self.file} did not finish within {timeout:.0f} s"
            ) from None
        code = self._proc.returncode
        where = _where(self._mark())
        stderr = err.decode(errors="replace")
        if (dead := damage_signal(code)) is not None:
            detail = _assertion(stderr)
            raise StoreCorrupted(
                f"the LMDB file {self.file} is damaged: reading it killed the checking "
                f"process ({dead}{'; ' + detail if detail else ''}) while {where}"
            )
        try:
            answer = json.loads(out) if code == 0 else None
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            why = f"was stopped by {signal.Signals(-code).name}" if code < 0 else f"exited {code}"
            raise StoreError(f"the check of {self.file} {why}: {_assertion(stderr)}")
        if "damaged" in answer:
            raise StoreCorrupted(f"{answer['damaged']}; found while {where}")
        if "error" in answer:
            raise StoreError(str(answer["error"]))
        result: dict[str, Any] = answer["result"]
        return result

    def _mark(self) -> bytes:
        self._marks.seek(0)
        page = self._marks.read(MARK_SIZE)
        size = int.from_bytes(page[:HEAD], "big")
        return page[HEAD : HEAD + size]

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.kill()
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
            proc.wait()
        self._marks.close()


def verify_file(path: Path, timeout: float = CHECK_TIMEOUT) -> VerifyReport:
    """``check_store`` of the store directory ``path``, read in a child process. A
    damaged file is a report with ``damaged`` set and the finding as its one problem."""
    from tamma_actors._verify import VerifyReport

    with StoreCheck("verify", path) as check:
        try:
            found = check.result(timeout)
        except StoreCorrupted as exc:
            return VerifyReport(problems=[str(exc)], damaged=True)
    return VerifyReport(
        executions=int(found["executions"]),
        events=int(found["events"]),
        problems=[str(p) for p in found["problems"]],
        damaged=bool(found.get("damaged")),
    )


def copy_store(path: Path, dest: Path, timeout: float = CHECK_TIMEOUT) -> None:
    """A compacted copy of the store directory ``path`` into ``dest``, made by a child
    process (a damaged file raises StoreCorrupted)."""
    with StoreCheck("copy", path, dest=dest) as check:
        check.result(timeout)


def walk_store(path: Path, timeout: float = CHECK_TIMEOUT) -> None:
    """Every page of the store directory ``path`` read by a child process (a damaged file
    raises StoreCorrupted)."""
    with StoreCheck("walk", path) as check:
        check.result(timeout)
