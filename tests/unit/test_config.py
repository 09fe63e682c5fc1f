"""Node configuration: defaults, file formats, precedence, and refusals as ConfigError."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest

from tamma_actors._config import (
    NodeConfig,
    load_node_config,
    node_config_json_schema,
    unknown_variables,
)
from tamma_actors._curve import keypair
from tamma_actors._errors import ConfigError
from tamma_actors._wire import DEFAULT_WORKER_SLOTS

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("TAMMA_"):
            monkeypatch.delenv(name)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults() -> None:
    cfg = NodeConfig()
    assert cfg.data_dir == Path("var")
    assert cfg.workers == (os.cpu_count() or 1)
    assert (cfg.worker_slots, cfg.heartbeat_interval, cfg.heartbeat_timeout) == (32, 1.0, 5.0)
    assert cfg.max_frame_bytes == 8 * 1024 * 1024
    assert cfg.map_size == 64 * 1024 * 1024
    assert cfg.durability == "full"
    assert (cfg.snapshot_every, cfg.group_commit_max, cfg.dispatcher_threads) == (100, 1024, 2)
    assert cfg.max_running_steps == 10000
    assert not cfg.allow_shell and not cfg.insecure_tcp and not cfg.has_curve
    assert cfg.plugins == {} and cfg.tokens == {}
    assert cfg.supervision is None and cfg.retention_days is None
    assert cfg.cancel_grace == 5.0
    assert cfg.watchdog_interval == 30.0 and cfg.worker_max_memory_mb is None
    assert cfg.log_level == "INFO"
    assert cfg.control_address == "ipc://var/control.sock"
    assert cfg.workers_address == "ipc://var/workers.sock"
    assert cfg.events_address == "ipc://var/events.sock"


def test_default_addresses_follow_data_dir(tmp_path: Path) -> None:
    cfg = NodeConfig(data_dir=tmp_path, events_endpoint="ipc:///tmp/ev.sock")
    assert cfg.control_address == f"ipc://{tmp_path}/control.sock"
    assert cfg.events_address == "ipc:///tmp/ev.sock"


def test_toml_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "node.toml",
        'workers = 2\nheartbeat_interval = "500ms"\nlog_level = "debug"\n'
        '[plugins]\ntriage = "mypkg.steps:triage"\n[tokens]\nsecret = "admin"\n',
    )
    cfg = load_node_config(path)
    assert cfg.workers == 2
    assert cfg.heartbeat_interval == 0.5
    assert cfg.log_level == "DEBUG"
    assert cfg.plugins == {"triage": "mypkg.steps:triage"}
    assert cfg.tokens == {"secret": "admin"}


def test_yaml_file(tmp_path: Path) -> None:
    path = write(tmp_path, "node.yaml", "workers: 0\ncancel_grace: 2s\ndurability: relaxed\n")
    cfg = load_node_config(path)
    assert (cfg.workers, cfg.cancel_grace, cfg.durability) == (0, 2.0, "relaxed")


def test_empty_yaml_file_means_defaults(tmp_path: Path) -> None:
    assert load_node_config(write(tmp_path, "node.yml", "")).worker_slots == 32


def test_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "node.toml", "workers = 2\nworker_slots = 3\nsnapshot_every = 7\n")
    monkeypatch.setenv("TAMMA_WORKER_SLOTS", "5")
    monkeypatch.setenv("TAMMA_WORKERS", "4")
    cfg = load_node_config(path, workers=6, data_dir=None)
    assert cfg.workers == 6  # override beats environment
    assert cfg.worker_slots == 5  # environment beats file
    assert cfg.snapshot_every == 7  # file beats default
    assert cfg.data_dir == Path("var")  # a None override is "not given"


def test_nested_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAMMA_PLUGINS__triage", "mypkg.steps:triage")
    monkeypatch.setenv("TAMMA_TOKENS", '{"abc": "operator"}')
    monkeypatch.setenv("TAMMA_HEARTBEAT_TIMEOUT", "10s")
    cfg = load_node_config()
    assert cfg.plugins == {"triage": "mypkg.steps:triage"}
    assert cfg.tokens == {"abc": "operator"}
    assert cfg.heartbeat_timeout == 10.0


def test_an_environment_value_that_is_not_json_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAMMA_TOKENS", "abc=operator")
    with pytest.raises(
        ConfigError, match=r"TAMMA_TOKENS is not JSON \(Expecting value.*holds JSON"
    ):
        load_node_config()


def test_environment_keys_keep_their_case(monkeypatch: pytest.MonkeyPatch) -> None:
    """A token or a plugin name set as TAMMA_TOKENS__KEY is KEY as written (it was lower-cased:
    the token given to clients was then unknown, and its lower-case twin admin)."""
    monkeypatch.setenv("TAMMA_TOKENS__Xy7-SecretToken", "admin")
    monkeypatch.setenv("TAMMA_TOKENS__a__b", "viewer")  # the first __ only separates
    monkeypatch.setenv("TAMMA_PLUGINS__TriageStep", "mypkg.steps:triage")
    monkeypatch.setenv("tamma_worker_slots", "3")  # the prefix and the name in any case
    monkeypatch.setenv("TAMMA_CURVE_SERVER_KEY", "the client's")  # not a node setting
    cfg = load_node_config()
    assert cfg.tokens == {"Xy7-SecretToken": "admin", "a__b": "viewer"}
    assert cfg.plugins == {"TriageStep": "mypkg.steps:triage"}
    assert cfg.worker_slots == 3


def test_a_map_given_by_a_stronger_source_replaces_the_weaker_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each source overrides the one before, a map as a whole: the environment can take a
    token of the file away (the two used to be merged)."""
    path = write(
        tmp_path,
        "node.toml",
        '[plugins]\nfromfile = "a.b:c"\n[tokens]\nfiletok = "admin"\n',
    )
    monkeypatch.setenv("TAMMA_TOKENS", '{"envtok": "viewer"}')
    monkeypatch.setenv("TAMMA_TOKENS__more", "operator")  # one source: the two are merged
    monkeypatch.setenv("TAMMA_PLUGINS__fromenv", "d.e:f")
    cfg = load_node_config(path)
    assert cfg.tokens == {"envtok": "viewer", "more": "operator"}
    assert cfg.plugins == {"fromenv": "d.e:f"}
    assert load_node_config(path, tokens={"given": "admin"}).tokens == {"given": "admin"}


def test_a_nested_variable_needs_a_map_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAMMA_WORKERS__x", "3")
    with pytest.raises(ConfigError, match="TAMMA_WORKERS__x: workers is not a map"):
        load_node_config()


@pytest.mark.parametrize("how", ["file", "environment", "nested environment"])
def test_an_empty_token_is_refused(
    how: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = None
    if how == "file":
        path = write(tmp_path, "node.toml", '[tokens]\n"" = "admin"\n')
    elif how == "environment":
        monkeypatch.setenv("TAMMA_TOKENS", '{"": "admin", "real": "viewer"}')
    else:
        monkeypatch.setenv("TAMMA_TOKENS__", "admin")
    with pytest.raises(ConfigError, match="tokens: an empty token is refused"):
        load_node_config(path)


def test_worker_tokens_come_from_the_file_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, "node.toml", 'worker_tokens = ["w-file"]\n')
    assert load_node_config(path).worker_tokens == ["w-file"]
    monkeypatch.setenv("TAMMA_WORKER_TOKENS", '["w-env-1", "w-env-2"]')
    assert load_node_config(path).worker_tokens == ["w-env-1", "w-env-2"]  # taken whole


def test_a_worker_token_is_neither_empty_nor_a_control_token() -> None:
    with pytest.raises(ConfigError, match="worker_tokens: an empty token is refused"):
        load_node_config(worker_tokens=["ok", ""])
    with pytest.raises(ConfigError, match="worker_tokens: 1 of them also in tokens") as caught:
        load_node_config(worker_tokens=["s3cret-w"], tokens={"s3cret-w": "viewer"})
    assert "s3cret-w" not in str(caught.value)  # a secret is not repeated


def test_a_fault_names_the_source_of_its_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bad TAMMA_* variable was reported as the file's ("(file node.toml)")."""
    path = write(tmp_path, "node.toml", "worker_slots = 4\nheartbeat_timeout = 5\n")
    monkeypatch.setenv("TAMMA_WORKERS", "-1")
    with pytest.raises(ConfigError) as caught:
        load_node_config(path)
    assert "workers: Input should be greater than or equal to 0 (TAMMA_WORKERS)" in str(
        caught.value
    )
    assert "node.toml" not in str(caught.value)
    monkeypatch.setenv("TAMMA_WORKERS", "2")
    monkeypatch.setenv("TAMMA_HEARTBEAT_INTERVAL", "10")
    with pytest.raises(ConfigError) as caught:
        load_node_config(path)
    assert str(caught.value) == (
        "invalid node configuration: heartbeat_timeout must be longer than heartbeat_interval "
        f"(heartbeat_timeout: file {path}; heartbeat_interval: TAMMA_HEARTBEAT_INTERVAL)"
    )
    with pytest.raises(ConfigError, match=r"worker_slots: .* \(file .*node.toml\)$"):
        load_node_config(write(tmp_path, "node.toml", "worker_slots = 0\n"))
    monkeypatch.setenv("TAMMA_TOKENS", "{not json")
    with pytest.raises(ConfigError, match="TAMMA_TOKENS is not JSON") as caught:
        load_node_config(path)
    assert "node.toml" not in str(caught.value)


def test_file_layer_does_not_leak_between_loads(tmp_path: Path) -> None:
    load_node_config(write(tmp_path, "a.toml", "worker_slots = 2\n"))
    assert load_node_config().worker_slots == DEFAULT_WORKER_SLOTS
    assert NodeConfig().worker_slots == DEFAULT_WORKER_SLOTS


def test_unknown_key_in_file_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "node.toml", "workerz = 3\n")
    with pytest.raises(ConfigError, match=r"workerz: unknown key") as info:
        load_node_config(path)
    assert str(path) in str(info.value)


def test_unknown_override_is_named() -> None:
    with pytest.raises(ConfigError, match="colour: unknown key"):
        load_node_config(colour="blue")


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"workers": -1}, "workers"),
        ({"worker_slots": 0}, "worker_slots"),
        ({"durability": "yolo"}, "durability"),
        ({"heartbeat_interval": "soon"}, "heartbeat_interval"),
        ({"cancel_grace": -1}, "cancel_grace"),
        ({"log_level": "LOUD"}, "log_level"),
        ({"tokens": {"t": "root"}}, "tokens.t"),
        ({"plugins": {"x": "no colon"}}, "plugins"),
        ({"control_endpoint": "http://x"}, "control_endpoint"),
        ({"map_size": 10}, "map_size"),
        ({"retention_days": 0}, "retention_days"),
    ],
)
def test_bad_values_name_the_key(values: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=rf"{key}: "):
        NodeConfig(**values)


def test_bad_environment_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAMMA_WORKER_SLOTS", "many")
    with pytest.raises(ConfigError, match="worker_slots"):
        load_node_config()


def test_heartbeat_timeout_must_exceed_interval() -> None:
    with pytest.raises(ConfigError, match="heartbeat_timeout must be longer"):
        NodeConfig(heartbeat_interval=2, heartbeat_timeout="2s")


def test_tcp_needs_curve_or_explicit_insecurity() -> None:
    with pytest.raises(ConfigError, match=re.escape("workers_endpoint 'tcp://0.0.0.0:5601'")):
        NodeConfig(workers_endpoint="tcp://0.0.0.0:5601")
    insecure = NodeConfig(workers_endpoint="tcp://0.0.0.0:5601", insecure_tcp=True)
    assert insecure.workers_address == "tcp://0.0.0.0:5601"
    public, secret = keypair()
    secure = NodeConfig(
        workers_endpoint="tcp://127.0.0.1:5601", curve_public_key=public, curve_secret_key=secret
    )
    assert secure.has_curve


def test_a_tcp_control_endpoint_needs_tokens_or_explicit_insecurity() -> None:
    """Without tokens every caller is admin: fine on the private ipc:// socket, not for
    every peer that has the node's public key."""
    public, secret = keypair()
    keys = {"curve_public_key": public, "curve_secret_key": secret}
    with pytest.raises(ConfigError, match="a tcp:// control_endpoint needs tokens"):
        NodeConfig(control_endpoint="tcp://127.0.0.1:5600", **keys)
    for fine in ({"tokens": {"s3cret": "operator"}}, {"insecure_tcp": True}):
        cfg = NodeConfig(control_endpoint="tcp://127.0.0.1:5600", **keys, **fine)
        assert cfg.control_address == "tcp://127.0.0.1:5600"
    assert NodeConfig(events_endpoint="tcp://127.0.0.1:5602", **keys).has_curve  # not control


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param("abc", id="short"),
        pytest.param("def" * 14, id="long"),
        pytest.param("#" * 40, id="a-group-over-2**32"),
        pytest.param("é" * 40, id="not-ascii"),
        pytest.param("a b c d e " * 4, id="not-z85"),
    ],
)
@pytest.mark.parametrize("setting", ["curve_public_key", "curve_secret_key"])
def test_a_curve_key_must_be_one(setting: str, bad: str) -> None:
    """It was accepted, and the node hung for ever once libzmq refused it at the bind."""
    keys = dict(zip(("curve_public_key", "curve_secret_key"), keypair(), strict=True))
    keys[setting] = bad
    with pytest.raises(
        ConfigError, match=rf"^invalid node configuration: {setting}: not a CURVE"
    ) as info:
        NodeConfig(**keys)
    assert bad not in str(info.value)  # a secret is not repeated


def test_the_public_key_must_be_the_secret_keys() -> None:
    """A public key of another pair was accepted: local workers, given it, never joined."""
    (public, _), (_, secret) = keypair(), keypair()
    with pytest.raises(ConfigError, match="curve_public_key is not the public half of curve_sec"):
        NodeConfig(curve_public_key=public, curve_secret_key=secret)


@pytest.mark.parametrize(
    ("endpoint", "fault"),
    [
        ("tcp://127.0.0.1:notaport", "the port must be a number up to 65535, or *"),
        ("tcp://127.0.0.1:65536", "the port must be a number up to 65535, or *"),
        ("tcp://127.0.0.1", "expected tcp://HOST:PORT"),
        ("tcp://:5600", "expected tcp://HOST:PORT"),
    ],
)
def test_a_tcp_endpoint_needs_a_host_and_a_port(endpoint: str, fault: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"control_endpoint '{endpoint}': {fault}")):
        NodeConfig(control_endpoint=endpoint, insecure_tcp=True)
    for fine in ("tcp://*:5600", "tcp://[::1]:5600", "tcp://127.0.0.1:*", "tcp://lo:0"):
        assert NodeConfig(control_endpoint=fine, insecure_tcp=True).control_address == fine


def test_an_ipc_endpoint_needs_its_directory(tmp_path: Path) -> None:
    missing = f"ipc://{tmp_path}/missing/events.sock"
    with pytest.raises(
        ConfigError,
        match=re.escape(f"events_endpoint '{missing}': {tmp_path}/missing is not an existing"),
    ):
        NodeConfig(data_dir=tmp_path / "var", events_endpoint=missing)
    # the data directory is made by the node when it starts; abstract names have no file
    inside = f"ipc://{tmp_path}/var/events.sock"
    assert NodeConfig(data_dir=tmp_path / "var", events_endpoint=inside).events_address == inside
    assert NodeConfig(events_endpoint="ipc://@tamma-events").events_address == "ipc://@tamma-events"


def test_two_sockets_cannot_share_an_endpoint(tmp_path: Path) -> None:
    same = f"ipc://{tmp_path}/same.sock"
    with pytest.raises(ConfigError, match="control_endpoint and events_endpoint are the same"):
        NodeConfig(control_endpoint=same, events_endpoint=f"ipc://{tmp_path}/./same.sock")
    with pytest.raises(ConfigError, match="control_endpoint and workers_endpoint are the same"):
        NodeConfig(data_dir=tmp_path, workers_endpoint=f"ipc://{tmp_path}/control.sock")
    tcp = "tcp://127.0.0.1:5600"
    with pytest.raises(ConfigError, match="workers_endpoint and events_endpoint are the same"):
        NodeConfig(workers_endpoint=tcp, events_endpoint=tcp, insecure_tcp=True)
    anyport = "tcp://127.0.0.1:*"  # each bind takes a free port of its own
    cfg = NodeConfig(control_endpoint=anyport, events_endpoint=anyport, insecure_tcp=True)
    assert cfg.control_address == cfg.events_address == anyport


def test_curve_keys_come_in_pairs() -> None:
    with pytest.raises(ConfigError, match="go together"):
        NodeConfig(curve_public_key=keypair()[0])


@pytest.mark.parametrize("how", ["override", "environment", "file"])
def test_an_empty_data_dir_is_refused(
    how: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It meant the current directory (its mode was then set to 0700)."""
    path, given = None, {}
    if how == "override":
        given = {"data_dir": ""}
    elif how == "environment":
        monkeypatch.setenv("TAMMA_DATA_DIR", "")
    else:
        path = write(tmp_path, "node.toml", 'data_dir = ""\n')
    with pytest.raises(ConfigError, match="data_dir: empty: it would be the current directory"):
        load_node_config(path, **given)


def test_an_empty_workflow_dir_is_refused(tmp_path: Path) -> None:
    """It became ".": subflows could read any file under the current directory."""
    with pytest.raises(ConfigError, match="workflow_dirs: an empty entry"):
        NodeConfig(workflow_dirs=[tmp_path, ""])


def test_a_path_starting_with_a_tilde_is_the_home_directorys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``data_dir = "~/tamma-data"`` made ./~/tamma-data."""
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "flows").mkdir()
    path = write(
        tmp_path,
        "node.toml",
        'data_dir = "~/tamma-data"\nworkflow_dirs = ["~/flows"]\nsupervision = "~/tree.toml"\n'
        'events_endpoint = "ipc://~/events.sock"\n',
    )
    cfg = load_node_config(path)
    assert cfg.data_dir == tmp_path / "tamma-data"
    assert cfg.control_address == f"ipc://{tmp_path}/tamma-data/control.sock"
    assert cfg.workflow_dirs == [tmp_path / "flows"]
    assert cfg.supervision == tmp_path / "tree.toml"
    assert cfg.events_address == f"ipc://{tmp_path}/events.sock"


def test_overlong_ipc_path_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="107-byte limit"):
        NodeConfig(data_dir=tmp_path / ("d" * 120))


@pytest.mark.parametrize(
    ("name", "text", "fragment"),
    [
        ("node.toml", "workers = [", "malformed"),
        ("node.yaml", "workers: [1, 2\n", "malformed"),
        ("node.yaml", "- a\n- b\n", "must be a mapping"),
    ],
)
def test_unusable_files(tmp_path: Path, name: str, text: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        load_node_config(write(tmp_path, name, text))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_node_config(tmp_path / "absent.toml")


def test_example_file_documents_the_defaults() -> None:
    path = ROOT / "config" / "node.example.toml"
    assert load_node_config(path) == NodeConfig()
    text = path.read_text()
    for field in NodeConfig.model_fields:
        assert field in text, f"{field} is not documented in {path.name}"


def test_json_schema() -> None:
    schema = node_config_json_schema()
    assert schema["title"] == "tamma_actors node configuration"
    assert set(NodeConfig.model_fields) == set(schema["properties"])
    assert schema["additionalProperties"] is False
    assert "anyOf" in schema["properties"]["heartbeat_interval"]


def test_node_flags_override_the_file_and_an_absent_flag_leaves_it(tmp_path: Path) -> None:
    from tamma_actors._cli_node import _config_from, _parser

    path = write(tmp_path, "node.toml", f'data_dir = "{tmp_path}"\nallow_shell = true\n')
    cfg = _config_from(_parser().parse_args(["run", "--config", str(path), "--allow-record"]))
    assert cfg.allow_shell and cfg.allow_record  # the file's shell, the flag's record
    cfg = _config_from(_parser().parse_args(["run", "--config", str(path)]))
    assert cfg.allow_shell and not cfg.allow_record
    flows = tmp_path / "flows"
    flows.mkdir()
    args = ["run", "--data-dir", str(tmp_path), "--workflow-dir", str(flows)]
    cfg = _config_from(_parser().parse_args([*args, "--workflow-dir", str(tmp_path)]))
    assert cfg.workflow_dirs == [flows, tmp_path] and not cfg.allow_shell


def test_empty_path_flags_are_refused_naming_the_setting(tmp_path: Path) -> None:
    """``--data-dir ''`` and ``--workflow-dir ''`` were the current directory."""
    from tamma_actors._cli_node import _config_from, _parser

    with pytest.raises(ConfigError, match="data_dir: empty"):
        _config_from(_parser().parse_args(["run", "--data-dir", ""]))
    with pytest.raises(ConfigError, match="workflow_dirs: an empty entry"):
        _config_from(
            _parser().parse_args(["run", "--data-dir", str(tmp_path), "--workflow-dir", ""])
        )


def test_variables_that_name_no_node_setting_are_listed_for_the_log() -> None:
    # A misspelt TAMMA_WORKRES=4 was ignored in silence, where a misspelt file key is refused;
    # the client's and a worker's own variables are no mistake.
    environ = {
        "TAMMA_WORKRES": "4",
        "tamma_bogus": "1",
        "TAMMA_NOPE__KEY": "x",
        "TAMMA_WORKERS": "2",
        "TAMMA_TOKENS__Abc": "admin",
        "TAMMA_ENDPOINT": "ipc://x",
        "TAMMA_TOKEN": "t",
        "TAMMA_CURVE_SERVER_KEY": "k",
        "TAMMA_WORKER_TOKEN": "w",
        "HOME": "/root",
    }
    assert unknown_variables(environ) == ["TAMMA_NOPE__KEY", "TAMMA_WORKRES", "tamma_bogus"]
