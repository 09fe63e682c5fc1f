"""Node configuration: one pydantic-settings model, loaded once and passed down.

Precedence, strongest first: keyword overrides (the command line) > ``TAMMA_*``
environment variables (nested keys with ``__``) > the config file (TOML or YAML) >
defaults. A setting is taken whole from the strongest source that gives it: a map
(``tokens``, ``plugins``) or a list is not merged with a weaker source's. Every fault (an
unknown key, a bad value, an unsafe endpoint) is a :class:`ConfigError` naming the key,
and where a value at fault came from: its ``TAMMA_*`` variable, or the file
(``_config_sources``).
"""

from __future__ import annotations

import logging
import os
import re
import tomllib
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    DirectoryPath,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from tamma_actors._config_sources import Layers, Sources, describe, environment
from tamma_actors._config_sources import unknown_variables as _unknown_variables
from tamma_actors._curve import is_curve_key, public_key_of
from tamma_actors._errors import ConfigError
from tamma_actors._models import Seconds
from tamma_actors._wire import DEFAULT_WORKER_SLOTS

__all__ = ["NodeConfig", "load_node_config", "node_config_json_schema", "unknown_variables"]

MiB = 1024 * 1024
# sun_path in struct sockaddr_un is 108 bytes on Linux, including the terminating NUL.
_MAX_IPC_PATH = 107
_SCHEMES = ("ipc://", "tcp://", "inproc://")
_PLUGIN_TARGET = r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$"
# The file layer of the settings being built (its path, its values); a context variable so
# concurrent loads (tests in threads) cannot see each other's files.
_FILE: ContextVar[tuple[Path | None, Mapping[str, Any]] | None] = ContextVar(
    "tamma_node_file", default=None
)


def _cpu_count() -> int:
    return os.cpu_count() or 1


class NodeConfig(BaseSettings):
    """Everything a ``tamma-node`` process needs; durations in seconds (or "5s")."""

    model_config = SettingsConfigDict(extra="forbid", validate_default=True)

    data_dir: Path = Path("var")
    control_endpoint: str | None = None
    workers_endpoint: str | None = None
    events_endpoint: str | None = None
    events_publish_time: bool = False
    insecure_tcp: bool = False
    curve_public_key: str | None = None
    curve_secret_key: str | None = None
    workers: int = Field(default_factory=_cpu_count, ge=0)
    worker_slots: int = Field(DEFAULT_WORKER_SLOTS, ge=1)
    worker_max_memory_mb: int | None = Field(None, ge=16)
    heartbeat_interval: Seconds = Field(1.0, gt=0)
    heartbeat_timeout: Seconds = Field(5.0, gt=0)
    max_frame_bytes: int = Field(8 * MiB, ge=1024)
    durability: Literal["full", "relaxed"] = "full"
    snapshot_every: int = Field(100, ge=1)
    start_notice_hold: Seconds = Field(0.25, ge=0)
    group_commit_max: int = Field(1024, ge=1)
    store_writer: Literal["process", "thread"] = "process"
    dispatcher_threads: int = Field(2, ge=1)
    # tamma-node run pins its own threads to one CPU (see _affinity); "off", or which one
    coordinator_cpu: Annotated[int, Field(ge=0)] | Literal["auto", "off"] = "auto"
    max_running_steps: int = Field(10000, ge=1)
    allow_shell: bool = False
    allow_record: bool = False
    plugins: dict[str, str] = Field(default_factory=dict)
    map_size: int = Field(64 * MiB, ge=MiB)
    max_map_size: int | None = Field(None, ge=MiB)
    supervision: Path | None = None
    log_level: str = "INFO"
    tokens: dict[str, Literal["viewer", "operator", "admin"]] = Field(default_factory=dict)
    # secrets that admit a worker and grant nothing on the control socket
    worker_tokens: list[str] = Field(default_factory=list)
    # where subflows may read workflow files (see workflow_file_dirs)
    workflow_dirs: list[DirectoryPath] = Field(default_factory=list)
    cancel_grace: Seconds = Field(5.0, ge=0)
    retention_days: float | None = Field(None, gt=0)
    retention_interval: Seconds = Field(3600.0, gt=0)
    watchdog_interval: Seconds = Field(30.0, ge=0)
    rest_after: Seconds = Field(1.0, ge=0)
    shutdown_grace: Seconds = Field(30.0, ge=0)

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            sources = Sources(values, os.environ, NodeConfig.model_fields, _FILE.get())
            raise ConfigError(describe(exc, sources, NodeConfig.model_fields)) from exc

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # No .env or secrets directory: one file, chosen explicitly, then the environment.
        file = _FILE.get()
        env = environment(os.environ, NodeConfig.model_fields)
        return (Layers(settings_cls, (init_settings(), env, file[1] if file else {})),)

    @field_validator("data_dir", "supervision", mode="before")
    @classmethod
    def _a_path(cls, value: Any) -> Any:
        if value == "":
            raise ValueError('empty: it would be the current directory (write "." if meant)')
        return _expand_user(value)

    @field_validator("workflow_dirs", mode="before")
    @classmethod
    def _paths(cls, value: Any) -> Any:
        if not isinstance(value, list):
            return value
        if "" in value:
            raise ValueError(
                'an empty entry would let subflows read the whole current directory (write "." '
                "if meant)"
            )
        return [_expand_user(entry) for entry in value]

    @field_validator("control_endpoint", "workers_endpoint", "events_endpoint")
    @classmethod
    def _known_scheme(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(_SCHEMES):
            raise ValueError(f"{value!r} must start with one of {', '.join(_SCHEMES)}")
        if value is not None and value.startswith("ipc://~"):
            return "ipc://" + os.path.expanduser(value[6:])
        return value

    @field_validator("curve_public_key", "curve_secret_key")
    @classmethod
    def _curve_key(cls, value: str | None) -> str | None:
        if value is not None and not is_curve_key(value):  # the value is not repeated: a secret
            raise ValueError("not a CURVE key (40 z85 characters; tamma-node keygen prints a pair)")
        return value

    @field_validator("tokens")
    @classmethod
    def _no_empty_token(cls, value: dict[str, str]) -> dict[str, str]:
        if "" in value:
            raise ValueError("an empty token is refused: a caller sending '' would have its role")
        return value

    @field_validator("worker_tokens")
    @classmethod
    def _no_empty_worker_token(cls, value: list[str]) -> list[str]:
        if "" in value:
            raise ValueError("an empty token is refused: a worker sending '' would be admitted")
        return value

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        level = value.upper()
        if level not in logging.getLevelNamesMapping():
            raise ValueError(f"unknown log level {value!r}")
        return level

    @field_validator("plugins")
    @classmethod
    def _plugin_targets(cls, value: dict[str, str]) -> dict[str, str]:
        bad = [name for name, target in value.items() if not re.match(_PLUGIN_TARGET, target)]
        if bad:
            raise ValueError(f"plugin targets must look like 'module:attr' (check {bad})")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> NodeConfig:
        if self.heartbeat_timeout <= self.heartbeat_interval:
            raise ValueError("heartbeat_timeout must be longer than heartbeat_interval")
        if self.max_map_size is not None and self.max_map_size < self.map_size:
            raise ValueError("max_map_size must be at least map_size")
        self._check_curve_pair()
        both = set(self.worker_tokens) & set(self.tokens)
        if both:  # the value is not repeated: a secret
            raise ValueError(
                f"worker_tokens: {len(both)} of them also in tokens, where they would open the "
                "control socket to every worker holding one; give each worker a token of its own"
            )
        for name, address in self._addresses().items():
            self._check_address(name, address)
        self._distinct_addresses()
        if self.control_address.startswith("tcp://") and not (self.tokens or self.insecure_tcp):
            raise ValueError(
                "a tcp:// control_endpoint needs tokens: without them every caller that can "
                "connect is admin; set tokens, or insecure_tcp = true to accept anyone"
            )
        return self

    def _check_curve_pair(self) -> None:
        public, secret = self.curve_public_key, self.curve_secret_key
        if (public is None) != (secret is None):
            raise ValueError("curve_public_key and curve_secret_key go together")
        if secret is not None and public_key_of(secret) != public:
            raise ValueError(
                "curve_public_key is not the public half of curve_secret_key: no local worker "
                "could join (tamma-node keygen prints a key pair)"
            )

    def _check_address(self, name: str, address: str) -> None:
        if address.startswith("tcp://") and not (self.has_curve or self.insecure_tcp):
            raise ValueError(
                f"{name} {address!r} is a TCP endpoint: configure curve_public_key and "
                "curve_secret_key, or set insecure_tcp = true to accept unauthenticated peers"
            )
        if address.startswith("tcp://"):
            _check_tcp(name, address)
        if address.startswith("ipc://") and len(address[6:].encode()) > _MAX_IPC_PATH:
            raise ValueError(
                f"{name} {address!r} is longer than the {_MAX_IPC_PATH}-byte limit of an ipc "
                "path; use a shorter data_dir or an explicit endpoint"
            )
        if address.startswith("ipc://") and not address.startswith("ipc://@"):
            # the node creates data_dir; a directory elsewhere must be there already
            directory = os.path.dirname(address[6:]) or "."
            if not (_same_path(directory, self.data_dir) or os.path.isdir(directory)):
                raise ValueError(f"{name} {address!r}: {directory} is not an existing directory")

    def _distinct_addresses(self) -> None:
        seen: dict[str, str] = {}
        for name, address in self._addresses().items():
            key = _bind_key(address)
            if key is None:
                continue
            if key in seen:
                raise ValueError(
                    f"{seen[key]} and {name} are the same endpoint {address!r}: each "
                    "socket needs its own"
                )
            seen[key] = name

    def _addresses(self) -> dict[str, str]:
        return {
            "control_endpoint": self.control_address,
            "workers_endpoint": self.workers_address,
            "events_endpoint": self.events_address,
        }

    def _default_ipc(self, name: str) -> str:
        return f"ipc://{self.data_dir / name}"

    @property
    def has_curve(self) -> bool:
        return self.curve_public_key is not None and self.curve_secret_key is not None

    @property
    def workflow_file_dirs(self) -> tuple[Path, ...] | None:
        """Where a subflow may read its workflow file: inside ``workflow_dirs``; nowhere
        when the node has tokens and no ``workflow_dirs`` (its callers are not all
        trusted with its files); anywhere (None) otherwise: every caller is admin."""
        if self.workflow_dirs or self.tokens:
            return tuple(self.workflow_dirs)
        return None

    @property
    def control_address(self) -> str:
        return self.control_endpoint or self._default_ipc("control.sock")

    @property
    def workers_address(self) -> str:
        return self.workers_endpoint or self._default_ipc("workers.sock")

    @property
    def events_address(self) -> str:
        return self.events_endpoint or self._default_ipc("events.sock")


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """The ``TAMMA_*`` variables that name no node setting (nor one of the client's or a
    worker's), sorted: a node logs them, as a misspelt one (``TAMMA_WORKRES=4``) would
    otherwise be ignored in silence, where a misspelt key in the file is refused."""
    return _unknown_variables(environ, NodeConfig.model_fields)


def _expand_user(value: Any) -> Any:
    """A path with ``~`` (``~/tamma``, ``~user/tamma``) made the home directory's."""
    if isinstance(value, str | Path):
        return os.path.expanduser(value)
    return value


def _check_tcp(name: str, address: str) -> None:
    """``tcp://HOST:PORT``, the port a number or ``*`` (any free one): libzmq says no more
    than "Invalid argument" of anything else, and only once the node binds it."""
    host, sep, port = address[6:].rpartition(":")
    if not sep or not host:
        raise ValueError(f"{name} {address!r}: expected tcp://HOST:PORT")
    if port != "*" and not (port.isascii() and port.isdigit() and int(port) <= 65535):
        raise ValueError(f"{name} {address!r}: the port must be a number up to 65535, or *")


def _same_path(a: str | Path, b: str | Path) -> bool:
    return os.path.abspath(a) == os.path.abspath(b)


def _bind_key(address: str) -> str | None:
    """What two endpoints share when they would bind the same socket; None for an endpoint
    that binds a port of its own each time (``tcp://HOST:*``)."""
    if address.startswith("ipc://") and not address.startswith("ipc://@"):
        return "ipc://" + os.path.abspath(address[6:])
    if address.startswith("tcp://") and address.rpartition(":")[2] in ("*", "0"):
        return None
    return address


def load_node_config(path: Path | None = None, **overrides: Any) -> NodeConfig:
    """Build the node configuration from ``path`` (``.toml``, else YAML), the ``TAMMA_*``
    environment and ``overrides``. Overrides that are None are ignored, so a command line
    can pass every option it has without clobbering the file."""
    values = _read_file(path) if path is not None else {}
    given = {key: value for key, value in overrides.items() if value is not None}
    token = _FILE.set((path, values))
    try:
        return NodeConfig(**given)  # a fault names its source: a variable, or the file
    finally:
        _FILE.reset(token)


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read node configuration {path}: {exc}") from exc
    try:
        data = tomllib.loads(text) if Path(path).suffix == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"node configuration {path} is malformed: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"node configuration {path} must be a mapping of keys to values")
    return data


def node_config_json_schema() -> dict[str, Any]:
    """JSON Schema of a node configuration file."""
    schema = NodeConfig.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "tamma_actors node configuration"
    return schema
