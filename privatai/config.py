"""backends.yaml + environment -> typed, validated settings.

Validation is msgspec's: an unknown key, a wrong type or a missing field
becomes a :class:`ConfigError` with the file, the key path and one line of
reason, which the CLI prints instead of a traceback.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import urlsplit
from typing import Annotated, Literal, Union

import msgspec
import yaml

from privatai.errors import ConfigError

Positive = Annotated[float, msgspec.Meta(gt=0)]
PositiveInt = Annotated[int, msgspec.Meta(ge=1)]


class _Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class ServerConfig(_Section):
    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8000
    workers: PositiveInt = 1
    max_body_bytes: PositiveInt = 4 * 1024 * 1024
    # Sanic's RESPONSE_TIMEOUT; it is reset on every write, and streams send
    # keep-alive comments, so this bounds only a completely silent response.
    response_timeout: Positive = 900.0
    keepalive_interval: Positive = 10.0
    thinking_field: Literal["thinking", "reasoning_content", "both"] = "thinking"
    grace_period: Positive = 30.0


class StoreConfig(_Section):
    path: str = "privatai.db"
    # PostgreSQL instead of the SQLite file at ``path``: postgresql://user@host:port/database,
    # never with a password in it; the password comes from the variable ``password_env`` names.
    url: str | None = None
    password_env: str | None = None
    usage_retention_days: PositiveInt = 400
    flush_interval: Positive = 1.0

    @property
    def location(self) -> str:
        """What the store opens: the PostgreSQL URL if set, else the SQLite path
        (never a password: the URL is refused with one)."""
        return self.url or self.path


class LoggingConfig(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["text", "json"] = "text"
    # Level of every other library's loggers (httpx, httpcore, sanic...). DEBUG
    # helps with connection problems; their records are scrubbed at any level.
    third_party_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "WARNING"
    # Off by default: no client address at all. When on, a keyed hash of it.
    hashed_client_ip: bool = False


class ModelAlias(_Section):
    name: str
    upstream: str


class BackendConfig(_Section):
    name: str
    kind: Literal["embedded", "ollama", "llamacpp", "vllm", "openai"]
    url: str | None = None
    api_key_env: str | None = None
    models: list[Union[str, ModelAlias]] = []
    discover_models: bool = False
    weight: Positive = 1.0
    max_concurrency: PositiveInt = 16
    connect_timeout: Positive = 5.0
    # Until the first token; for non-streamed requests, the whole answer
    # (a non-streamed upstream answer arrives only when generation ends).
    first_token_timeout: Positive = 300.0
    idle_timeout: Positive = 120.0
    # For models that write their reasoning as <think>...</think> into content.
    think_tags: bool = False
    # embedded only
    model_path: str | None = None
    n_ctx: PositiveInt = 2048
    n_threads: PositiveInt | None = None

    def model_map(self) -> dict[str, str]:
        """Public model name -> the name the backend knows it by."""
        return {m if isinstance(m, str) else m.name: m if isinstance(m, str) else m.upstream
                for m in self.models}


class RoutingConfig(_Section):
    max_attempts: PositiveInt = 3
    total_deadline: Positive = 30.0
    queue_timeout: Positive = 10.0
    max_queue: PositiveInt = 1000
    health_interval: Positive = 5.0
    failure_threshold: PositiveInt = 3
    recovery_time: Positive = 10.0


class WebChatConfig(_Section):
    enabled: bool = True
    requests_per_minute: PositiveInt = 10
    tokens_per_day: PositiveInt = 20000
    concurrent_streams: PositiveInt = 1
    max_tokens: PositiveInt = 512
    models: list[str] = []
    trusted_proxies: list[str] = []


class MetricsConfig(_Section):
    enabled: bool = True
    # Name of the environment variable that holds the admin token for /metrics.
    token_env: str = "PRIVATAI_METRICS_TOKEN"


class Config(_Section):
    backends: Annotated[list[BackendConfig], msgspec.Meta(min_length=1)]
    default_model: str | None = None
    server: ServerConfig = msgspec.field(default_factory=ServerConfig)
    store: StoreConfig = msgspec.field(default_factory=StoreConfig)
    logging: LoggingConfig = msgspec.field(default_factory=LoggingConfig)
    routing: RoutingConfig = msgspec.field(default_factory=RoutingConfig)
    web_chat: WebChatConfig = msgspec.field(default_factory=WebChatConfig)
    metrics: MetricsConfig = msgspec.field(default_factory=MetricsConfig)
    # Where the file was read from, for messages and relative paths.
    source: str = "<memory>"

    def public_models(self) -> list[str]:
        seen: dict[str, None] = {}
        for backend in self.backends:
            for name in backend.model_map():
                seen.setdefault(name)
        return list(seen)


_PATH = re.compile(r" - at `\$\.?([^`]*)`$")


def _fail(source: str, exc: msgspec.ValidationError) -> ConfigError:
    text = str(exc)
    match = _PATH.search(text)
    path = match.group(1) if match and match.group(1) else "(top level)"
    reason = _PATH.sub("", text)
    field = re.match(r"Object (?:contains unknown|missing required) field `([^`]+)`", reason)
    if field:
        path = f"{path}.{field.group(1)}" if match and match.group(1) else field.group(1)
    return ConfigError(source, path, reason)


def parse_config(data: object, source: str = "<memory>") -> Config:
    """Validate already-parsed YAML data into a :class:`Config`."""
    if not isinstance(data, dict):
        raise ConfigError(source, "(top level)", "expected a mapping with a 'backends' list")
    try:
        config = msgspec.convert({**data, "source": source}, Config)
    except msgspec.ValidationError as exc:
        raise _fail(source, exc) from None
    _check(config)
    return config


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate backends.yaml."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(source, "(file)", exc.strerror or "cannot be read") from None
    try:
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(file)"
        raise ConfigError(source, where, f"not valid YAML: {exc.problem}") from None
    config = parse_config(data, source)
    # The database path is relative to the config file, not to the cwd.
    store_path = Path(config.store.path)
    if not store_path.is_absolute() and config.store.path != ":memory:":
        config.store.path = str(Path(path).resolve().parent / store_path)
    return config


def _check_store(source: str, store: StoreConfig) -> None:
    if store.url is None:
        if store.password_env is not None:
            raise ConfigError(source, "store.password_env", "only used with store.url (PostgreSQL)")
        return
    if not store.url.startswith(("postgresql://", "postgres://")):
        raise ConfigError(source, "store.url", "must be a postgresql:// URL (for SQLite, set store.path)")
    url = urlsplit(store.url)
    if url.password is not None:
        raise ConfigError(source, "store.url", "must not contain the password: put it in an environment "
                                               "variable and name that in store.password_env")
    if not url.path.strip("/"):
        raise ConfigError(source, "store.url", "names no database, as in postgresql://user@host:5432/privatai")


def _check(config: Config) -> None:
    _check_store(config.source, config.store)
    if config.server.workers != 1:
        raise ConfigError(config.source, "server.workers",
                          "must be 1: the web-chat limits and the usage batches live in this one "
                          "process's memory; run several gateways behind a proxy instead")
    names: set[str] = set()
    for i, backend in enumerate(config.backends):
        where = f"backends[{i}]"
        if backend.name in names:
            raise ConfigError(config.source, f"{where}.name", f"duplicate backend name {backend.name!r}")
        names.add(backend.name)
        if backend.kind != "embedded" and not backend.url:
            raise ConfigError(config.source, f"{where}.url", f"required for kind {backend.kind!r}")
        if backend.kind == "openai" and not backend.api_key_env:
            raise ConfigError(config.source, f"{where}.api_key_env",
                              "required for kind 'openai' (name of the environment variable holding the key)")
        if not backend.models and not backend.discover_models:
            raise ConfigError(config.source, f"{where}.models",
                              "list at least one model, or set discover_models: true")
    models = config.public_models()
    if config.default_model is not None and config.default_model not in models:
        if not any(b.discover_models for b in config.backends):
            raise ConfigError(config.source, "default_model",
                              f"{config.default_model!r} is not served by any backend")
    for i, name in enumerate(config.web_chat.models):
        if name not in models and not any(b.discover_models for b in config.backends):
            raise ConfigError(config.source, f"web_chat.models[{i}]", f"{name!r} is not served by any backend")


def default_model(config: Config) -> str | None:
    return config.default_model or next(iter(config.public_models()), None)
