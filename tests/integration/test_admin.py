"""Store administration on a real node: verify, backup while running, restore, retention,
a corrupted record, a full store, and the admin role.

Nodes run in the test process (their workers are real child processes); the offline
commands (`tamma-node verify|restore|cleanup`) and `tamma admin` run through their
``main`` functions.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lmdb
import pytest

from tamma_actors import Client
from tamma_actors._admin import (
    StoreAdmin,
    backup_store,
    cleanup_store,
    offline_store,
    restore_backup,
    verify_store,
)
from tamma_actors._cli import main as tamma
from tamma_actors._cli_node import main as tamma_node
from tamma_actors._config import NodeConfig, load_node_config
from tamma_actors._errors import Forbidden, StoreError, StoreFull, TammaError
from tamma_actors._keys import EVENTS, encode_record, event_key, id_key
from tamma_actors._lmdb_store import LmdbStore
from tamma_actors._node import Node
from tamma_actors._store import MemoryStore, Write

pytestmark = pytest.mark.integration

WAIT = 60.0
MiB = 1 << 20


def config(data: Path, **extra: Any) -> NodeConfig:
    values: dict[str, Any] = {
        "data_dir": data,
        "workers": 1,
        "worker_slots": 4,
        "heartbeat_interval": 0.2,
        "heartbeat_timeout": 2.0,
        "cancel_grace": 0.5,
        "allow_record": True,  # a drain test records its last step
    }
    values.update(extra)
    return load_node_config(None, **values)


def chain(name: str = "chain", *impls: str) -> dict[str, Any]:
    impls = impls or ("noop", "noop")
    steps = [
        {"name": f"s{i}", "implementation": impl, "dependencies": [f"s{i - 1}"] if i else []}
        for i, impl in enumerate(impls)
    ]
    return {"name": name, "steps": steps}


HANG = {"name": "hang", "steps": [{"name": "h", "implementation": "hang"}]}


def until_running(client: Client, eid: str, step: str) -> None:
    """Wait (bounded) until ``step`` of ``eid`` is running."""
    for _ in range(400):
        if client.get_workflow(eid).results[step].status == "running":
            return
        client.wait(eid, timeout=0.02)
    raise AssertionError(f"step {step!r} of {eid} never ran")


@pytest.fixture
def data(short_dir: Path) -> Path:
    return short_dir / "var"


@pytest.fixture
def node(data: Path) -> Iterator[Node]:
    with Node(config(data)) as n:
        yield n


@pytest.fixture
def client(node: Node) -> Iterator[Client]:
    with Client(node.config.control_address, timeout=WAIT) as c:
        yield c


def run_to_end(client: Client, spec: dict[str, Any], **inputs: Any) -> str:
    execution = client.start_workflow(spec, inputs)
    assert client.wait(execution.id, timeout=WAIT).status == "completed"
    return execution.id


# -- verify --------------------------------------------------------------------------------


def test_verify_passes_on_a_healthy_store_and_through_the_cli(
    node: Node, client: Client, data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = [run_to_end(client, chain()) for _ in range(3)]
    client.start_workflow(HANG)  # a live execution is part of the check too
    report = client.admin_verify()
    assert report["ok"] and report["problems"] == [] and report["executions"] == 4
    assert report["events"] >= 3 * len(client.get_events(ids[0]))
    assert tamma(["--data-dir", str(data), "admin", "verify"]) == 0
    assert "store OK: 4 executions" in capsys.readouterr().out
    # offline verify refuses a store a node has open
    assert tamma_node(["verify", "--data-dir", str(data)]) == 1
    assert "a node is running" in capsys.readouterr().err


def _corrupt_event(data: Path, eid: str, seq: int, raw: bytes) -> None:
    env = lmdb.open(str(data / "store"), max_dbs=10)
    try:
        with env.begin(write=True) as txn:
            txn.put(event_key(eid, seq), raw, db=env.open_db(EVENTS.encode(), txn=txn))
    finally:
        env.close()


def test_a_corrupted_record_is_reported_with_its_key_and_the_node_still_starts(
    data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with Node(config(data)) as node, Client(node.config.control_address, timeout=WAIT) as c:
        done = run_to_end(c, chain())
        stuck = c.start_workflow(HANG).id
        c.wait(stuck, timeout=0.5)
    # the hanging execution was live when the node stopped: recovery must read its log
    good = encode_record({"seq": 2, "type": "workflow.started"})
    _corrupt_event(data, stuck, 2, good[:4] + b"\x00" + good[5:])  # checksum mismatch
    key = event_key(stuck, 2).hex()
    assert tamma_node(["verify", "--data-dir", str(data)]) == 1
    out = capsys.readouterr().out
    assert key in out and "checksum" in out and stuck in out
    with Node(config(data)) as node, Client(node.config.control_address, timeout=WAIT) as c:
        assert stuck in node.engine.unrecovered and key in node.engine.unrecovered[stuck]
        health = c.health()
        assert health["status"] == "degraded"
        assert key in health["recovery"]["unrecoverable"][stuck]
        report = c.admin_verify()
        assert not report["ok"] and any(key in p for p in report["problems"])
        # the node serves the healthy executions and new work
        assert c.get_workflow(done).status == "completed"
        run_to_end(c, chain())


def test_a_truncated_record_is_reported_by_verify(data: Path) -> None:
    with Node(config(data)) as node, Client(node.config.control_address, timeout=WAIT) as c:
        eid = run_to_end(c, chain())
    _corrupt_event(data, eid, 3, b"\x01\x02")
    with LmdbStore(data / "store") as store:
        report = verify_store(store)
    assert not report.ok
    assert any(event_key(eid, 3).hex() in p and "truncated" in p for p in report.problems)
    assert any(f"execution {eid}" in p and "damaged" in p for p in report.problems)


# -- backup and restore ----------------------------------------------------------------------


def test_backup_while_running_then_a_node_on_the_copy_and_a_restore(
    node: Node, client: Client, data: Path, short_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    acked: list[str] = []
    stop, enough = threading.Event(), threading.Event()

    def load() -> None:  # starts keep committing while the copy is taken
        with Client(node.config.control_address, timeout=WAIT) as c:
            while not stop.is_set() and len(acked) < 200:
                acked.append(c.start_workflow(chain("load"), {"n": len(acked)}).id)
                if len(acked) >= 5:
                    enough.set()

    worker = threading.Thread(target=load)
    worker.start()
    try:
        assert enough.wait(WAIT)
        result = client.admin_backup(short_dir / "bk")
        before_cli = len(acked)
    finally:
        stop.set()
        worker.join(WAIT)
    assert result["verify"]["ok"], result
    assert result["path"] == str(short_dir / "bk") and result["bytes"] > 0
    copied = result["verify"]["executions"]
    assert 5 <= copied <= before_cli
    # the CLI form, into a relative path resolved by the client
    assert tamma(["--data-dir", str(data), "admin", "backup", str(short_dir / "bk2")]) == 0
    assert "backup written to" in capsys.readouterr().out
    # a backup into a used directory is refused with a clear error
    with pytest.raises(TammaError, match="must be a new or empty directory"):
        client.admin_backup(short_dir / "bk")
    # a node starts on the copy as it is
    with (
        Node(config(short_dir / "bk")) as copy,
        Client(copy.config.control_address, timeout=WAIT) as c,
    ):
        listed = c.list_workflows()
        assert len(listed) == copied and {r.id for r in listed} <= set(acked)
        for record in listed:  # executions caught mid-way finish on the copy
            assert c.wait(record.id, timeout=WAIT).status == "completed"
    # restore: checked, then copied into a new data directory
    assert tamma_node(["restore", str(short_dir / "bk"), "--data-dir", str(short_dir / "r")]) == 0
    assert f"restored {copied} executions" in capsys.readouterr().out
    assert tamma_node(["verify", "--data-dir", str(short_dir / "r")]) == 0
    assert tamma_node(["restore", str(short_dir / "bk"), "--data-dir", str(short_dir / "r")]) == 1
    assert "new or empty directory" in capsys.readouterr().err
    assert tamma_node(["restore", str(short_dir / "nothing"), "--data-dir", "/tmp/x"]) == 1
    assert "holds no store" in capsys.readouterr().err


def test_a_relative_backup_path_is_refused_on_the_wire(client: Client) -> None:
    with pytest.raises(Exception, match="dest"):
        client.request("admin.backup", {"dest": "relative/dir"})


# -- retention -------------------------------------------------------------------------------


def test_cleanup_removes_only_old_terminal_executions_with_their_events() -> None:
    store = MemoryStore()
    day = 86400.0

    def put(eid: str, status: str, end: float | None) -> None:
        event = {"seq": 1, "type": "workflow.created"}
        summary = {"id": eid, "status": status, "end_time": end}
        store.commit([Write(eid, events=[event], summary=summary)])

    put("old", "completed", 0.0)
    put("old-failed", "failed", 1.0)
    put("recent", "completed", 9 * day)
    put("running", "running", None)
    result = cleanup_store(store, 5, now=10 * day)
    assert sorted(result["deleted"]) == ["old", "old-failed"] and result["cutoff"] == 5 * day
    assert [s["id"] for s in store.iter_summaries()] == ["recent", "running"]
    assert store.read_events("old") == []
    with pytest.raises(StoreError, match="positive"):
        cleanup_store(store, 0, now=0.0)


def test_a_refused_revival_leaves_nothing_that_outlives_cleanup(data: Path) -> None:
    """A retry of a step that cannot run again, on a failed execution: the supervisor made
    to revive it refuses, and retires. Once cleanup deletes the execution, nothing in the
    node answers for it (a supervisor kept live would answer from memory)."""
    tiny = 1e-7  # days: ~9 ms
    spec = chain("fails", "noop", "fail")
    spec["retry_policy"] = {"max_attempts": 1}
    with Node(config(data)) as node, Client(node.config.control_address, timeout=WAIT) as c:
        eid = c.start_workflow(spec).id
        assert c.wait(eid, timeout=WAIT).status == "failed"
        with pytest.raises(TammaError, match="only a failed or cancelled step can be retried"):
            c.retry_step(eid, "s0")  # it succeeded
        c.wait(live := c.start_workflow(HANG).id, timeout=0.1)  # past the tiny retention
        assert c.admin_cleanup(tiny)["deleted"] == [eid]
        for ask in (c.get_workflow, c.get_workflow_status, lambda i: c.retry_step(i, "s1")):
            with pytest.raises(TammaError, match="no execution"):
                ask(eid)
        assert node.engine.live_count == 1  # the hanging one alone
        c.abort_workflow(live)


def test_admin_cleanup_and_the_retention_setting(
    data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tiny = 1e-7  # days: ~9 ms
    with Node(config(data)) as node, Client(node.config.control_address, timeout=WAIT) as c:
        first = run_to_end(c, chain())
        live = c.start_workflow(HANG).id
        c.wait(live, timeout=0.1)  # time passes beyond the tiny retention
        assert c.admin_cleanup(tiny)["deleted"] == [first]
        assert [r.id for r in c.list_workflows()] == [live]
        assert c.get_events(live)  # a live execution keeps everything
        c.abort_workflow(live)
        second = run_to_end(c, chain())
    # at start, with retention_days set
    with (
        Node(config(data, retention_days=tiny)) as node,
        Client(node.config.control_address, timeout=WAIT) as c,
    ):
        assert c.list_workflows() == []
        run_to_end(c, chain())
        # and periodically while running
        stop = threading.Event()
        runner = threading.Thread(target=node.run, args=(stop, 0.05))
        node.config.retention_interval = 0.05
        runner.start()
        try:
            for _ in range(200):  # bounded poll: the cleanup has no event to wait on
                if not c.list_workflows():
                    break
                stop.wait(0.05)
            assert c.list_workflows() == []
        finally:
            stop.set()
            runner.join(WAIT)
        assert second not in {r.id for r in c.list_workflows()}
    assert tamma_node(["cleanup", "--data-dir", str(data), "--older-than", "30"]) == 0
    assert "deleted 0 execution(s)" in capsys.readouterr().out


# -- the admin role --------------------------------------------------------------------------


def test_admin_ops_need_the_admin_role(data: Path) -> None:
    tokens = {"v-token": "viewer", "o-token": "operator", "a-token": "admin"}
    with Node(config(data, tokens=tokens)) as node:
        for token in ("v-token", "o-token"):
            with Client(node.config.control_address, token=token, timeout=WAIT) as c:
                for call in (c.admin_verify, lambda: c.admin_cleanup(1)):
                    with pytest.raises(Forbidden, match="needs 'admin'"):
                        call()
        with Client(node.config.control_address, token="a-token", timeout=WAIT) as c:
            assert c.admin_verify()["ok"]


# -- a full store ------------------------------------------------------------------------------


def test_a_full_store_refuses_new_work_and_keeps_what_it_committed(
    data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blob = "x" * (96 * 1024)  # each execution stores its inputs in several records
    acked: list[str] = []
    cfg = config(data, map_size=MiB, max_map_size=MiB)
    with Node(cfg) as node, Client(node.config.control_address, timeout=WAIT) as c:
        with pytest.raises(StoreFull):
            for _ in range(100):
                acked.append(c.start_workflow(chain(), {"blob": blob}).id)
        assert acked, "the map should hold a few executions"
        with pytest.raises(StoreFull, match="accepts no new work"):
            c.start_workflow(chain(), {})
        health = c.health()
        assert health["status"] == "degraded" and "store_refuses_writes" in health
        for eid in acked:  # what was acknowledged is readable
            assert c.get_workflow(eid).id == eid
    # with room to grow, every acknowledged execution is there and finishes
    with Node(config(data)) as node, Client(node.config.control_address, timeout=WAIT) as c:
        for eid in acked:
            assert c.wait(eid, timeout=WAIT).status == "completed"
        assert c.admin_verify()["ok"]
        run_to_end(c, chain())


def test_intake_is_refused_while_draining(node: Node, client: Client) -> None:
    assert (client.health()["status"], client.health()["draining"]) == ("ok", False)
    node.drain(grace=0.0)
    assert (client.health()["status"], client.health()["draining"]) == ("draining", True)
    with pytest.raises(TammaError, match="shutting down") as refused:
        client.start_workflow(chain())
    assert refused.value.code == "unavailable"  # not a fault of the node: it is leaving


def test_a_draining_node_answers_a_start_again_with_the_execution_it_made(
    node: Node, client: Client
) -> None:
    # A client that lost the reply to an idempotent start asks again: not new intake.
    first = client.start_workflow(chain(), {"n": 1}, execution_id="job-1")
    node.drain(grace=0.0)
    assert client.start_workflow(chain(), {"n": 1}, execution_id="job-1").id == first.id
    with pytest.raises(TammaError, match="shutting down"):  # another id is new work
        client.start_workflow(chain(), {"n": 1}, execution_id="job-2")
    with pytest.raises(TammaError, match="exists with another workflow or other inputs"):
        client.start_workflow(chain(), {"n": 2}, execution_id="job-1")


def test_the_verify_cli_prints_problems_as_json(
    data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with Node(config(data)) as node, Client(node.config.control_address, timeout=WAIT) as c:
        eid = run_to_end(c, chain())
    _corrupt_event(data, eid, 1, b"")
    assert tamma_node(["verify", "--data-dir", str(data), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False and any(event_key(eid, 1).hex() in p for p in report["problems"])


def test_drain_holds_new_dispatches_and_the_next_start_sends_them(
    data: Path, short_dir: Path
) -> None:
    log = short_dir / "record.log"
    spec = {
        "name": "drain",
        "steps": [
            {"name": "slow", "implementation": "sleep", "config": {"seconds": 0.5}},
            {
                "name": "after",
                "implementation": "record",
                "config": {"path": str(log)},
                "dependencies": ["slow"],
            },
        ],
    }
    with Node(config(data)) as node, Client(node.config.control_address, timeout=WAIT) as c:
        eid = c.start_workflow(spec).id
        until_running(c, eid, "slow")
        assert node.drain(grace=WAIT) is True
        record = c.get_workflow(eid)
        assert record.results["slow"].status == "succeeded"
        assert record.results["after"].status == "dispatched"  # committed, held back
        assert not log.exists()
    with Node(config(data)) as node, Client(node.config.control_address, timeout=WAIT) as c:
        assert node.recovered == 1
        assert c.wait(eid, timeout=WAIT).status == "completed"
    assert log.read_text().split() == [eid, "after", "1"]


def test_a_drain_sends_no_queued_step_and_does_not_wait_for_queued_ones(data: Path) -> None:
    slow = {"implementation": "sleep", "config": {"seconds": 0.6}}
    spec = {
        "name": "queued",
        "steps": [
            {"name": "first", **slow},  # takes the one slot
            *({"name": f"q{i}", **slow} for i in range(3)),  # queued in the pool behind it
        ],
    }
    with (
        Node(config(data, worker_slots=1)) as node,
        Client(node.config.control_address, timeout=WAIT) as c,
    ):
        eid = c.start_workflow(spec).id
        until_running(c, eid, "first")
        assert node.drain(grace=WAIT) is True  # the running one finished
        results = c.get_workflow(eid).results
        assert results["first"].status == "succeeded"
        # still committed as dispatched, never sent: they go out at the next start
        assert [results[f"q{i}"].status for i in range(3)] == ["dispatched"] * 3
    with (
        Node(config(data, worker_slots=1)) as node,
        Client(node.config.control_address, timeout=WAIT) as c,
    ):
        final = c.wait(eid, timeout=WAIT)
        assert final.status == "completed"
        started = [e.data["step"] for e in c.get_events(eid) if e.type == "step.started"]
        assert sorted(started) == ["first", "q0", "q1", "q2"]  # each started once


def test_a_step_no_worker_took_leaves_nothing_to_drain(data: Path) -> None:
    with (
        Node(config(data, workers=0)) as node,
        Client(node.config.control_address, timeout=WAIT) as c,
    ):
        eid = c.start_workflow(chain("nobody")).id
        assert c.get_workflow(eid).results["s0"].status == "dispatched"  # queued: no worker
        assert node.drain(grace=1.0) is True  # nothing runs: nothing to give the grace to


def test_a_drain_that_runs_out_of_grace_says_so(node: Node, client: Client) -> None:
    eid = client.start_workflow(HANG).id
    until_running(client, eid, "h")
    assert node.drain(grace=0.2) is False


def test_admin_refusals_name_the_problem(short_dir: Path) -> None:
    memory = MemoryStore()
    with pytest.raises(StoreError, match="only an LMDB store"):
        backup_store(memory, short_dir / "x")
    with LmdbStore(short_dir / "s" / "store") as store:
        with pytest.raises(StoreError, match="absolute path"):
            backup_store(store, Path("relative"))
        (short_dir / "file").write_text("")
        with pytest.raises(StoreError, match="new or empty"):
            backup_store(store, short_dir / "file")
        admin = StoreAdmin(store)
        assert admin.verify().result(WAIT)["ok"]
        admin.close()
        with pytest.raises(TammaError, match="shutting down"):
            admin.verify().result(WAIT)
    with pytest.raises(StoreError, match="holds no store"), offline_store(short_dir / "no"):
        pass


def test_a_damaged_backup_is_not_restored(data: Path, short_dir: Path) -> None:
    with Node(config(data)) as node, Client(node.config.control_address, timeout=WAIT) as c:
        eid = run_to_end(c, chain())
        c.admin_backup(short_dir / "bk")
    _corrupt_event(short_dir / "bk", eid, 2, b"\x00\x00\x00\x00bad")
    with pytest.raises(StoreError, match="fails verification"):
        restore_backup(short_dir / "bk", short_dir / "restored")
    assert not (short_dir / "restored" / "store").exists()


def test_a_node_grows_its_map_instead_of_refusing_work(data: Path) -> None:
    blob = "y" * (128 * 1024)
    with (
        Node(config(data, map_size=MiB)) as node,
        Client(node.config.control_address, timeout=WAIT) as c,
    ):
        ids = [c.start_workflow(chain(), {"blob": blob}).id for _ in range(24)]
        for eid in ids:
            assert c.wait(eid, timeout=WAIT).status == "completed"
        store = c.health()["store"]
        assert store["map_size"] > MiB and "store_refuses_writes" not in c.health()


def test_a_damaged_snapshot_is_reported_and_recovery_replays_the_whole_log(data: Path) -> None:
    with (
        Node(config(data, snapshot_every=1)) as node,
        Client(node.config.control_address, timeout=WAIT) as c,
    ):
        eid = c.start_workflow(HANG).id
        until_running(c, eid, "h")
    env = lmdb.open(str(data / "store"), max_dbs=10)
    try:
        with env.begin(write=True) as txn:
            txn.put(id_key(eid), b"\x00\x00\x00\x01oops", db=env.open_db(b"snapshots", txn=txn))
    finally:
        env.close()
    with Node(config(data)) as node, Client(node.config.control_address, timeout=WAIT) as c:
        assert node.recovered == 1 and not node.engine.unrecovered
        assert id_key(eid).hex() in c.health()["recovery"]["from_full_log"][eid]
        assert c.abort_workflow(eid).status == "aborted"  # live again, and it obeys


def test_the_admin_cli_speaks_json(
    client: Client, data: Path, short_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_to_end(client, chain())
    base = ["--data-dir", str(data), "--json", "admin"]
    assert tamma([*base, "verify"]) == 0
    assert json.loads(capsys.readouterr().out)["executions"] == 1
    assert tamma([*base, "backup", str(short_dir / "bk")]) == 0
    assert json.loads(capsys.readouterr().out)["verify"]["ok"] is True
    assert tamma([*base, "cleanup", "--older-than", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["deleted"] == []
    assert tamma(["--data-dir", str(data), "admin", "cleanup", "--older-than", "1"]) == 0
    assert "deleted 0 execution(s)" in capsys.readouterr().out
    for days in ("0", "-1", "nan", "soon"):  # refused before any request, as tamma-node's
        assert tamma([*base, "cleanup", "--older-than", days]) == 2
        assert "argument --older-than: " in capsys.readouterr().err
        with pytest.raises(SystemExit) as usage:
            tamma_node(["cleanup", "--data-dir", str(data), "--older-than", days])
        assert usage.value.code == 2
        assert "argument --older-than: " in capsys.readouterr().err


def test_an_empty_directory_argument_is_refused_and_a_tilde_is_the_home(
    short_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # '' was the current directory (verify, cleanup and restore read the store there), and
    # '~/x' a directory named '~' in it, where the node's own data_dir setting refuses ''
    # and expands '~'.
    for argv in (
        ["verify", "--data-dir", ""],
        ["cleanup", "--data-dir", " ", "--older-than", "1"],
        ["restore", "", "--data-dir", str(short_dir / "new")],
        ["restore", str(short_dir), "--data-dir", ""],
    ):
        with pytest.raises(SystemExit) as usage:
            tamma_node(argv)
        assert usage.value.code == 2
        assert "an empty path names no directory" in capsys.readouterr().err
    assert tamma(["--data-dir", "", "admin", "verify"]) == 2
    assert "an empty path names no directory" in capsys.readouterr().err
    monkeypatch.setenv("HOME", str(short_dir))
    assert tamma_node(["verify", "--data-dir", "~/nothing"]) == 1
    assert f"{short_dir}/nothing holds no store" in capsys.readouterr().err
