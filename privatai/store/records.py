"""What the store hands out: plain frozen records, no connection behind them."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Literal

DEFAULT_PLAN = "pro"


def utc_now() -> datetime:
    """Now in UTC, to the second, naive: how every time is stored."""
    return datetime.now(timezone.utc).replace(microsecond=0, tzinfo=None)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: what auth puts on ``request.ctx`` and metering records."""

    key_id: int
    key_prefix: str
    account_id: int
    account_name: str
    plan: str


@dataclass(frozen=True, slots=True)
class Account:
    id: int
    name: str
    plan: str
    status: Literal["active", "past_due", "inactive", "pending", "suspended"]
    created: str


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A key's metadata; never the key or its hash."""

    id: int
    account_id: int
    account_name: str
    label: str
    prefix: str
    created: str
    last_used: str | None
    revoked_at: str | None
    expires_at: str | None

    @property
    def status(self) -> Literal["active", "revoked", "expired"]:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= utc_now().isoformat():
            return "expired"
        return "active"


@dataclass(frozen=True, slots=True)
class NewKey:
    """A freshly created key: ``key`` exists only here and is shown once."""

    key: str
    info: ApiKey


@dataclass(frozen=True, slots=True)
class UsageRow:
    """One line of a usage report; ``model`` is None unless broken down by model."""

    account_name: str
    key_prefix: str | None
    key_label: str | None
    model: str | None
    requests: int
    prompt_tokens: int
    completion_tokens: int
    last_used: str | None

    @property
    def tokens_used(self) -> int:
        return self.prompt_tokens + self.completion_tokens
