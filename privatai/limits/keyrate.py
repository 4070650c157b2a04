"""Per-key request and token rates (a plan's ``requests_per_minute`` and
``tokens_per_minute``), and the ``x-ratelimit-*`` headers OpenAI sends.

Each limit is a bucket that holds up to one minute's allowance and refills
continuously (``limit / 60`` per second), so a key may burst to its limit
and then goes on at the rate. A request takes one request and its token
estimate (prompt plus ``max_tokens``) at admission; :meth:`KeyRates.settle`
puts back what it did not use, or takes the excess (the bucket may go below
zero, and the next request waits for it). A request larger than the whole
allowance is admitted when the bucket is full, so it is slow, never stuck.

:class:`KeyRates` is the interface the request path uses; :class:`LocalKeyRates`
keeps the buckets in this process's memory (one gateway process). A shared
implementation (Redis) can stand in for it where several processes serve.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Protocol

from privatai.errors import RateLimited

MINUTE = 60.0


@dataclass(frozen=True, slots=True)
class KeyLimits:
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None

    def __bool__(self) -> bool:
        return self.requests_per_minute is not None or self.tokens_per_minute is not None


@dataclass(frozen=True, slots=True)
class Window:
    """One limit as the headers state it: limit, what remains, seconds until full."""

    limit: int
    remaining: int
    reset: float


@dataclass(frozen=True, slots=True)
class RateView:
    requests: Window | None
    tokens: Window | None

    def headers(self) -> dict[str, str]:
        """``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` as OpenAI names them."""
        headers: dict[str, str] = {}
        for kind, window in (("requests", self.requests), ("tokens", self.tokens)):
            if window is not None:
                headers[f"x-ratelimit-limit-{kind}"] = str(window.limit)
                headers[f"x-ratelimit-remaining-{kind}"] = str(window.remaining)
                headers[f"x-ratelimit-reset-{kind}"] = duration(window.reset)
        return headers


def duration(seconds: float) -> str:
    """Seconds as OpenAI's reset headers write them: ``20ms``, ``1.5s``, ``6m0s``."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    if seconds < MINUTE:
        return f"{round(seconds, 3):g}s"
    minutes, rest = divmod(seconds, MINUTE)
    return f"{int(minutes)}m{round(rest, 3):g}s"


class KeyRates(Protocol):
    def acquire(self, key_id: int, limits: KeyLimits, tokens: int) -> RateView:
        """Take one request and ``tokens`` for the key, or raise RateLimited
        (429, Retry-After and the x-ratelimit headers) and take nothing."""

    def settle(self, key_id: int, limits: KeyLimits, reserved: int, used: int) -> None:
        """A request that reserved ``reserved`` tokens used ``used``."""

    def cancel(self, key_id: int, limits: KeyLimits, reserved: int) -> None:
        """Give back a request that was admitted here and then refused elsewhere."""


class _Bucket:
    __slots__ = ("level", "at")

    def __init__(self, level: float, at: float) -> None:
        self.level = level
        self.at = at

    def refill(self, limit: int, now: float) -> float:
        self.level = min(float(limit), self.level + (now - self.at) * limit / MINUTE)
        self.at = now
        return self.level

    def window(self, limit: int) -> Window:
        return Window(limit, max(0, int(self.level)), max(0.0, (limit - self.level) * MINUTE / limit))


class LocalKeyRates:
    """The buckets in memory, by key id (keys are the store's: their number is bounded)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._requests: dict[int, _Bucket] = {}
        self._tokens: dict[int, _Bucket] = {}

    def _bucket(self, buckets: dict[int, _Bucket], key_id: int, limit: int, now: float) -> _Bucket:
        bucket = buckets.get(key_id)
        if bucket is None:
            bucket = buckets[key_id] = _Bucket(float(limit), now)
        bucket.refill(limit, now)
        return bucket

    def acquire(self, key_id: int, limits: KeyLimits, tokens: int) -> RateView:
        now = self._clock()
        rpm, tpm = limits.requests_per_minute, limits.tokens_per_minute
        requests = self._bucket(self._requests, key_id, rpm, now) if rpm else None
        budget = self._bucket(self._tokens, key_id, tpm, now) if tpm else None
        wait, code = 0.0, ""
        if requests is not None and rpm and requests.level < 1:
            wait, code = (1 - requests.level) * MINUTE / rpm, "requests_per_minute_exceeded"
        need = min(tokens, tpm) if tpm else 0
        if budget is not None and tpm and budget.level < need:
            token_wait = (need - budget.level) * MINUTE / tpm
            if token_wait > wait:
                wait, code = token_wait, "tokens_per_minute_exceeded"
        if wait > 0:
            view = self._view(requests, budget, limits)
            kind = "requests" if code == "requests_per_minute_exceeded" else "tokens"
            error = RateLimited(f"Rate limit for {kind} per minute reached for this API key; "
                                f"retry in {duration(wait)}.", retry_after=wait, code=code)
            error.headers.update(view.headers())
            raise error
        if requests is not None:
            requests.level -= 1
        if budget is not None:
            budget.level -= tokens
        return self._view(requests, budget, limits)

    @staticmethod
    def _view(requests: _Bucket | None, budget: _Bucket | None, limits: KeyLimits) -> RateView:
        return RateView(requests.window(limits.requests_per_minute) if requests and limits.requests_per_minute
                        else None,
                        budget.window(limits.tokens_per_minute) if budget and limits.tokens_per_minute else None)

    def settle(self, key_id: int, limits: KeyLimits, reserved: int, used: int) -> None:
        bucket = self._tokens.get(key_id)
        if limits.tokens_per_minute and bucket is not None:
            bucket.level = min(float(limits.tokens_per_minute), bucket.level + reserved - used)

    def cancel(self, key_id: int, limits: KeyLimits, reserved: int) -> None:
        bucket = self._requests.get(key_id)
        if limits.requests_per_minute and bucket is not None:
            bucket.level = min(float(limits.requests_per_minute), bucket.level + 1)
        self.settle(key_id, limits, reserved, 0)
