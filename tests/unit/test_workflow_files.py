"""How a subflow finds its workflow: a file, only inside the node's ``workflow_dirs``
when it has some, or a name, through the node's index of names (``WorkflowNames``).

A subflow's file is read by the node on the node's machine, and what the file holds comes
back in the step's error when it is not a workflow; so a node whose callers are not all
trusted with its files (it has tokens) reads only inside the directories it was given.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tamma_actors._config import load_node_config
from tamma_actors._errors import WorkflowError
from tamma_actors._store import MemoryStore, Write
from tamma_actors._subflows import (
    WorkflowFiles,
    WorkflowNames,
    resolve_workflow,
    unreadable_subflow_files,
)
from tamma_actors._workflow_file import parse_workflow

CHILD = {"name": "child", "steps": [{"name": "c", "implementation": "noop"}]}
SECRET = "hunter2-do-not-leak"


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """flows/child.yaml (a workflow), flows/sub/grand.yaml, and outside it secret.yaml
    (a mapping the node must not echo back) and a link from flows/ to it."""
    flows = tmp_path / "flows"
    (flows / "sub").mkdir(parents=True)
    (flows / "child.yaml").write_text(yaml.safe_dump(CHILD))
    (flows / "sub" / "grand.yaml").write_text(yaml.safe_dump(CHILD | {"name": "grand"}))
    (tmp_path / "secret.yaml").write_text(f"root:{SECRET}:20228::\n")
    (flows / "link.yaml").symlink_to(tmp_path / "secret.yaml")
    return tmp_path


def _resolve(workflow: str, files: WorkflowFiles, parent: str | None = None) -> str:
    definition, source = resolve_workflow(workflow, parent, WorkflowNames(MemoryStore()), files)
    assert source is not None
    return str(definition["name"])


def test_without_dirs_any_file_is_read(tree: Path) -> None:
    files = WorkflowFiles()
    assert _resolve(str(tree / "flows" / "child.yaml"), files) == "child"
    # read, whatever it holds: its validation (at the child's start) would name its keys
    names = WorkflowNames(MemoryStore())
    definition, _ = resolve_workflow(str(tree / "secret.yaml"), None, names, files)
    assert definition == {f"root:{SECRET}:20228:": None}


def test_inside_the_dirs_a_file_and_its_subdirectories_are_read(tree: Path) -> None:
    files = WorkflowFiles((tree / "flows",))
    assert _resolve(str(tree / "flows" / "child.yaml"), files) == "child"
    assert _resolve(str(tree / "flows" / "sub" / "grand.yaml"), files) == "grand"
    # relative to the parent's own file, as without dirs
    parent = str(tree / "flows" / "sub" / "parent.yaml")
    assert _resolve("../child.yaml", files, parent) == "child"
    assert _resolve("grand.yaml", files, parent) == "grand"


@pytest.mark.parametrize(
    "workflow",
    [
        "{tree}/secret.yaml",  # outside
        "{tree}/flows/../secret.yaml",  # climbs out
        "{tree}/flows/link.yaml",  # a link inside to a file outside
        "{tree}/flows-2/child.yaml",  # a sibling sharing the prefix
        "/etc/passwd",
    ],
)
def test_outside_the_dirs_nothing_is_read_and_the_error_names_the_dirs(
    tree: Path, workflow: str
) -> None:
    (tree / "flows-2").mkdir()
    (tree / "flows-2" / "child.yaml").write_text(f"root:{SECRET}:20228::\n")
    files = WorkflowFiles((tree / "flows",))
    with pytest.raises(WorkflowError) as caught:
        _resolve(workflow.format(tree=tree), files)
    message = str(caught.value)
    assert "outside the node's workflow_dirs" in message and str(tree / "flows") in message
    assert SECRET not in message and "/bin/" not in message


def test_a_relative_parent_path_cannot_climb_out(tree: Path) -> None:
    files = WorkflowFiles((tree / "flows",))
    with pytest.raises(WorkflowError, match="outside the node's workflow_dirs"):
        _resolve("../secret.yaml", files, str(tree / "flows" / "parent.yaml"))


def test_no_dirs_at_all_reads_no_file_but_a_named_workflow_still_runs(tree: Path) -> None:
    files = WorkflowFiles(())
    with pytest.raises(WorkflowError) as caught:
        _resolve(str(tree / "flows" / "child.yaml"), files)
    assert "has tokens and no workflow_dirs" in str(caught.value)
    store = MemoryStore()
    summary = {"id": "e1", "workflow_id": "child", "digest": "d1"}
    store.commit([Write("e1", summary=summary, definition=("d1", CHILD))])
    definition, source = resolve_workflow("child", None, WorkflowNames(store), files)
    assert definition == CHILD and source == "definition child"


def test_a_start_lists_each_subflow_file_the_node_would_not_read(tree: Path) -> None:
    def sub(name: str, workflow: str) -> dict[str, Any]:
        return {"name": name, "type": "subflow", "config": {"workflow": workflow}}

    cfg = parse_workflow(
        {
            "name": "parent",
            "steps": [
                sub("inside", "child.yaml"),  # relative to the parent's file: inside
                {"name": "task", "implementation": "noop"},
                sub("climbs", "../secret.yaml"),
                sub("by_name", "child"),  # a name: no file, nothing to check at start
                sub("absolute", str(tree / "secret.yaml")),
            ],
        },
        known_implementations={"noop"},
    )
    parent = str(tree / "flows" / "parent.yaml")
    problems = unreadable_subflow_files(cfg, parent, WorkflowFiles((tree / "flows",)))
    assert [p.loc for p in problems] == ["steps[2].config.workflow", "steps[4].config.workflow"]
    assert all("outside the node's workflow_dirs" in p.message for p in problems)
    assert unreadable_subflow_files(cfg, parent, WorkflowFiles()) == []  # any file
    # with no dirs at all, each file is refused, a name still is not
    problems = unreadable_subflow_files(cfg, parent, WorkflowFiles(()))
    assert [p.loc for p in problems] == [f"steps[{i}].config.workflow" for i in (0, 2, 4)]


def test_the_node_config_chooses_the_dirs(tree: Path) -> None:
    data = tree / "var"
    # no tokens: every caller is admin, any file
    assert load_node_config(None, data_dir=data).workflow_file_dirs is None
    # tokens and no dirs: none
    cfg = load_node_config(None, data_dir=data, tokens={"t": "operator"})
    assert cfg.workflow_file_dirs == ()
    # dirs, with tokens or without
    for extra in ({}, {"tokens": {"t": "operator"}}):
        cfg = load_node_config(None, data_dir=data, workflow_dirs=[tree / "flows"], **extra)
        assert cfg.workflow_file_dirs == (tree / "flows",)


# -- names ------------------------------------------------------------------------------


class _Counting(MemoryStore):
    """A MemoryStore that counts the passes over its summaries; ``during`` runs once the
    first summary of a pass has been read."""

    def __init__(self) -> None:
        super().__init__()
        self.passes = 0
        self.during: Any = None

    def iter_summaries(self, *, after: str | None = None) -> Iterator[dict[str, Any]]:
        self.passes += 1
        for n, summary in enumerate(super().iter_summaries(after=after)):
            if n == 1 and self.during is not None:
                during, self.during = self.during, None
                during()
            yield summary


def _stored(store: MemoryStore, eid: str, name: str, digest: str, started: float = 0.0) -> None:
    definition = {"name": name, "steps": [{"name": digest, "implementation": "noop"}]}
    summary = {"id": eid, "workflow_id": name, "digest": digest, "start_time": started}
    store.commit([Write(eid, summary=summary, definition=(digest, definition))])


def test_a_name_means_its_execution_started_last_and_one_pass_serves_them_all() -> None:
    store = _Counting()
    _stored(store, "e2", "build", "d-old", started=100.0)
    _stored(store, "e1", "build", "d-new", started=200.0)  # an older id (client-chosen)
    _stored(store, "run-old", "build", "d-named", started=50.0)  # sorts above any hex id
    _stored(store, "e3", "deploy", "d-dep", started=10.0)
    _stored(store, "e4", "deploy", "d-tie", started=10.0)  # the same time: the higher id
    names = WorkflowNames(store)
    assert names.digest("build") == "d-new" and names.digest("deploy") == "d-tie"
    assert names.digest("nobody") is None
    assert store.passes == 1
    definition, source = resolve_workflow("build", None, names)
    assert definition["steps"][0]["name"] == "d-new" and source == "definition build"
    with pytest.raises(WorkflowError, match="neither a workflow file nor a workflow"):
        resolve_workflow("nobody", None, names)
    assert store.passes == 1


def test_starts_noted_after_and_during_the_pass_are_known_without_another() -> None:
    store = _Counting()
    for n in range(3):
        _stored(store, f"e{n}", "other", f"d{n}")
    names = WorkflowNames(store)
    names.created("e9", "early", "d-early", 1.0)  # before any pass: the pass reads the store
    _stored(store, "e4", "early", "d-early")

    def meanwhile() -> None:  # committed during the pass, after its read reached it
        names.created("e5", "during", "d-during", 2.0)

    store.during = meanwhile
    assert names.digest("during") == "d-during"
    assert names.digest("early") == "d-early"
    names.created("e6", "build", "d-b", 3.0)
    names.created("e7", "build", "d-b2", 4.0)
    names.created("z0", "build", "d-higher-id", 3.5)  # a start before it does not replace it
    assert names.digest("build") == "d-b2"
    assert store.passes == 1


def test_a_deletion_makes_the_next_question_pass_again() -> None:
    store = _Counting()
    _stored(store, "e1", "build", "d1")
    _stored(store, "e2", "build", "d2")
    names = WorkflowNames(store)
    assert names.digest("build") == "d2"
    store.commit([Write("e2", delete=True)])
    names.deleted()
    assert names.digest("build") == "d1" and store.passes == 2
    assert names.digest("build") == "d1" and store.passes == 2


def test_a_pass_during_which_executions_were_deleted_is_not_kept() -> None:
    store = _Counting()
    for n in range(3):
        _stored(store, f"e{n}", "build", f"d{n}")
    names = WorkflowNames(store)
    store.during = names.deleted
    assert names.digest("build") == "d2"
    assert names.digest("build") == "d2" and store.passes == 2  # passed again
    assert names.digest("build") == "d2" and store.passes == 2  # that one was kept
