"""Supervision tree declaration and the pure restart policy."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tamma_actors._errors import ConfigError
from tamma_actors._supervision import (
    RestartIntensity,
    Strategy,
    children_to_restart,
    default_tree_path,
    load_tree,
)


def test_the_shipped_tree_loads_in_start_order() -> None:
    tree = load_tree(default_tree_path())
    assert [c.kind for c in tree.children] == [
        "store_writer",
        "event_bus",
        "worker_pool",
        "control_server",
    ]
    assert tree.strategy is Strategy.ONE_FOR_ONE
    assert (tree.max_restarts, tree.within_seconds) == (3, 10)


def test_without_the_source_tree_the_builtin_tree_is_used(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(
        "tamma_actors._supervision.default_tree_path", lambda: tmp_path / "missing.toml"
    )
    assert next(c.name for c in load_tree().children) == "store_writer"


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("[supervisor]\nstrategy = 'one_for_none'\n", "strategy"),
        (
            "[[child]]\nname='a'\nkind='store_writer'\n[[child]]\nname='a'\nkind='worker_pool'\n",
            "duplicate child names: a",
        ),
        ("[[child]]\nname='w'\nkind='store_writer'\n", "needs children of kind"),
        ("[[child]]\nname='w'\nkind='teleporter'\n", "children.0.kind"),
        ("[extra]\n", "unknown sections: extra"),
        ("this is = = not toml", "invalid TOML"),
    ],
)
def test_bad_trees_are_refused_with_the_reason(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "tree.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_tree(path)


def test_an_unreadable_tree_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_tree(tmp_path / "nope.toml")


@given(st.sampled_from(list(Strategy)), st.data())
def test_strategy_decisions(strategy: Strategy, data: st.DataObject) -> None:
    count = data.draw(st.integers(min_value=1, max_value=12))
    failed = data.draw(st.integers(min_value=0, max_value=count - 1))
    chosen = children_to_restart(strategy, failed, count)
    assert failed in chosen and chosen == sorted(set(chosen))
    assert all(0 <= i < count for i in chosen)
    expected = {
        Strategy.ONE_FOR_ONE: [failed],
        Strategy.ONE_FOR_ALL: list(range(count)),
        Strategy.REST_FOR_ONE: list(range(failed, count)),
    }[strategy]
    assert chosen == expected


def test_an_index_outside_the_children_is_refused() -> None:
    with pytest.raises(ValueError, match="outside"):
        children_to_restart(Strategy.ONE_FOR_ONE, 3, 3)


def test_intensity_3_in_10s_escalates_on_the_fourth_crash() -> None:
    intensity = RestartIntensity(3, 10.0)
    assert [intensity.allow(t) for t in (0.0, 1.0, 2.0)] == [True, True, True]
    assert intensity.allow(3.0) is False
    assert intensity.allow(10.5) is True  # the first restarts have left the window
    assert intensity.history == (1.0, 2.0, 10.5)


@given(
    st.lists(st.floats(min_value=0, max_value=1000), max_size=40),
    st.integers(min_value=0, max_value=5),
    st.floats(min_value=0.1, max_value=100),
)
def test_intensity_never_allows_more_than_max_in_any_window(
    gaps: list[float], max_restarts: int, within: float
) -> None:
    intensity = RestartIntensity(max_restarts, within)
    now, allowed = 0.0, []
    for gap in gaps:
        now += gap
        if intensity.allow(now):
            allowed.append(now)
    for t in allowed:
        assert len([u for u in allowed if t <= u < t + within]) <= max_restarts
