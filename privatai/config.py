"""backends.yaml + environment -> typed, validated settings.

Validation is msgspec's: an unknown key, a wrong type or a missing field
becomes a :class:`ConfigError` with the file, the key path and one line of
reason, which the CLI prints instead of a traceback.
"""
from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Annotated, Literal, Union
from urllib.parse import urlsplit

import msgspec
import yaml

from privatai.billing.config import BillingConfig, check_billing
from privatai.config_types import Positive, PositiveInt
from privatai.errors import ConfigError
from privatai.plans.settings import PlanConfig, ReservedFor, check_plans, default_plans
from privatai.portal.settings import AccountsConfig, PortalConfig, check_portal
from privatai.limits.state_config import StateConfig, check_state

# A real configuration nests five levels at most; PyYAML composes nested
# collections recursively and ends in a RecursionError a few hundred deep.
MAX_YAML_DEPTH = 32


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
    # A chat request without "stream" from a client that accepts anything
    # (Accept */* or none: curl, requests, fetch) gets SSE when true; the
    # OpenAI SDKs send Accept: application/json and always get JSON.
    stream_by_default: bool = False
    # Browser origins allowed to call the API (exact "https://host[:port]", or "*").
    cors_origins: list[str] = []
    grace_period: Positive = 30.0
    # From connecting (or from the first byte of a later request on a kept-alive
    # connection) to the end of the request headers; slower clients get 408.
    header_timeout: Positive = 10.0
    # Open connections per client address (an IPv6 client: per /64); more are
    # answered 429 and closed. A reverse proxy is exempt: 127.0.0.1 and ::1
    # always, others when listed in web_chat.trusted_proxies.
    max_connections_per_client: PositiveInt = 64


class StoreConfig(_Section):
    path: str = "privatai.db"
    # PostgreSQL instead of the SQLite file at ``path``: postgresql://user@host:port/database,
    # never with a password in it; the password comes from the variable ``password_env`` names.
    url: str | None = None
    password_env: str | None = None
    # At most a century: the cut-off date must stay a valid date.
    usage_retention_days: Annotated[int, msgspec.Meta(ge=1, le=36500)] = 400
    flush_interval: Positive = 1.0
    # Seconds a key's authentication stays cached. Changes are seen within
    # 0.5 s anyway (privatai.store.changes); this bounds it if that poll fails.
    auth_cache_ttl: Positive = 2.0
    # Where usage held during a database outage is kept if the gateway stops
    # before the database is back (privatai.store.spill). Unset: beside the
    # SQLite file; with url, $STATE_DIRECTORY (systemd) or the working directory.
    spill_dir: str | None = None

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
    # Caps on what is buffered from the upstream: one line of a streamed
    # answer (an SSE event, an NDJSON line) and a whole non-streamed answer.
    max_line_bytes: PositiveInt = 1024 * 1024
    max_response_bytes: PositiveInt = 8 * 1024 * 1024
    # Dedicated infrastructure: only these plans' and accounts' keys reach this
    # backend (privatai.plans.settings.ReservedFor); unset: every key may.
    reserved_for: ReservedFor | None = None
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
    portal: PortalConfig = msgspec.field(default_factory=PortalConfig)
    state: StateConfig = msgspec.field(default_factory=StateConfig)
    plans: list[PlanConfig] = msgspec.field(default_factory=default_plans)
    billing: BillingConfig = msgspec.field(default_factory=BillingConfig)
    accounts: AccountsConfig = msgspec.field(default_factory=AccountsConfig)
    # Where the file was read from, for messages and relative paths.
    source: str = "<memory>"

    def public_models(self) -> list[str]:
        """Models of the backends every key may reach (none reserved_for)."""
        seen: dict[str, None] = {}
        for backend in self.backends:
            if backend.reserved_for is not None:
                continue
            for name in backend.model_map():
                seen.setdefault(name)
        return list(seen)


_PATH = re.compile(r" - at `(?:key` in `)?\$\.?([^`]*)`$")
# An origin (scheme, host, port): portal.public_url, and what the portal accepts from a request.


def _printable(text: str) -> str:
    """Control characters escaped: a key in the file must not break the one-line
    message or drive the operator's terminal."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def _fail(source: str, exc: msgspec.ValidationError) -> ConfigError:
    text = _printable(str(exc))
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
    check_config(config)
    return config


def _where(mark: yaml.Mark | None) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(file)"


class _DepthLimitedLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing collections nested deeper than
    :data:`MAX_YAML_DEPTH` before its recursive composer can overflow."""

    def __init__(self, stream: str, source: str) -> None:
        super().__init__(stream)
        self._source = source
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node | None:
        event = self.peek_event()
        nested = isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent))
        if not nested:
            return super().compose_node(parent, index)
        if self._depth >= MAX_YAML_DEPTH:
            raise ConfigError(self._source, _where(event.start_mark),
                              f"nested more than {MAX_YAML_DEPTH} levels deep")
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _read_yaml(text: str, source: str) -> object:
    loader: _DepthLimitedLoader | None = None
    try:
        loader = _DepthLimitedLoader(text, source)
        return loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        reason = f"not valid YAML: {_printable(str(exc.problem))}"
        raise ConfigError(source, _where(exc.problem_mark), reason) from None
    except yaml.YAMLError as exc:
        # A ReaderError (a control character) has a position but no mark.
        position = getattr(exc, "position", None)
        where = "(file)"
        if isinstance(position, int):
            line, column = text.count("\n", 0, position) + 1, position - text.rfind("\n", 0, position)
            where = f"line {line}, column {column}"
        raise ConfigError(source, where, "not valid YAML: it contains a character YAML does not allow") from None
    finally:
        if loader is not None:
            loader.dispose()


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate backends.yaml."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(source, "(file)", exc.strerror or "cannot be read") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(source, f"byte {exc.start + 1}", "not UTF-8 text") from None
    data = _read_yaml(text, source)
    config = parse_config(data, source)
    # The database path is relative to the config file, not to the cwd.
    store_path = Path(config.store.path)
    if not store_path.is_absolute() and config.store.path != ":memory:":
        config.store.path = str(Path(path).resolve().parent / store_path)
    if config.store.spill_dir is not None and not Path(config.store.spill_dir).is_absolute():
        config.store.spill_dir = str(Path(path).resolve().parent / config.store.spill_dir)
    if not Path(config.portal.legal_dir).is_absolute():
        config.portal.legal_dir = str(Path(path).resolve().parent / config.portal.legal_dir)
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


def check_config(config: Config) -> None:
    """Every rule across sections; ConfigError names the first one broken."""
    _check_store(config.source, config.store)
    check_state(config.source, config.state)
    names: set[str] = set()
    for i, backend in enumerate(config.backends):
        where = f"backends[{i}]"
        if backend.name in names:
            raise ConfigError(config.source, f"{where}.name", f"duplicate backend name {backend.name!r}")
        names.add(backend.name)
        if backend.kind != "embedded" and not backend.url:
            raise ConfigError(config.source, f"{where}.url", f"required for kind {backend.kind!r}")
        if backend.url is not None:
            _check_url(config.source, f"{where}.url", backend.url)
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
    check_portal(config.source, config.portal, config.accounts)
    plans = check_plans(config)
    check_billing(config.source, config.billing, plans, config.portal.public_url)
    if config.accounts.plan is not None and config.plans and config.accounts.plan not in plans:
        raise ConfigError(config.source, "accounts.plan", f"{config.accounts.plan!r} is not one of plans:")
    for i, entry in enumerate(config.web_chat.trusted_proxies):
        try:
            # As the web-chat limiter and the connection bounds read it.
            ipaddress.ip_network(entry.strip(), strict=False)
        except ValueError:
            raise ConfigError(config.source, f"web_chat.trusted_proxies[{i}]",
                              f"{entry!r} is not an IP address or network (CIDR)") from None


def _check_url(source: str, where: str, url: str) -> None:
    """An http(s) URL with a host and a valid port, or a ConfigError naming it."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port out of range or not a number
    except ValueError:
        raise ConfigError(source, where, "not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(source, where, "must be an http:// or https:// URL with a host")


def signup_plan(config: Config) -> str:
    """The plan of an account made by sign-up."""
    return config.accounts.plan or (config.plans[0].name if config.plans else "pro")


def default_model(config: Config) -> str | None:
    return config.default_model or next(iter(config.public_models()), None)
