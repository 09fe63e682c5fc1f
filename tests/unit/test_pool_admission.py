"""WorkerAdmission: which of the names a worker offers count (a pure policy)."""

from __future__ import annotations

from tamma_actors._pool_workers import WorkerAdmission


def test_withheld_names_are_not_taken_from_an_offer() -> None:
    admission = WorkerAdmission(withheld=frozenset({"shell", "record"}))
    assert admission.offer(["noop", "shell", "mine", "record"]) == {"noop", "mine"}
    assert WorkerAdmission().offer(["shell"]) == {"shell"}
