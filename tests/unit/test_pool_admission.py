"""WorkerAdmission (who may join as a worker, which offers count), RefusalLog (which
refusals get a log line) and Refused (what health says of them): pure."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tamma_actors._pool_admission import RefusalLog, Refused, WorkerAdmission

TOKENS = {"a": "admin", "o": "operator", "v": "viewer"}


def test_without_tokens_every_worker_is_admitted() -> None:
    open_node = WorkerAdmission()
    assert open_node.refusal(None) is None and open_node.refusal("anything") is None


NEEDED = "a worker needs a worker token or an admin token"


def test_with_tokens_only_an_admin_token_admits() -> None:
    admission = WorkerAdmission(TOKENS)
    assert admission.refusal("a") is None
    assert admission.refusal(None) == f"a token is required ({NEEDED})"
    assert admission.refusal("x") == f"unknown token ({NEEDED})"
    assert admission.refusal("a-") == f"unknown token ({NEEDED})"
    for token, role in (("o", "operator"), ("v", "viewer")):
        assert admission.refusal(token) == f"{NEEDED}, not a token of role {role!r}"


def test_a_worker_token_admits_a_worker_and_an_admin_token_still_does() -> None:
    admission = WorkerAdmission(TOKENS, worker_tokens=frozenset({"w1", "w2"}))
    assert admission.refusal("w1") is None and admission.refusal("w2") is None
    assert admission.refusal("a") is None  # as before worker tokens existed
    assert admission.refusal("o") == f"{NEEDED}, not a token of role 'operator'"
    assert admission.refusal("w") == f"unknown token ({NEEDED})"


def test_worker_tokens_alone_admit_only_their_holders() -> None:
    # without control tokens, authorize() calls every caller admin: not for workers here
    admission = WorkerAdmission(worker_tokens=frozenset({"w1"}))
    assert admission.refusal("w1") is None
    assert admission.refusal("anything") == f"unknown token ({NEEDED})"
    assert admission.refusal(None) == f"a token is required ({NEEDED})"


def test_withheld_names_are_not_taken_from_an_offer() -> None:
    admission = WorkerAdmission(withheld=frozenset({"shell", "record"}))
    assert admission.offer(["noop", "shell", "mine", "record"]) == {"noop", "mine"}
    assert WorkerAdmission().offer(["shell"]) == {"shell"}


def test_a_worker_ids_refusals_are_logged_once_a_minute() -> None:
    log = RefusalLog(every=60.0, most=10)
    assert log.line("w", 0.0) == 0
    assert [log.line("w", t) for t in (1.0, 30.0, 59.9)] == [None, None, None]
    assert log.line("other", 59.9) == 3  # the three left out are counted in the next line
    assert log.line("w", 60.0) == 0


def test_new_ids_each_time_are_logged_at_most_so_often() -> None:
    log = RefusalLog(every=60.0, most=3)
    assert [log.line(f"w{i}", float(i)) for i in range(5)] == [0, 0, 0, None, None]
    assert log.line("w9", 60.0) == 2  # the first line's minute is over


def test_the_ids_remembered_are_bounded() -> None:
    log = RefusalLog(every=60.0, most=1000, ids=2)
    for i, worker in enumerate(("a", "b", "c")):
        assert log.line(worker, float(i)) == 0
    assert log.line("a", 3.0) == 0  # forgotten: logged again
    assert log.line("c", 4.0) is None


@given(st.lists(st.tuples(st.sampled_from("abcdefgh"), st.floats(0, 10)), max_size=200))
def test_never_more_lines_than_allowed_in_any_window(refusals: list[tuple[str, float]]) -> None:
    log = RefusalLog(every=1.0, most=3)
    now, lines, seen = 0.0, [], 0
    for worker, step in refusals:
        now += step / 10
        left_out = log.line(worker, now)
        seen += 1
        if left_out is not None:
            lines.append(now)
            seen -= 1 + left_out  # every refusal is logged or counted in a later line
    assert seen >= 0
    for i, at in enumerate(lines):
        assert len([t for t in lines[i:] if t < at + 1.0]) <= 3


def test_health_counts_every_refusal_and_shows_the_last_cut_short() -> None:
    refused = Refused()
    assert refused.report() == {"count": 0, "last": None}
    refused.add("w-1", "unknown token", 100.0)
    refused.add("x" * 10_000, "a token is required", 101.0)  # a peer's id may be any size
    report = refused.report()
    assert report["count"] == 2
    assert report["last"] == {"worker_id": "x" * 200, "reason": "a token is required", "at": 101.0}
