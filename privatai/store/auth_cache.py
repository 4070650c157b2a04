"""Authentication outcomes, cached briefly so the request path rarely queries.

Every API request authenticates, and a key's row changes rarely. So the
outcome of a lookup (a principal, or the error to raise) is kept for ``ttl``
seconds: changes made through this process clear the cache at once, changes
made by another process (the admin CLI, another worker or instance) clear it
within half a second (:mod:`privatai.store.changes`), and the TTL bounds how
long a key is honoured should that check fail. Known and unknown keys are
cached apart, so a flood of random keys cannot evict the real ones. While
the database cannot be reached, a known key's last outcome stands for a
bounded ``grace``.
"""
from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from privatai.errors import AuthenticationFailed, PermissionDenied
from privatai.store.keys import hash_key, is_well_formed
from privatai.store.records import Principal

MISSING = "Missing API key. Send it as 'Authorization: Bearer privat_...'."
INVALID = "Invalid API key."
REVOKED = "This API key has been revoked."
EXPIRED = "This API key has expired."
SUSPENDED = "The account of this API key is suspended. Contact support to reactivate it."


def key_digest(raw_key: str | None) -> str:
    """The digest to look ``raw_key`` up by, or AuthenticationFailed if it cannot be a key."""
    if not raw_key:
        raise AuthenticationFailed(MISSING)
    if not is_well_formed(raw_key):
        raise AuthenticationFailed(INVALID)
    return hash_key(raw_key)


@dataclass(frozen=True, slots=True)
class Outcome:
    """A cached authentication result: a principal or the error to raise."""

    principal: Principal | None
    error: AuthenticationFailed | PermissionDenied | None
    key_expires: float | None  # epoch seconds
    known: bool  # the key exists (even if revoked or its account suspended)

    @classmethod
    def of(cls, row: tuple[Any, ...] | None) -> Outcome:
        """From a key row (id, prefix, revoked_at, expires_at, account id, name, plan, status)."""
        if row is None:
            return cls(None, AuthenticationFailed(INVALID), None, known=False)
        key_id, prefix, revoked_at, expires_at, account_id, account_name, plan, status = row
        if revoked_at is not None:
            return cls(None, AuthenticationFailed(REVOKED), None, known=True)
        expires = _epoch(expires_at) if expires_at is not None else None
        if status != "active":
            return cls(None, PermissionDenied(SUSPENDED), expires, known=True)
        return cls(Principal(key_id, prefix, account_id, account_name, plan), None, expires, known=True)

    def principal_now(self) -> Principal:
        """The principal, or the error; expiry is checked on every call, since a
        cached key may expire while its entry lives."""
        if self.key_expires is not None and self.key_expires <= time.time():
            raise AuthenticationFailed(EXPIRED)
        if self.error is not None:
            # A new instance per raise: exceptions carry their traceback.
            raise type(self.error)(self.error.message)
        assert self.principal is not None
        return self.principal


def _epoch(timestamp: str) -> float:
    return datetime.fromisoformat(timestamp + "+00:00").timestamp()


class _TTLCache:
    """A small LRU whose entries expire ``ttl`` seconds after they were stored,
    and are kept ``grace`` seconds longer for :meth:`stale` (the database is down)."""

    def __init__(self, ttl: float, max_size: int, grace: float = 0.0) -> None:
        self._ttl = ttl
        self._grace = grace
        self._max_size = max_size
        self._entries: OrderedDict[str, tuple[float, Outcome]] = OrderedDict()

    def get(self, key: str) -> Outcome | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        now = time.monotonic()
        if entry[0] <= now:
            if entry[0] + self._grace <= now:
                del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry[1]

    def stale(self, key: str) -> Outcome | None:
        """An outcome up to ``grace`` seconds past its TTL, for when the database cannot answer."""
        entry = self._entries.get(key)
        if entry is None or entry[0] + self._grace <= time.monotonic():
            return None
        return entry[1]

    def put(self, key: str, outcome: Outcome) -> None:
        self._entries[key] = (time.monotonic() + self._ttl, outcome)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_size:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()


class AuthCache:
    """Outcomes by key digest, known and unknown keys apart."""

    def __init__(self, ttl: float, max_size: int, grace: float = 0.0) -> None:
        # Only known keys outlive their TTL: an unknown key gets no grace.
        self.known = _TTLCache(ttl, max_size, grace)
        self.unknown = _TTLCache(ttl, max_size)

    def get(self, digest: str) -> Outcome | None:
        return self.known.get(digest) or self.unknown.get(digest)

    def put(self, digest: str, outcome: Outcome) -> None:
        (self.known if outcome.known else self.unknown).put(digest, outcome)

    def clear(self) -> None:
        self.known.clear()
        self.unknown.clear()
