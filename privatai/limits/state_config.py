"""The ``state:`` section of backends.yaml: what several gateway instances share.

Unset (the default), everything lives in this server's memory and its
database: right for one machine. With ``redis_url`` set, instances share the
web-chat limits (and the per-key rate limits) through Redis, and hear about
revoked keys and suspended accounts at once over Redis pub/sub.

Secrets never sit in the file: the Redis password and the key that hashes
client addresses come from environment variables the section names.
"""
from __future__ import annotations

import os
from typing import Annotated
from urllib.parse import urlsplit

import msgspec

from privatai.errors import ConfigError

# The identity key is an HMAC-SHA256 key: 32 bytes of entropy, written as
# text (``openssl rand -hex 32`` gives 64 characters).
MIN_IDENTITY_KEY_CHARS = 32


class StateConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    # redis://host:port/db or rediss:// (TLS), never with a password in it.
    redis_url: str | None = None
    # Environment variable holding the Redis password (Redis ACL or requirepass); unset: none.
    password_env: str | None = None
    # Environment variable holding the key that hashes web-chat client
    # addresses. Every instance must hold the same key, or one client would be
    # several identities; it is not kept in Redis, so that whoever can read
    # Redis cannot reverse the hashes by trying every IPv4 address.
    identity_key_env: str = "PRIVATAI_IDENTITY_KEY"
    # Prefix of every Redis key and channel: several deployments can share one Redis.
    key_prefix: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.-]{1,40}$")] = "privatai"
    # How long a known API key keeps working from the authentication cache
    # while the database cannot be reached (any database: SQLite or PostgreSQL).
    store_grace_seconds: Annotated[float, msgspec.Meta(ge=0, le=86400)] = 300.0
    # Usage rows (key x day x model) held in memory while the database is
    # down; beyond this the newest rows are dropped and logged as lost.
    held_usage_rows: Annotated[int, msgspec.Meta(ge=100, le=10_000_000)] = 100_000

    @property
    def shared(self) -> bool:
        return self.redis_url is not None

    def password(self) -> str | None:
        return os.environ.get(self.password_env) if self.password_env else None

    def identity_key(self) -> bytes | None:
        """The shared identity key, or None when the environment does not set it."""
        value = os.environ.get(self.identity_key_env)
        return value.encode() if value else None


def check_state(source: str, state: StateConfig) -> None:
    """One-line ConfigErrors for a ``state:`` section msgspec cannot judge alone."""
    if state.redis_url is None:
        if state.password_env is not None:
            raise ConfigError(source, "state.password_env", "only used with state.redis_url")
        return
    try:
        url = urlsplit(state.redis_url)
        url.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        raise ConfigError(source, "state.redis_url", "not a valid URL") from None
    if url.scheme not in ("redis", "rediss") or not url.hostname:
        raise ConfigError(source, "state.redis_url", "must be a redis:// or rediss:// URL with a host")
    if url.password is not None:
        raise ConfigError(source, "state.redis_url", "must not contain the password: put it in an "
                                                     "environment variable and name that in state.password_env")


def require_secrets(source: str, state: StateConfig) -> None:
    """At start, with Redis configured: the identity key must be set and long enough."""
    if not state.shared:
        return
    key = state.identity_key()
    if key is None or len(key) < MIN_IDENTITY_KEY_CHARS:
        raise ConfigError(source, "state.identity_key_env",
                          f"the environment variable {state.identity_key_env} must hold the same secret "
                          f"of at least {MIN_IDENTITY_KEY_CHARS} characters on every instance "
                          "(e.g. openssl rand -hex 32)")
    if state.password_env is not None and os.environ.get(state.password_env) is None:
        raise ConfigError(source, "state.password_env",
                          f"the environment variable {state.password_env} is not set")
