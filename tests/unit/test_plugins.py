"""PluginRegistry: sources, reserved names, lazy loading; plus the step API it serves."""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import types
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

from tamma_actors import _plugins
from tamma_actors._config import load_node_config
from tamma_actors._errors import ConfigError, UnknownImplementation
from tamma_actors._plugins import (
    BUILTIN_NAMES,
    GATED_BUILTINS,
    PluginRegistry,
    add_gated_flags,
    check_modules,
    gated_enabled,
    import_target,
    load_registry,
)
from tamma_actors._step_api import (
    NonRetryable,
    RetryAfter,
    StepCancelled,
    StepContext,
    StepFailure,
    cpu_bound_step,
    describe_error,
    inline_step,
    is_cpu_bound,
    is_inline,
)


def _ctx(**kw: Any) -> StepContext:
    return StepContext(execution_id="e", step="s", attempt=1, idempotency_key="e/s/1", **kw)


def test_builtins_without_shell_or_record_by_default() -> None:
    reg = load_registry()
    assert set(reg.names()) == set(BUILTIN_NAMES) - {"shell", "record"}
    assert "shell" not in reg and "record" not in reg
    assert "noop" in reg and len(reg) == len(BUILTIN_NAMES) - 2
    assert list(reg) == reg.names()


def test_shell_and_record_only_when_allowed() -> None:
    assert "shell" in load_registry(enabled={"shell"})
    assert "record" not in load_registry(enabled={"shell"})
    assert "record" in load_registry(enabled={"record"})
    assert "shell" not in load_registry(enabled={"record"})


def test_the_gated_builtins_follow_the_node_settings_and_the_worker_flags(
    tmp_path: Path,
) -> None:
    assert gated_enabled(load_node_config(None, data_dir=tmp_path)) == set()
    cfg = load_node_config(None, data_dir=tmp_path, allow_record=True)
    assert gated_enabled(cfg) == {"record"}
    parser = argparse.ArgumentParser()
    add_gated_flags(parser)
    assert gated_enabled(parser.parse_args([])) == set()
    assert gated_enabled(parser.parse_args(["--allow-shell"])) == {"shell"}
    both = parser.parse_args(["--allow-record", "--allow-shell"])
    assert gated_enabled(both) == set(GATED_BUILTINS) == {"shell", "record"}


def test_get_returns_callable_and_caches() -> None:
    reg = load_registry()
    fn = reg.get("noop")
    assert fn(_ctx(input=41)) == 41
    assert reg.get("noop") is fn


def test_unknown_name_lists_what_exists() -> None:
    with pytest.raises(UnknownImplementation) as info:
        load_registry().get("rm -rf")
    assert "'rm -rf'" in str(info.value) and "noop" in str(info.value)


def test_empty_registry_says_none() -> None:
    with pytest.raises(UnknownImplementation, match="none"):
        PluginRegistry({}).get("x")


def test_allowlist_entry_is_lazy(monkeypatch: pytest.MonkeyPatch) -> None:
    mod = types.ModuleType("tamma_test_lazy_plugin")
    mod.step = lambda ctx: "from plugin"  # type: ignore[attr-defined]
    reg = load_registry(allowlist={"mine": "tamma_test_lazy_plugin:step"})
    assert "mine" in reg  # listed although the module does not exist yet
    monkeypatch.setitem(sys.modules, "tamma_test_lazy_plugin", mod)
    assert reg.get("mine")(_ctx()) == "from plugin"


def test_allowlist_dotted_attribute() -> None:
    assert import_target("os.path:join")("a", "b") == "a/b"


def test_allowlist_cannot_take_builtin_names(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        reg = load_registry(allowlist={"shell": "os:system", "noop": "os:system"})
    assert "shell" not in reg
    assert reg.get("noop")(_ctx(input=1)) == 1
    assert "allowlist entry shell ignored" in caplog.text


@pytest.mark.parametrize("target", ["os", "os:", ":system", "os:system()", "a b:c"])
def test_malformed_allowlist_is_config_error(target: str) -> None:
    with pytest.raises(ConfigError, match="module:attr"):
        load_registry(allowlist={"x": target})


def test_broken_import_is_unknown_implementation() -> None:
    reg = load_registry(allowlist={"gone": "tamma_no_such_module_xyz:step"})
    with pytest.raises(UnknownImplementation, match="could not be loaded: ModuleNotFoundError"):
        reg.get("gone")


def test_check_modules_finds_without_importing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "colorsys", raising=False)
    check_modules({"a": "os.path:join", "b": "colorsys:rgb_to_hsv", "c": "not a target"})
    assert "colorsys" not in sys.modules  # found, not imported
    with pytest.raises(ConfigError, match="'x' = 'tamma_no_such_module_xyz:f': no module named"):
        check_modules({"ok": "os:getcwd", "x": "tamma_no_such_module_xyz:f"})
    with pytest.raises(ConfigError, match=r"'json\.nosuch:f': no module named 'json\.nosuch'"):
        check_modules({"y": "json.nosuch:f"})


def test_check_modules_names_a_parent_package_that_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    def find_spec(name: str) -> None:
        raise RuntimeError("its __init__ fails")

    monkeypatch.setattr(_plugins.importlib.util, "find_spec", find_spec)
    with pytest.raises(ConfigError, match=r"'p' = 'pkg\.mod:f': RuntimeError: its __init__ fails"):
        check_modules({"p": "pkg.mod:f"})


def test_not_callable_is_unknown_implementation() -> None:
    reg = load_registry(allowlist={"sep": "os:sep"})
    with pytest.raises(UnknownImplementation, match="not callable"):
        reg.get("sep")


def _fake_entry_points(eps: list[metadata.EntryPoint]) -> Any:
    def entry_points(group: str) -> list[metadata.EntryPoint]:
        assert group == _plugins.ENTRY_POINT_GROUP
        return eps

    return entry_points


def test_entry_points_registered_broken_ones_skipped(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    eps = [
        metadata.EntryPoint("joiner", "os.path:join", _plugins.ENTRY_POINT_GROUP),
        metadata.EntryPoint("bad", "not a target!", _plugins.ENTRY_POINT_GROUP),
        metadata.EntryPoint("shell", "os:system", _plugins.ENTRY_POINT_GROUP),
        metadata.EntryPoint("joiner", "os:getcwd", _plugins.ENTRY_POINT_GROUP),
        metadata.EntryPoint("based", "os.path : basename [fast]", _plugins.ENTRY_POINT_GROUP),
    ]
    monkeypatch.setattr(_plugins.metadata, "entry_points", _fake_entry_points(eps))
    with caplog.at_level(logging.WARNING):
        reg = load_registry(allowlist={"joiner": "os:getcwd"})
    assert "bad" not in reg and "shell" not in reg
    assert reg.get("joiner")("a", "b") == "a/b"  # type: ignore[call-arg,arg-type]
    assert reg.get("based")("/x/y") == "y"  # type: ignore[call-arg,arg-type]  # with extras
    assert "skipping entry point bad" in caplog.text
    assert "skipping entry point shell" in caplog.text
    assert "allowlist entry joiner ignored" in caplog.text


def test_unreadable_entry_points_are_not_fatal(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(group: str) -> Any:
        raise RuntimeError("broken metadata")

    monkeypatch.setattr(_plugins.metadata, "entry_points", boom)
    assert "noop" in load_registry()


def test_concurrent_get_loads_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def loader() -> object:
        calls.append(1)
        return lambda ctx: None

    reg = PluginRegistry({"x": loader})
    threads = [threading.Thread(target=reg.get, args=("x",)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=5)
    assert calls == [1]


def test_loaded_never_loads_and_load_builtins_loads_only_the_builtins() -> None:
    calls: list[str] = []

    def loader(fn: Any) -> Any:
        return lambda: calls.append("load") or fn

    quick = inline_step(lambda ctx: 1)
    reg = PluginRegistry({"quick": loader(quick), "noop": loader(lambda ctx: 2)})
    # Not loaded yet: no answer, and nothing imported (the socket thread asks this).
    assert reg.loaded("quick") is None and reg.loaded("absent") is None
    assert calls == []
    reg.load_builtins()  # "noop" is a built-in's name; "quick" is not, nor loaded
    assert calls == ["load"] and reg.loaded("quick") is None
    assert reg.loaded("noop") is not None and reg.loaded("noop")(_ctx()) == 2  # type: ignore[misc]
    assert reg.get("quick") is quick and reg.loaded("quick") is quick


def test_the_quick_builtins_are_inline_cpu_is_cpu_bound_and_the_others_neither() -> None:
    reg = load_registry(enabled=set(GATED_BUILTINS))
    inline = {name for name in reg if is_inline(reg.get(name))}
    assert inline == {"noop", "echo", "fail"}
    assert {name for name in reg if is_cpu_bound(reg.get(name))} == {"cpu"}


def test_the_step_marks_mark_the_function_itself() -> None:
    def step(ctx: StepContext) -> int:
        return 7

    def heavy(ctx: StepContext) -> int:
        return 8

    assert not is_inline(step) and not is_cpu_bound(step)
    assert inline_step(step) is step and is_inline(step) and step(_ctx()) == 7
    assert not is_cpu_bound(step)
    assert cpu_bound_step(heavy) is heavy and is_cpu_bound(heavy) and heavy(_ctx()) == 8
    assert not is_inline(heavy)
    assert not is_inline(object()) and not is_cpu_bound(object())


# The step API


def test_context_sleep_wakes_on_cancel() -> None:
    ctx = _ctx()
    ctx.sleep(0)
    ctx.cancelled.set()
    with pytest.raises(StepCancelled):
        ctx.sleep(60)
    with pytest.raises(StepCancelled):
        ctx.check_cancelled()


def test_context_heartbeat_reaches_sink() -> None:
    seen: list[Any] = []
    ctx = _ctx(on_progress=seen.append)
    ctx.heartbeat({"pct": 50})
    ctx.heartbeat()
    assert seen == [{"pct": 50}, None]
    _ctx().heartbeat(1)  # no sink: harmless
    _ctx().check_cancelled()


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (StepFailure("boom"), ("StepFailure", "boom", None, None)),
        (StepFailure("x", retryable=True, error_type="Flaky"), ("Flaky", "x", True, None)),
        (NonRetryable("bad input"), ("NonRetryable", "bad input", False, None)),
        (RetryAfter(2.5), ("RetryAfter", "retry after 2.5s", True, 2.5)),
        (RetryAfter(1, "later"), ("RetryAfter", "later", True, 1.0)),
        (StepCancelled(), ("StepCancelled", "step cancelled", False, None)),
        (KeyError("k"), ("KeyError", "'k'", None, None)),
        (RuntimeError(), ("RuntimeError", "RuntimeError", None, None)),
    ],
)
def test_describe_error(exc: BaseException, expected: tuple[Any, ...]) -> None:
    err = describe_error(exc)
    assert (err["type"], err["message"], err["retryable"], err["retry_after"]) == expected
