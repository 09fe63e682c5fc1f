"""Chaos harness: a real `tamma-node run` child process, a seeded workload of workflows,
kill markers in the `record` log, and the checks every chaos test ends with.

The record log is shared by every `record` step (``<execution> <step> <attempt>`` per run)
and by the test, which appends ``KILL <n> <time>`` once the killed process (node or
worker) is gone. A run line therefore belongs to the *epoch* after the markers before it,
and a committed event to the epoch after the kills that happened before its timestamp:
a run of a step in an epoch after its result was committed is a step run again after
commit, which the engine promises never happens.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from tamma_actors import Client
from tamma_actors._admin import verify_store
from tamma_actors._errors import StoreError, TammaError
from tamma_actors._lmdb_store import LmdbStore
from tamma_actors._state import replay

WAIT = 90.0
SEED = int(os.environ.get("TAMMA_CHAOS_SEED", "20261125"))
TERMINAL = {"completed", "failed", "aborted"}


class NodeProcess:
    """`tamma-node run` as a child process, stopped or killed by the test."""

    def __init__(self, config: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tamma_actors._cli_node", "run", "--config", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.proc.stdout is not None
        banner = self.proc.stdout.readline()
        if "control" not in banner:
            self.kill()
            raise AssertionError(f"the node did not start: {banner!r}")
        match = re.search(r"\((\d+) executions recovered\)", banner)
        self.recovered = int(match.group(1)) if match else -1

    def children(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def kill(self) -> None:
        """SIGKILL, then wait until the node *and its workers* are gone."""
        children = self.children()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)
        _, alive = psutil.wait_procs(children, timeout=15)
        for proc in alive:  # workers die with their node (PDEATHSIG); make sure
            proc.kill()
        psutil.wait_procs(alive, timeout=10)

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=WAIT)
        finally:
            self.kill()


def write_config(path: Path, data: Path, **extra: Any) -> Path:
    values = {
        "data_dir": str(data),
        "workers": 2,
        "worker_slots": 4,
        "heartbeat_interval": 0.2,
        "heartbeat_timeout": 3.0,
        "cancel_grace": 0.5,
        "shutdown_grace": 10.0,
        "snapshot_every": 5,  # recovery goes through snapshots, not only full replays
        "rest_after": 0.1,  # parked executions rest while the node runs, not only on recovery
        "log_level": "WARNING",
        "allow_record": True,  # the workload's steps record each run in a file
    }
    values.update(extra)
    lines = [
        f"{key} = {value!r}".replace("'", '"')
        if isinstance(value, str)
        else f"{key} = {str(value).lower() if isinstance(value, bool) else value}"
        for key, value in values.items()
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


# -- the workload ----------------------------------------------------------------------------


def _record(log: Path, name: str, *deps: str) -> dict[str, Any]:
    return {
        "name": name,
        "implementation": "record",
        "config": {"path": str(log)},
        "dependencies": list(deps),
    }


def _step(name: str, impl: str, *deps: str, **config: Any) -> dict[str, Any]:
    return {"name": name, "implementation": impl, "config": config, "dependencies": list(deps)}


def write_child(log: Path) -> Path:
    """The workflow a subflow step runs: two record steps in a chain. Each round's submitter
    writes it again while the node runs subflows that read it, so it is replaced atomically
    (a plain rewrite truncates first, and a subflow starting then reads an empty file)."""
    child = log.parent / "child.yaml"
    partial = child.with_suffix(".partial")
    partial.write_text(
        json.dumps({"name": "child", "steps": [_record(log, "c1"), _record(log, "c2", "c1")]})
    )
    os.replace(partial, child)
    return child


KINDS = ["chain", "diamond", "retry", "wide", "fanout", "decision", "subflow", "parked"]


def make_workflow(rng: random.Random, log: Path) -> dict[str, Any]:
    """One of KINDS, with record steps throughout (and in the fan-out's items)."""
    kind = rng.choice(KINDS)
    pause = round(rng.uniform(0.0, 0.25), 3)
    if kind == "chain":
        steps = [
            _record(log, "a"),
            _step("b", "sleep", "a", seconds=pause),
            _record(log, "c", "b"),
        ]
    elif kind == "diamond":
        steps = [
            _record(log, "a"),
            _step("b", "sleep", "a", seconds=pause),
            _record(log, "c", "a"),
            _record(log, "d", "b", "c"),
        ]
    elif kind == "retry":
        steps = [
            _step("f", "fail", times=rng.randint(1, 2), error="Flaky"),
            _record(log, "g", "f"),
        ]
    elif kind == "wide":
        steps = [_record(log, f"w{i}") for i in range(3)]
        steps.append(_step("join", "noop", "w0", "w1", "w2"))
    elif kind == "fanout":
        items = list(range(rng.randint(0, 4)))
        fan = {**_record(log, "fan", "a"), "type": "parallel"}
        fan["config"] = {"path": str(log), "items": items, "max_concurrency": 2}
        steps = [_record(log, "a"), fan, _step("after", "noop", "fan")]
    elif kind == "decision":
        go = rng.choice(["yes", "no"])
        branches = [{"when": f"steps.src.output == '{go}'", "then": ["yes"]}]
        steps = [
            _step("src", "echo", message="yes"),
            {"name": "pick", "type": "decision", "dependencies": ["src"],
             "config": {"branches": [*branches, {"otherwise": ["no"]}]}},
            _record(log, "yes", "pick"),
            _record(log, "no", "pick"),
            _record(log, "end", "yes", "no"),
        ]  # fmt: skip
    elif kind == "parked":  # a durable timer: it rests (no supervisor) until it wakes
        steps = [
            _record(log, "a"),
            _step("park", "wait", "a", seconds=round(rng.uniform(0.2, 1.5), 3)),
            _record(log, "z", "park"),
        ]
    else:
        child = str(log.parent / "child.yaml")
        steps = [
            _record(log, "a"),
            {"name": "sub", "type": "subflow", "dependencies": ["a"],
             "config": {"workflow": child, "inputs": {}}},
            _record(log, "z", "sub"),
        ]  # fmt: skip
    return {
        "name": kind,
        "retry_policy": {"max_attempts": 6, "base_delay": 20, "max_delay": 100, "jitter": 0},
        "steps": steps,
    }


class Submitter:
    """Starts workflows one after another on its own thread until stopped or the node dies
    (every fourth three times over, in one ``start_many`` request); ``acked`` holds every
    execution whose start was acknowledged."""

    def __init__(self, data: Path, rng: random.Random, log: Path, acked: list[str]) -> None:
        self._data, self._rng, self._log, self.acked = data, rng, log, acked
        self._stop = threading.Event()
        write_child(log)
        self._specs = [make_workflow(rng, log) for _ in range(400)]
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with Client(data_dir=self._data, timeout=5.0) as client:
            for i, spec in enumerate(self._specs):
                if self._stop.is_set():
                    return
                try:
                    if i % 4 == 3:
                        self.acked.extend(e.id for e in client.start_workflows(spec, [{}] * 3))
                    else:
                        self.acked.append(client.start_workflow(spec).id)
                except StoreError:
                    continue  # its store writer died before confirming: not acked, go on
                except TammaError:
                    return  # the node died (or is shutting down): later starts are not acked
                self._stop.wait(0.01)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(WAIT)
        assert not self._thread.is_alive()


def mark_kill(log: Path, index: int, at: float) -> None:
    with open(log, "a", encoding="utf-8") as fh:
        fh.write(f"KILL {index} {at!r}\n")
        fh.flush()
        os.fsync(fh.fileno())


# -- the checks --------------------------------------------------------------------------------


@dataclass
class Runs:
    """The record log, parsed: run lines by (execution, step) with attempt and epoch."""

    kills: list[float] = field(default_factory=list)
    runs: dict[tuple[str, str], list[tuple[int, int]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    # The kills left the workers running (only the store writer died): a step in flight
    # may finish after a kill and run again once its execution is re-read.
    steps_outlive_kills: bool = False

    @classmethod
    def read(cls, log: Path) -> Runs:
        out = cls()
        if not log.exists():
            return out
        for line in log.read_text(encoding="utf-8").splitlines():
            parts = line.split()
            if parts[0] == "KILL":
                out.kills.append(float(parts[2]))
                continue
            assert len(parts) == 3, f"malformed record line {line!r}"
            out.runs[(parts[0], parts[1])].append((int(parts[2]), len(out.kills)))
        return out

    def epoch_of(self, ts: float) -> int:
        return sum(1 for k in self.kills if k < ts)


def check_store(
    data: Path,
    acked: list[str],
    log: Path,
    *,
    completed: bool,
    steps_outlive_kills: bool = False,
) -> dict[str, Any]:
    """Every check of a chaos run on the (stopped) node's store; returns a few counts and
    the workflows that completed (``kinds``)."""
    runs = Runs.read(log)
    runs.steps_outlive_kills = steps_outlive_kills
    with LmdbStore(data / "store") as store:
        report = verify_store(store)
        assert report.ok, report.problems
        summaries = {s["id"]: s for s in store.iter_summaries()}
        assert set(acked) <= set(summaries), "an acknowledged start was lost"
        reruns = 0
        for eid, summary in summaries.items():
            assert summary["status"] in TERMINAL, (eid, summary["status"])
            events = store.read_events(eid)
            if completed:
                why = [e["data"] for e in events if e["type"].endswith("failed")]
                assert summary["status"] == "completed", (eid, summary, why)
            reruns += _check_execution(eid, events, runs)
        strays = {eid for eid, _ in runs.runs} - set(summaries)
        assert not strays, f"steps ran for executions the store never had: {strays}"
    kinds = {s["workflow_id"] for s in summaries.values() if s["status"] == "completed"}
    return {
        "executions": len(summaries),
        "kills": len(runs.kills),
        "reruns": reruns,
        "kinds": kinds,
    }


def _check_execution(eid: str, events: list[dict[str, Any]], runs: Runs) -> int:
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1)), f"{eid}: gap"
    completions = [e for e in events if e["type"] == "step.completed"]
    per_step = Counter(e["data"]["step"] for e in completions)
    assert all(n == 1 for n in per_step.values()), f"{eid}: a result committed twice {per_step}"
    final = replay(eid, events)
    for name, st in final.steps.items():
        if st.status == "succeeded":
            assert per_step[name] == 1, f"{eid}/{name}: succeeded without its result"
    fanned = {e["data"]["step"] for e in events if e["type"] == "step.items_planned"}
    redispatched = Counter(
        (e["data"]["step"], e["data"]["attempt"])
        for e in events
        if e["type"] == "step.redispatched"
    )
    reruns = 0
    for done in completions:
        step = done["data"]["step"]
        if step in fanned:
            reruns += _check_items(eid, step, events, runs)
        elif (eid, step) in runs.runs:  # a record step
            count = lambda a, step=step: redispatched[(step, a)]  # noqa: E731
            reruns += _check_runs(f"{eid}/{step}", done, runs.runs[(eid, step)], runs, count)
    return reruns


def _check_runs(
    label: str,
    done: dict[str, Any],
    lines: list[tuple[int, int]],
    runs: Runs,
    redispatches: Callable[[int], int],
) -> int:
    """One committed result (``done``) against the runs that produced it: it ran, nothing
    ran at a later attempt or in an epoch after the commit, and an attempt ran twice in
    one epoch only when it was re-dispatched (its worker was lost). When the kills left
    the workers running, an attempt ran again at most once per kill (its result's commit
    was lost) besides its re-dispatches."""
    attempt = done["data"]["attempt"]
    assert any(a == attempt for a, _ in lines), f"{label}: committed but never ran"
    assert all(a <= attempt for a, _ in lines), f"{label}: ran after it succeeded"
    committed_in = runs.epoch_of(done["timestamp"])
    for a, epoch in lines:
        assert a != attempt or epoch <= committed_in, (
            f"{label} attempt {a} ran again in epoch {epoch}, after its result was "
            f"committed in epoch {committed_in}"
        )
    if runs.steps_outlive_kills:
        for a, n in Counter(a for a, _ in lines).items():
            assert n <= 1 + redispatches(a) + len(runs.kills), (
                f"{label} attempt {a} ran {n} times with {redispatches(a)} re-dispatches "
                f"and {len(runs.kills)} kills"
            )
        return len(lines) - 1
    for (a, epoch), n in Counter(lines).items():
        assert n <= 1 + redispatches(a), (
            f"{label} attempt {a} ran {n} times in epoch {epoch} with only "
            f"{redispatches(a)} re-dispatches"
        )
    return len(lines) - 1


def _check_items(eid: str, step: str, events: list[dict[str, Any]], runs: Runs) -> int:
    """A fan-out of record items (each runs as ``step[i]``): every planned item's result
    committed once, and each checked against its own runs like a record step."""
    mine = [e for e in events if e["data"].get("step") == step]
    planned = [e for e in mine if e["type"] == "step.items_planned"]
    items = len(planned[-1]["data"]["items"])
    done = [e for e in mine if e["type"] == "step.item_completed"]
    per_item = Counter(e["data"]["index"] for e in done)
    assert sorted(per_item) == list(range(items)), f"{eid}/{step}: items {per_item}"
    assert all(n == 1 for n in per_item.values()), f"{eid}/{step}: an item committed twice"
    lost = Counter(
        (e["data"]["index"], e["data"]["attempt"])
        for e in mine
        if e["type"] == "step.item_redispatched"
    )
    reruns = 0
    for item in done:
        index = item["data"]["index"]
        lines = runs.runs.get((eid, f"{step}[{index}]"), [])
        count = lambda a, index=index: lost[(index, a)]  # noqa: E731
        reruns += _check_runs(f"{eid}/{step}[{index}]", item, lines, runs, count)
    return reruns


def kill_and_mark(victim: psutil.Process, log: Path, index: int) -> None:
    """SIGKILL ``victim`` (a worker or the store writer), wait for it, mark the kill."""
    at = time.time()
    victim.kill()
    victim.wait(timeout=30)
    mark_kill(log, index, at)


def settle_and_stop(node: NodeProcess, submitter: Submitter, data: Path, acked: list[str]) -> None:
    """End the load: every acknowledged execution ends, the live store verifies clean, and
    the node stops gracefully (exit 0)."""
    submitter.stop()
    wait_all(data, acked)
    verified = cli_verify(data)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert node.terminate() == 0


def wait_all(data: Path, ids: list[str]) -> None:
    with Client(data_dir=data, timeout=WAIT) as client:
        for eid in ids:
            final = client.wait(eid, timeout=WAIT)
            if final.status not in TERMINAL:  # say why it is stuck
                raise AssertionError((eid, final.status, client.explain(eid)))


def cli_verify(data: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tamma_actors._cli", "--data-dir", str(data), "admin", "verify"],
        capture_output=True,
        text=True,
        timeout=WAIT,
    )


def pause(seconds: float) -> None:
    """A chaos test's deliberate wait: the kill moment is the point of the test."""
    time.sleep(seconds)
