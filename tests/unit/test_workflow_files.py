"""Where a subflow may read its workflow file: the node's ``workflow_dirs``.

A subflow's file is read by the node on the node's machine, and what the file holds comes
back in the step's error when it is not a workflow; so a node whose callers are not all
trusted with its files (it has tokens) reads only inside the directories it was given.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tamma_actors._config import load_node_config
from tamma_actors._errors import WorkflowError
from tamma_actors._store import MemoryStore, Write
from tamma_actors._subflows import WorkflowFiles, resolve_workflow

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
    definition, source = resolve_workflow(workflow, parent, MemoryStore(), files)
    assert source is not None
    return str(definition["name"])


def test_without_dirs_any_file_is_read(tree: Path) -> None:
    files = WorkflowFiles()
    assert _resolve(str(tree / "flows" / "child.yaml"), files) == "child"
    # read, whatever it holds: its validation (at the child's start) would name its keys
    definition, _ = resolve_workflow(str(tree / "secret.yaml"), None, MemoryStore(), files)
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
    definition, source = resolve_workflow("child", None, store, files)
    assert definition == CHILD and source == "definition child"


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
