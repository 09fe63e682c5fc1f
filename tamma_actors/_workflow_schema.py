"""The JSON Schema of a workflow file (``tamma schema workflow``).

pydantic's schema of :class:`WorkflowConfig` describes the models, not the file: it knows
neither the camelCase spellings, nor the bare ``error_handling: continue``, nor the rules
the validators apply (a task needs an implementation, a wait step its seconds). Those are
added here, so that every file the loader accepts validates and, as far as JSON Schema can
say it, every file it refuses does not. What JSON Schema cannot say (``max_delay`` at least
``base_delay``; the graph: unknown steps, cycles; a string duration's bound) is left to
the loader, which reports it with its location.
"""

from __future__ import annotations

from typing import Any, get_args

from pydantic.alias_generators import to_camel

from tamma_actors._durations import MAX_DURATION_S, MAX_DURATION_TEXT
from tamma_actors._models import ErrorHandlingPolicy, WorkflowConfig
from tamma_actors._step_configs import STEP_CONFIG_MODELS, step_config_schemas

__all__ = ["workflow_json_schema"]


def workflow_json_schema() -> dict[str, Any]:
    """JSON Schema (2020-12) of a workflow file, either spelling of every key."""
    schema = WorkflowConfig.model_json_schema(by_alias=False)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "tamma_actors workflow"
    defs = schema.setdefault("$defs", {})
    defs.update(step_config_schemas())
    schema["properties"]["version"] = {
        "anyOf": [{"type": "string"}, {"type": "integer"}],
        "default": "1",
        "description": "text; a whole number becomes its digits (quote '1.10': 1.10 is 1.1)",
    }
    strategies = list(get_args(ErrorHandlingPolicy.model_fields["strategy"].annotation))
    schema["properties"]["error_handling"] = {
        "anyOf": [{"$ref": "#/$defs/ErrorHandlingPolicy"}, {"enum": strategies}]
    }
    defs["RetryPolicy"]["description"] += " max_delay must be at least base_delay."
    defs["WorkflowStep"]["allOf"] = _step_rules()
    for model in (schema, *defs.values()):
        _both_spellings(model)
    return schema


def _step_rules() -> list[dict[str, Any]]:
    coordinator_run = {"properties": {"type": {"enum": ["decision", "subflow"]}}}
    seconds = {"type": "number", "minimum": 0, "maximum": MAX_DURATION_S}
    rules: list[dict[str, Any]] = [
        {  # a task or parallel step (type left out: a task) names its implementation
            "if": {**coordinator_run, "required": ["type"]},
            "else": {
                "required": ["implementation"],
                "properties": {"implementation": {"type": "string", "minLength": 1}},
            },
        },
        {  # the coordinator keeps a wait step's timer: its seconds are checked at load
            "if": {
                "properties": {"implementation": {"const": "wait"}, "type": {"const": "task"}},
                "required": ["implementation"],
            },
            "then": {
                "required": ["config"],
                "properties": {
                    "config": {
                        "required": ["seconds"],
                        "properties": {
                            "seconds": {
                                **seconds,
                                "description": f"seconds, at most {MAX_DURATION_TEXT}",
                            }
                        },
                    }
                },
            },
        },
    ]
    # the config of a decision, parallel or subflow step has a fixed shape
    rules.extend(
        {
            "if": {"properties": {"type": {"const": kind}}, "required": ["type"]},
            "then": {"properties": {"config": {"$ref": f"#/$defs/{model}"}}},
        }
        for kind, model in STEP_CONFIG_MODELS.items()
    )
    return rules


def _both_spellings(model: dict[str, Any]) -> None:
    """Each field of an object under its snake_case name or its camelCase alias, not both."""
    properties: dict[str, Any] = model.get("properties", {})
    required: list[str] = model.get("required", [])
    rules: list[dict[str, Any]] = []
    for name in list(properties):
        alias = to_camel(name)
        if alias == name:
            continue
        properties[alias] = properties[name]
        rules.append({"not": {"required": [name, alias]}})
        if name in required:
            required.remove(name)
            rules.append({"anyOf": [{"required": [name]}, {"required": [alias]}]})
    if rules:
        model.setdefault("allOf", []).extend(rules)
    if "required" in model and not required:
        del model["required"]
