"""The ``config`` of decision, parallel and subflow steps: models, load-time checks, plans.

A workflow file keeps ``config`` a free mapping (task steps pass it to their plugin); for
the coordinator's own step types it has a fixed shape, checked here when the workflow is
loaded so that every mistake is a :class:`Problem` with its location — a bad expression,
a branch naming a step that does not depend on its decision, an expression reading a step
that is not upstream. The checked config is compiled once into a *plan* (expressions
parsed) that the execution supervisor uses (:mod:`tamma_actors._step_types`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

from tamma_actors._errors import ExpressionError, Problem
from tamma_actors._expr import Expression, parse, referenced_steps, roots
from tamma_actors._model_fields import PositiveCount
from tamma_actors._models import FileModel, WorkflowStep

__all__ = [
    "STEP_CONFIG_MODELS",
    "DecisionConfig",
    "DecisionPlan",
    "ParallelConfig",
    "ParallelPlan",
    "SubflowConfig",
    "SubflowPlan",
    "ancestors",
    "plan_of",
    "step_config_schemas",
    "step_type_problems",
    "task_config",
    "timeouts_set",
]


class _Config(FileModel):
    """Step-type configs follow the workflow-file rules: snake_case or camelCase, no
    unknown keys, frozen."""


class Branch(_Config):
    """``{when: EXPR, then: [steps]}``, or ``{otherwise: [steps]}`` (the last branch)."""

    when: str | None = None
    then: list[str] = Field(default_factory=list)
    otherwise: list[str] | None = None

    @model_validator(mode="after")
    def _one_form(self) -> Branch:
        if self.otherwise is not None and (self.when is not None or self.then):
            raise ValueError("an otherwise branch has no 'when' or 'then'")
        if self.otherwise is None and self.when is None:
            raise ValueError("a branch needs 'when' (with 'then') or 'otherwise'")
        return self

    @property
    def steps(self) -> list[str]:
        return self.then if self.otherwise is None else self.otherwise


class DecisionConfig(_Config):
    branches: list[Branch] = Field(min_length=1)

    @model_validator(mode="after")
    def _otherwise_last(self) -> DecisionConfig:
        for branch in self.branches[:-1]:
            if branch.otherwise is not None:
                raise ValueError("'otherwise' must be the last branch")
        return self


class ParallelConfig(_Config):
    """Other keys are the plugin's own config, passed to every item's task."""

    model_config = ConfigDict(extra="allow")

    items: Annotated[list[Any], Field(max_length=10_000)] | str  # as _parallel.MAX_ITEMS
    max_concurrency: PositiveCount | None = None


class SubflowConfig(_Config):
    workflow: str = Field(min_length=1)
    # a string is an expression over the parent's context; any other value is a constant
    inputs: dict[str, Any] = Field(default_factory=dict)


_MODELS: dict[str, type[_Config]] = {
    "decision": DecisionConfig,
    "parallel": ParallelConfig,
    "subflow": SubflowConfig,
}
STEP_CONFIG_MODELS = {kind: model.__name__ for kind, model in _MODELS.items()}
# A parallel step's own keys, under either spelling: the rest is every item's config.
_PARALLEL_OWN = frozenset(
    key for name in ParallelConfig.model_fields for key in (name, to_camel(name))
)


def step_config_schemas() -> dict[str, Any]:
    """JSON Schema ``$defs`` of the step-type configs (for ``tamma schema workflow``)."""
    defs: dict[str, Any] = {}
    for model in _MODELS.values():
        schema = model.model_json_schema(by_alias=False, ref_template="#/$defs/{model}")
        defs.update(schema.pop("$defs", {}))
        defs[model.__name__] = schema
    return defs


# -- plans ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DecisionPlan:
    branches: tuple[tuple[Expression | None, tuple[str, ...]], ...]  # None: otherwise

    @property
    def members(self) -> list[str]:
        """Every step named by some branch, in branch order."""
        return list(dict.fromkeys(name for _, names in self.branches for name in names))


@dataclass(frozen=True)
class ParallelPlan:
    items: Expression | list[Any]  # an expression or the literal list
    max_concurrency: int | None
    config: dict[str, Any]  # what every item's task gets: the other keys (not the items)


@dataclass(frozen=True)
class SubflowPlan:
    workflow: str
    inputs: dict[str, tuple[bool, Any]]  # name -> (is an expression, expression or value)


Plan = DecisionPlan | ParallelPlan | SubflowPlan


def plan_of(step: WorkflowStep) -> Plan | None:
    """The compiled plan of a checked decision, parallel or subflow step (None for a task)."""
    if step.type == "decision":
        decision = DecisionConfig.model_validate(step.config)
        return DecisionPlan(
            tuple(
                (None if b.when is None else parse(b.when), tuple(b.steps))
                for b in decision.branches
            )
        )
    if step.type == "parallel":
        fan = ParallelConfig.model_validate(step.config)
        items = parse(fan.items) if isinstance(fan.items, str) else fan.items
        return ParallelPlan(items, fan.max_concurrency, task_config(step))
    if step.type == "subflow":
        sub = SubflowConfig.model_validate(step.config)
        inputs = {
            k: (True, parse(v)) if isinstance(v, str) else (False, v) for k, v in sub.inputs.items()
        }
        return SubflowPlan(sub.workflow, inputs)
    return None


def task_config(step: WorkflowStep) -> dict[str, Any]:
    """The config a step's task gets: a parallel step's items get the keys that are not
    the fan-out's own (its items, up to 10,000, would go with each one)."""
    if step.type != "parallel":
        return step.config
    return {k: v for k, v in step.config.items() if k not in _PARALLEL_OWN}


# -- load-time checks -----------------------------------------------------------------------


def step_type_problems(
    steps: Mapping[int, Mapping[str, Any]],
    deps_of: Mapping[str, list[str]],
    *,
    stored: bool = False,
) -> Iterator[Problem]:
    """Every problem of the decision, parallel and subflow steps among ``steps`` (raw
    mappings by index in the file); ``deps_of`` maps each step name to its dependencies.
    ``stored``: a definition an execution was started with, not judged by the rule on
    keys given twice, which came after some were stored (its execution must load)."""
    for i, raw in steps.items():
        kind, name = raw.get("type"), raw.get("name")
        model = _MODELS.get(kind) if isinstance(kind, str) else None
        if model is None or not isinstance(name, str):
            continue
        yield from _timeout_problems(i, str(kind), raw)
        where = f"steps[{i}].config"
        given = raw.get("config") or {}
        twice = [] if stored else _spelt_twice(model, given)
        for name in twice:
            yield Problem(f"{where}.{name}", f"given twice ({name} and {to_camel(name)})")
        if twice:  # checked once, under the snake_case spelling
            given = {k: v for k, v in given.items() if k not in {to_camel(n) for n in twice}}
        try:
            config = model.model_validate(given)
        except ValidationError as exc:
            for error in exc.errors():
                loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error["loc"])
                message = error["msg"].removeprefix("Value error, ")
                if error["type"] == "extra_forbidden":
                    message = "unknown field"
                elif error["type"] == "missing":
                    message = "field required"
                yield Problem(where + loc, message)
            continue
        upstream = ancestors(name, deps_of)
        for loc, source in _expressions(config):
            yield from _expression_problems(f"{where}.{loc}", source, name, upstream)
        if isinstance(config, DecisionConfig):
            yield from _branch_problems(where, name, config, deps_of)


def _spelt_twice(model: type[_Config], config: Any) -> list[str]:
    """The fields ``config`` gives under both spellings. A parallel step's config keeps
    the plugin's keys, so pydantic would take one spelling and pass the other on."""
    if not isinstance(config, Mapping):
        return []
    return [
        name
        for name in model.model_fields
        if to_camel(name) != name and name in config and to_camel(name) in config
    ]


_TIMEOUT_KEYS = {
    "queue_timeout": ("queue_timeout", "queueTimeout"),
    "heartbeat_timeout": ("heartbeat_timeout", "heartbeatTimeout"),
    "timeout": ("timeout",),
}


def _timeout_problems(i: int, kind: str, raw: Mapping[str, Any]) -> Iterator[Problem]:
    """A parallel or subflow step's ``timeout`` bounds the whole step (every item, or the
    child); the other timeouts belong to single tasks, and a decision has none."""
    for field in timeouts_set(raw):
        if field != "timeout" or kind == "decision":
            yield Problem(f"steps[{i}].{field}", f"a {kind} step has no {field}")


def timeouts_set(raw: Mapping[str, Any]) -> Iterator[str]:
    """The timeout fields a raw step mapping sets (under either spelling of each)."""
    for field, keys in _TIMEOUT_KEYS.items():
        if any(raw.get(key) is not None for key in keys):
            yield field


def _expressions(config: _Config) -> Iterator[tuple[str, str]]:
    if isinstance(config, DecisionConfig):
        for j, branch in enumerate(config.branches):
            if branch.when is not None:
                yield f"branches[{j}].when", branch.when
    elif isinstance(config, ParallelConfig):
        if isinstance(config.items, str):
            yield "items", config.items
    elif isinstance(config, SubflowConfig):
        for key, value in config.inputs.items():
            if isinstance(value, str):
                yield f"inputs.{key}", value


def _expression_problems(loc: str, source: str, step: str, upstream: set[str]) -> Iterator[Problem]:
    try:
        node = parse(source)
    except ExpressionError as exc:
        yield Problem(loc, f"invalid expression {source!r}: {exc}")
        return
    if "item" in roots(node):
        yield Problem(loc, "'item' is only available inside a parallel step's tasks")
    for ref in sorted(referenced_steps(node) - upstream):
        yield Problem(
            loc,
            f"the expression reads steps.{ref} but {ref!r} is not upstream of {step!r} "
            "(add it to the dependencies)",
        )


def _branch_problems(
    where: str, name: str, config: DecisionConfig, deps_of: Mapping[str, list[str]]
) -> Iterator[Problem]:
    seen: dict[str, int] = {}
    for j, branch in enumerate(config.branches):
        field = "then" if branch.otherwise is None else "otherwise"
        for k, target in enumerate(branch.steps):
            loc = f"{where}.branches[{j}].{field}[{k}]"
            if target not in deps_of:
                yield Problem(loc, f"branch names unknown step {target!r}")
            elif name not in deps_of[target]:
                yield Problem(
                    loc, f"branch step {target!r} must depend directly on the decision {name!r}"
                )
            if target in seen and seen[target] != j:
                yield Problem(loc, f"step {target!r} is already in branch {seen[target]}")
            seen.setdefault(target, j)


def ancestors(name: str, deps_of: Mapping[str, Sequence[str]]) -> set[str]:
    """The steps upstream of ``name``: its dependencies, theirs, and so on."""
    found: set[str] = set()
    stack = list(deps_of.get(name, []))
    while stack:
        dep = stack.pop()
        if dep not in found and dep != name:
            found.add(dep)
            stack.extend(deps_of.get(dep, []))
    return found
