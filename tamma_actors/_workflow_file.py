"""Workflow files: YAML loading, validation that lists every problem, DAG order.

:func:`parse_workflow` runs the pydantic validation *and* the graph checks on the raw
mapping, so one error report names every fault in the file (a bad field, a duplicate
step and a cycle all at once) instead of making the author fix them one by one.
"""

from __future__ import annotations

import contextlib
import heapq
import re
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

import yaml
from pydantic import ValidationError
from pydantic.alias_generators import to_camel, to_snake

from tamma_actors._errors import Problem, WorkflowValidationError
from tamma_actors._model_fields import judged_as_stored
from tamma_actors._models import WorkflowConfig
from tamma_actors._step_configs import step_type_problems
from tamma_actors._workflow_rules import StepNode, coordinator_problems, implementation_problems
from tamma_actors._workflow_schema import workflow_json_schema
from tamma_actors._workflow_yaml import (
    MAX_WORKFLOW_FILE_BYTES,
    YamlTooBig,
    read_workflow_file,
    read_workflow_mapping,
    yaml_data,
)

__all__ = [
    "MAX_WORKFLOW_FILE_BYTES",
    "YamlTooBig",
    "dependents",
    "load_workflow",
    "parse_workflow",
    "read_workflow_mapping",
    "topological_order",
    "workflow_json_schema",
    "yaml_data",
]


def load_workflow(
    path: str | Path, known_implementations: Collection[str] | None = None
) -> WorkflowConfig:
    """Read, validate and check the workflow file at ``path``; each problem's message
    ends with the line of the file it points at."""
    text, data = read_workflow_file(path)
    try:
        return parse_workflow(data, source=str(path), known_implementations=known_implementations)
    except WorkflowValidationError as exc:
        root = yaml.compose(text)  # already parsed once into a mapping: cannot fail here
        assert root is not None
        problems = [_with_line(problem, root) for problem in exc.problems]
        raise WorkflowValidationError(problems, exc.source) from exc


_LOC_PART = re.compile(r"\.?([^.\[\]]+)|\[(\d+)\]")


def _with_line(problem: Problem, root: yaml.Node) -> Problem:
    node = root
    for match in _LOC_PART.finditer(problem.loc):
        key, index = match.groups()
        child = _child(node, key, index)
        if child is None:
            break  # a missing field: point at its parent
        node = child
    return Problem(problem.loc, f"{problem.message} (line {node.start_mark.line + 1})")


def _child(node: yaml.Node, key: str | None, index: str | None) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode) and key is not None:
        # Locations use snake_case field names; the file may use the camelCase alias.
        names = {key, to_camel(key)}
        return next((value for k, value in node.value if k.value in names), None)
    if isinstance(node, yaml.SequenceNode) and index is not None and int(index) < len(node.value):
        child: yaml.Node = node.value[int(index)]
        return child
    return None


# --- validation ----------------------------------------------------------------------


def parse_workflow(
    data: Mapping[str, Any],
    *,
    source: str | None = None,
    known_implementations: Collection[str] | None = None,
    stored: bool = False,
) -> WorkflowConfig:
    """Validate a parsed workflow definition; raise :class:`WorkflowValidationError`
    listing every problem (field errors and graph errors), never a pydantic error.

    ``stored``: a definition the store holds, which an execution was started with. It is
    not judged again by rules made after it was stored (a workflow name's, a timeout above
    0, the bound on durations: see ``_model_fields.judged_as_stored``), nor by those a start
    checks against the node (``known_implementations`` is then None): its execution must
    still load, be explained, retried and aborted."""
    problems: list[Problem] = []
    config: WorkflowConfig | None = None
    try:
        with judged_as_stored() if stored else contextlib.nullcontext():
            config = WorkflowConfig.model_validate(data)
    except ValidationError as exc:
        problems.extend(_field_problems(exc, data))
    if isinstance(data, Mapping):
        graph = _Graph.from_raw(data)
        problems.extend(_graph_problems(graph, known_implementations))
        steps = dict(_indexed(data.get("steps")))
        problems.extend(step_type_problems(steps, graph.deps_of(), stored=stored))
    if problems or config is None:
        raise WorkflowValidationError(problems, source)
    return config


def _field_problems(exc: ValidationError, data: Any) -> Iterator[Problem]:
    for error in exc.errors():
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = _spelt_twice(data, error["loc"]) or "unknown field"
        elif error["type"] == "missing":
            message = "field required"
        yield Problem(_dotted(error["loc"]), message)


def _spelt_twice(data: Any, loc: tuple[int | str, ...]) -> str | None:
    """ "given twice (retry_policy and retryPolicy)" when the key pydantic calls unknown at
    ``loc`` is a field given under both its spellings (pydantic takes one, refuses the other)."""
    parent = data
    for part in loc[:-1]:  # locations name fields in snake_case; the file may not
        if isinstance(part, int):
            parent = parent[part] if _is_list(parent) and part < len(parent) else None
        elif isinstance(parent, Mapping):
            parent = parent.get(part, parent.get(to_camel(part)))
        else:
            return None
    key = loc[-1] if loc else None
    if not isinstance(key, str) or not isinstance(parent, Mapping):
        return None
    snake, camel = to_snake(key), to_camel(to_snake(key))
    if snake != camel and snake in parent and camel in parent:
        return f"given twice ({snake} and {camel})"
    return None


def _dotted(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


@dataclass
class _Graph:
    """The dependency graph as far as the raw mapping describes it: malformed entries
    are skipped here because the field validation already reported them."""

    nodes: list[StepNode] = field(default_factory=list)
    extra_deps: list[tuple[str, str, str]] = field(default_factory=list)  # (loc, step, dep)
    extra_targets: list[tuple[str, str]] = field(default_factory=list)  # (loc, step)

    @classmethod
    def from_raw(cls, data: Mapping[str, Any]) -> _Graph:
        graph = cls()
        for i, step in _indexed(data.get("steps")):
            name = step.get("name")
            if not isinstance(name, str):
                continue
            deps = [(f"steps[{i}].dependencies[{j}]", d) for j, d in _strings(step, "dependencies")]
            graph.nodes.append(
                StepNode(i, name, deps, step.get("implementation"), step.get("compensation"), step)
            )
        for i, entry in _indexed(data.get("dependencies")):
            target = entry.get("step")
            if not isinstance(target, str):
                continue
            graph.extra_targets.append((f"dependencies[{i}].step", target))
            for j, dep in _strings(entry, "depends_on", "dependsOn"):
                graph.extra_deps.append((f"dependencies[{i}].depends_on[{j}]", target, dep))
        return graph

    def deps_of(self) -> dict[str, list[str]]:
        """Each step's dependencies (the first definition of a duplicated name wins)."""
        found: dict[str, list[str]] = {}
        for node in self.nodes:
            found.setdefault(node.name, [dep for _, dep in node.deps])
        for _, step, dep in self.extra_deps:
            if step in found:
                found[step].append(dep)
        return found

    def edges(self) -> Iterator[tuple[str, str, str]]:
        """(location, step, dependency) for every declared dependency."""
        for node in self.nodes:
            for loc, dep in node.deps:
                yield loc, node.name, dep
        yield from self.extra_deps


def _indexed(value: Any) -> Iterator[tuple[int, Mapping[str, Any]]]:
    if _is_list(value):
        for i, item in enumerate(value):
            if isinstance(item, Mapping):
                yield i, item


def _is_list(value: Any) -> TypeGuard[Sequence[Any]]:
    """A list as the field validation takes one: a tuple or another sequence too (an
    embedded caller's definition need not be plain JSON), but not a string."""
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes, bytearray))


def _strings(entry: Mapping[str, Any], *keys: str) -> Iterator[tuple[int, str]]:
    for key in keys:
        value = entry.get(key)
        if _is_list(value):
            yield from ((j, v) for j, v in enumerate(value) if isinstance(v, str))


def _graph_problems(
    graph: _Graph, known_implementations: Collection[str] | None
) -> Iterator[Problem]:
    first: dict[str, int] = {}
    for node in graph.nodes:
        if node.name in first:
            yield Problem(
                f"steps[{node.index}].name",
                f"duplicate step name {node.name!r} (first defined at steps[{first[node.name]}])",
            )
        else:
            first[node.name] = node.index
    for loc, target in graph.extra_targets:
        if target not in first:
            yield Problem(loc, f"unknown step {target!r}")
    for loc, step, dep in graph.edges():
        if dep == step:
            yield Problem(loc, f"step {step!r} depends on itself")
        elif dep not in first:
            yield Problem(loc, f"{step!r} depends on unknown step {dep!r}")
    yield from _cycle_problems(graph, first)
    if known_implementations is not None:  # a start (a stored definition is not judged
        # again by rules made after it was stored: its execution must still load)
        yield from implementation_problems(graph.nodes, set(known_implementations), first)
        yield from coordinator_problems(graph.nodes)


def _cycle_problems(graph: _Graph, order: Mapping[str, int]) -> Iterator[Problem]:
    runs_before: dict[str, list[str]] = {name: [] for name in order}
    for _, step, dep in graph.edges():
        if dep != step and dep in order and step in order:
            runs_before[dep].append(step)
    for cycle in _find_cycles(runs_before, order):
        yield Problem("steps", "dependency cycle: " + " -> ".join([*cycle, cycle[0]]))


def _find_cycles(successors: Mapping[str, list[str]], order: Mapping[str, int]) -> list[list[str]]:
    """One cycle per back edge found by a depth-first search in file order, each rotated
    to start at its earliest step and reported once."""
    colour: dict[str, int] = dict.fromkeys(successors, 0)  # 0 new, 1 on stack, 2 done
    found: dict[tuple[str, ...], None] = {}
    for root in successors:
        if colour[root]:
            continue
        stack: list[tuple[str, Iterator[str]]] = [(root, iter(successors[root]))]
        path = [root]
        colour[root] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                colour[node] = 2
                stack.pop()
                path.pop()
            elif colour[child] == 1:
                cycle = path[path.index(child) :]
                start = min(range(len(cycle)), key=lambda k: order[cycle[k]])
                found[tuple(cycle[start:] + cycle[:start])] = None
            elif colour[child] == 0:
                colour[child] = 1
                path.append(child)
                stack.append((child, iter(successors[child])))
    return [list(cycle) for cycle in found]


# --- order ---------------------------------------------------------------------------


def dependents(config: WorkflowConfig) -> dict[str, list[str]]:
    """For every step, the steps that wait for it, in file order."""
    waiting: dict[str, list[str]] = {step.name: [] for step in config.steps}
    for step in config.steps:
        for dep in config.deps(step.name):
            if dep in waiting and step.name not in waiting[dep]:
                waiting[dep].append(step.name)
    return waiting


def topological_order(config: WorkflowConfig) -> list[str]:
    """Steps in an order that respects dependencies; among steps that could go next,
    file order wins, so the result is stable."""
    position: dict[str, int] = {}
    for i, step in enumerate(config.steps):
        position.setdefault(step.name, i)
    waiting_on = {name: len(config.deps(name)) for name in position}
    missing = [
        Problem(f"steps[{position[name]}]", f"{name!r} depends on unknown step {dep!r}")
        for name in position
        for dep in config.deps(name)
        if dep not in position
    ]
    if missing:
        raise WorkflowValidationError(missing, config.name)
    after = dependents(config)
    ready = [(i, name) for name, i in position.items() if waiting_on[name] == 0]
    heapq.heapify(ready)
    result: list[str] = []
    while ready:
        _, name = heapq.heappop(ready)
        result.append(name)
        for nxt in after[name]:
            waiting_on[nxt] -= 1
            if waiting_on[nxt] == 0:
                heapq.heappush(ready, (position[nxt], nxt))
    if len(result) < len(position):
        done = set(result)
        stuck = ", ".join(name for name in position if name not in done)
        raise WorkflowValidationError(
            [Problem("steps", f"dependency cycle among: {stuck}")], config.name
        )
    return result
