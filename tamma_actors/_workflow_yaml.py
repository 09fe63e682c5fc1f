"""Reading workflow files: a YAML loader with a workflow's rules, and the limits on a file.

A workflow file is JSON data written as YAML: dates and times stay text, and a document
that would hold a reader for minutes (too deep, too big, aliases that expand too far) is
refused with an error saying which.
"""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path
from typing import Any

import yaml

from tamma_actors._errors import Problem, WorkflowValidationError

__all__ = [
    "MAX_ALIAS_EXPANSION",
    "MAX_WORKFLOW_FILE_BYTES",
    "DuplicateKey",
    "YamlTooBig",
    "read_workflow_file",
    "read_workflow_mapping",
    "yaml_data",
]


class DuplicateKey(yaml.constructor.ConstructorError):
    """A mapping that gives one key twice (YAML says keys are unique; PyYAML would keep
    the last one without a word, so a second ``steps:`` would replace the first)."""


class _Loader(yaml.SafeLoader):
    """``yaml.safe_load``'s loader, but a date or a time stays the text it is written as
    (a workflow is JSON data: an unquoted ``2026-12-01`` in a step's config is a string),
    and a key given twice in one mapping is an error, not the last one winning."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def fetch_flow_collection_start(self, token_class: Any) -> None:
        # PyYAML scans nested flow collections ("[[[...", "{a: {b: ...") in time that grows
        # with the square of their depth, and reads far ahead of what it composes (a 6 KB
        # line of 3,000 "[" took 1.5 s to reach Python's recursion limit)
        if self.flow_level >= MAX_DEPTH:
            raise YamlTooBig(f"nested too deeply (maps and lists over {MAX_DEPTH} levels deep)")
        super().fetch_flow_collection_start(token_class)

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        # (block collections nest by indentation: the composer counts them)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise YamlTooBig(f"nested too deeply (maps and lists over {MAX_DEPTH} levels deep)")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        self._check_unique_keys(node)  # before merge keys (``<<``) add theirs, which may repeat
        return super().construct_mapping(node, deep=deep)

    def _check_unique_keys(self, node: yaml.MappingNode) -> None:
        first: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _MERGE_TAG:
                continue  # a list or map as a key is refused later (keys are strings)
            key = self.construct_object(key_node)
            if key in first:
                line = first[key].start_mark.line + 1
                raise DuplicateKey(
                    None,
                    None,
                    f"duplicate key {key!r} (first given on line {line})",
                    key_node.start_mark,
                )
            first[key] = key_node


_MERGE_TAG = "tag:yaml.org,2002:merge"


# Numbers as YAML 1.2 reads them, not YAML 1.1: ``010`` is ten (not octal eight), and
# ``1:30`` is text (not the sexagesimal 90); ``0o17``, ``0x1f``, ``0b101`` and ``1_000``
# still read as numbers. Dates and times are not resolved at all (they stay text).
_INT, _FLOAT = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"
_NOT_RESOLVED = {_INT, _FLOAT, "tag:yaml.org,2002:timestamp"}
_INT_RE = re.compile(
    r"^[-+]?(?:[0-9][0-9_]*|0o_*[0-7][0-7_]*|0x_*[0-9a-fA-F][0-9a-fA-F_]*|0b_*[01][01_]*)$"
)
# An exponent needs no dot (YAML 1.2, and JSON: 1e3 is a number, not text).
_FLOAT_RE = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)


def _construct_int(loader: yaml.SafeLoader, node: yaml.Node) -> int:
    written = str(loader.construct_scalar(node))  # type: ignore[arg-type]
    text = written.replace("_", "")
    sign, digits = (-1, text[1:]) if text[:1] == "-" else (1, text.lstrip("+"))
    base = {"0o": 8, "0x": 16, "0b": 2}.get(digits[:2].lower(), 10)
    try:
        return sign * int(digits[2:] if base != 10 else digits, base)
    except ValueError:  # an explicit !!int on text that is no integer
        raise yaml.constructor.ConstructorError(
            None, None, f"{written!r} is not an integer", node.start_mark
        ) from None


_Loader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag not in _NOT_RESOLVED]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(_INT, _INT_RE, list("-+0123456789"))
_Loader.add_implicit_resolver(_FLOAT, _FLOAT_RE, list("-+0123456789."))
_Loader.add_constructor(_INT, _construct_int)


# What aliases may add to a document beyond one value per character of its text: enough
# for any use of anchors (merge keys, a shared block), not for a few lines of aliases of
# aliases that expand to billions of values (or a value that contains itself) and hold
# whoever validates them for minutes.
MAX_ALIAS_EXPANSION = 1_000_000
# How deep a workflow document's maps and lists may nest (step configs included).
MAX_DEPTH = 100


class YamlTooBig(yaml.YAMLError):
    """A document nested too deeply to read, or whose aliases expand it too far."""


def yaml_data(text: str) -> Any:
    """``text`` read as YAML, as a workflow file is (a date or a time stays text).
    Raises :class:`YamlTooBig` for a document nested too deeply for the parser or one
    whose aliases expand it beyond MAX_ALIAS_EXPANSION values more than its length."""
    data = _json_data(text)
    if data is not _NOT_JSON:
        return data
    try:
        data = yaml.load(text, Loader=_Loader)  # a SafeLoader (see _Loader)
    except RecursionError as exc:
        raise YamlTooBig("nested too deeply to read (maps and lists some 500 levels deep)") from exc
    limit = len(text) + MAX_ALIAS_EXPANSION
    count, stack = 0, [data]
    while stack:  # every value as the reader of the data meets it: aliases expanded
        item = stack.pop()
        count += 1
        if isinstance(item, dict):
            count += len(item)  # the keys
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        if count > limit:
            raise YamlTooBig(
                f"its aliases expand it to more than {limit:,} values (aliases of aliases, "
                "or a value that contains itself)"
            )
    return data


_NOT_JSON: Any = object()


def _json_data(text: str) -> Any:
    """``text`` read as JSON, which reads as YAML does here (JSON is YAML 1.2), ~50 times
    faster (a generated 9 MiB definition took 3.8 s to read as YAML); ``_NOT_JSON`` when it
    is not plain JSON as these rules take it, and YAML then reads it and says what is
    wrong, with its line: a key given twice, ``NaN``, nesting over ``MAX_DEPTH``."""
    if not text.lstrip().startswith(("{", "[")):
        return _NOT_JSON
    try:
        data = json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        return _NOT_JSON
    stack = [(data, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > MAX_DEPTH:
                return _NOT_JSON
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return data


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found = dict(pairs)
    if len(found) != len(pairs):
        raise ValueError("a key given twice")
    return found


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


MAX_WORKFLOW_FILE_BYTES = 16 << 20  # far beyond any definition a start request can carry


def _file_text(path: str | Path, *, regular_only: bool) -> str:
    """The text of the file at ``path``, of at most MAX_WORKFLOW_FILE_BYTES (``/dev/zero``
    does not fill the memory). ``regular_only``: a FIFO or a device is refused before it
    is read, so that a node reading a named file never waits for a writer for good; a
    client may read a pipe (``tamma start <(make-workflow)``)."""
    too_big = f"more than the {MAX_WORKFLOW_FILE_BYTES >> 20} MiB a workflow file may be"
    flags = os.O_RDONLY | os.O_CLOEXEC | (os.O_NONBLOCK if regular_only else 0)
    fd = os.open(path, flags)  # O_NONBLOCK: opening a FIFO does not wait for a writer
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode) or (regular_only and not stat.S_ISREG(info.st_mode)):
            raise OSError(f"{path} is not a regular file")
        if info.st_size > MAX_WORKFLOW_FILE_BYTES:
            raise OSError(f"{path} is {info.st_size} bytes, {too_big}")
        data = bytearray()
        while len(data) <= MAX_WORKFLOW_FILE_BYTES:  # a regular file may have grown since
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            data += chunk
    finally:
        os.close(fd)
    if len(data) > MAX_WORKFLOW_FILE_BYTES:
        raise OSError(f"{path} is {too_big}")
    return data.decode("utf-8")


def read_workflow_mapping(path: str | Path, *, regular_only: bool = False) -> dict[str, Any]:
    """The YAML document at ``path`` as a mapping; unreadable or malformed files raise
    :class:`WorkflowValidationError` naming the line and column when YAML knows them.
    ``regular_only``: refuse anything but a regular file (a FIFO, a device) unread."""
    return read_workflow_file(path, regular_only=regular_only)[1]


def read_workflow_file(
    path: str | Path, *, regular_only: bool = False
) -> tuple[str, dict[str, Any]]:
    """The text of the workflow file at ``path`` and its mapping (see read_workflow_mapping)."""
    source = str(path)
    try:
        text = _file_text(path, regular_only=regular_only)
    except (OSError, UnicodeDecodeError) as exc:
        raise WorkflowValidationError([Problem("", f"cannot read file: {exc}")], source) from exc
    try:
        data = yaml_data(text)
    except YamlTooBig as exc:
        raise WorkflowValidationError([Problem("", str(exc))], source) from exc
    except yaml.YAMLError as exc:
        raise WorkflowValidationError([_yaml_problem(exc)], source) from exc
    if not isinstance(data, dict):
        kind = "an empty document" if data is None else f"a {type(data).__name__}"
        raise WorkflowValidationError(
            [Problem("line 1, column 1", f"a workflow must be a mapping, got {kind}")], source
        )
    return text, data


def _yaml_problem(exc: yaml.YAMLError) -> Problem:
    mark = getattr(exc, "problem_mark", None)
    what = " ".join(
        str(part) for part in (getattr(exc, "context", None), getattr(exc, "problem", None)) if part
    )
    where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    if isinstance(exc, DuplicateKey):
        return Problem(where, what)
    return Problem(where, f"YAML syntax error: {what or exc}")
