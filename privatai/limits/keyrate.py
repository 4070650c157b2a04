"""Per-key request and token rates (a plan's ``requests_per_minute`` and
``tokens_per_minute``), and the ``x-ratelimit-*`` headers OpenAI sends.

Each limit is a bucket that holds up to one minute's allowance and refills
continuously (``limit / 60`` per second), so a key may burst to its limit
and then goes on at the rate. A request takes one request and its token
estimate (prompt plus ``max_tokens``) at admission; :meth:`KeyRates.settle`
puts back what it did not use, or takes the excess (the bucket may go below
zero, and the next request waits for it). A request larger than the whole
allowance is admitted when the bucket is full, so it is slow, never stuck.

:class:`KeyRates` is the interface the request path uses. It is async
because a shared store answers over a socket or a lock:
:class:`LocalKeyRates` keeps the buckets in this process's memory (one
gateway process; its methods never suspend, so they cost what a plain call
does), :mod:`privatai.limits.keyrate_sqlite` in a file the workers of one
machine share, :mod:`privatai.limits.keyrate_redis` in Redis for several
instances. All decide with the same arithmetic, so a key gets one allowance
however many processes serve it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Protocol

from privatai.errors import RateLimited
from privatai.limits.shared import MINUTE, duration


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


class KeyRates(Protocol):
    async def acquire(self, key_id: int, limits: KeyLimits, tokens: int) -> RateView:
        """Take one request and ``tokens`` for the key, or raise RateLimited
        (429, Retry-After and the x-ratelimit headers) and take nothing."""
        ...

    async def settle(self, key_id: int, limits: KeyLimits, reserved: int, used: int) -> None:
        """A request that reserved ``reserved`` tokens used ``used``."""
        ...

    async def cancel(self, key_id: int, limits: KeyLimits, reserved: int) -> None:
        """Give back a request that was admitted here and then refused elsewhere."""
        ...


def refill(level: float, at: float, limit: int, now: float) -> float:
    """A bucket's level at ``now``: it regains ``limit`` per minute up to ``limit``
    (a clock that went back refills nothing)."""
    return min(float(limit), level + max(0.0, now - at) * limit / MINUTE)


def window(limit: int, level: float) -> Window:
    return Window(limit, max(0, int(level)), max(0.0, (limit - level) * MINUTE / limit))


def view(limits: KeyLimits, requests: float | None, budget: float | None) -> RateView:
    rpm, tpm = limits.requests_per_minute, limits.tokens_per_minute
    return RateView(window(rpm, requests) if rpm and requests is not None else None,
                    window(tpm, budget) if tpm and budget is not None else None)


def refusal(wait: float, code: str, seen: RateView) -> RateLimited:
    """The 429 for a request that must wait ``wait`` seconds for the rule ``code``."""
    kind = "requests" if code == REQUESTS_EXCEEDED else "tokens"
    error = RateLimited(f"Rate limit for {kind} per minute reached for this API key; "
                        f"retry in {duration(wait)}.", retry_after=wait, code=code)
    error.headers.update(seen.headers())
    return error


REQUESTS_EXCEEDED = "requests_per_minute_exceeded"
TOKENS_EXCEEDED = "tokens_per_minute_exceeded"


def take(limits: KeyLimits, requests: float | None, budget: float | None,
         tokens: int) -> tuple[float | None, float | None]:
    """The levels after admitting one request of ``tokens`` (levels refilled to
    now; None where the plan has no such limit), or raise the 429."""
    rpm, tpm = limits.requests_per_minute, limits.tokens_per_minute
    wait, code = 0.0, ""
    if rpm and requests is not None and requests < 1:
        wait, code = (1 - requests) * MINUTE / rpm, REQUESTS_EXCEEDED
    need = min(tokens, tpm) if tpm else 0
    if tpm and budget is not None and budget < need:
        token_wait = (need - budget) * MINUTE / tpm
        if token_wait > wait:
            wait, code = token_wait, TOKENS_EXCEEDED
    if wait > 0:
        raise refusal(wait, code, view(limits, requests, budget))
    return (requests - 1 if requests is not None else None,
            budget - tokens if budget is not None else None)


def give_back(level: float, limit: int, amount: float) -> float:
    """A level after ``amount`` returns (negative: taken), never above the limit."""
    return min(float(limit), level + amount)


class SharedGiveBacks:
    """``settle`` and ``cancel`` of a shared store: each is one round trip that
    returns requests and tokens (negative: takes them) to the key's buckets."""

    async def put_back(self, key_id: int, limits: KeyLimits, requests: int, tokens: int) -> None:
        raise NotImplementedError

    async def settle(self, key_id: int, limits: KeyLimits, reserved: int, used: int) -> None:
        if limits.tokens_per_minute and reserved != used:
            await self.put_back(key_id, limits, 0, reserved - used)

    async def cancel(self, key_id: int, limits: KeyLimits, reserved: int) -> None:
        await self.put_back(key_id, limits, 1, reserved)


class _Bucket:
    __slots__ = ("level", "at")

    def __init__(self, level: float, at: float) -> None:
        self.level = level
        self.at = at

    def refill(self, limit: int, now: float) -> float:
        self.level = refill(self.level, self.at, limit, now)
        self.at = now
        return self.level


class LocalKeyRates:
    """The buckets in memory, by key id (keys are the store's: their number is bounded).

    The methods are coroutines only to fit :class:`KeyRates`: none awaits, so
    each runs to its end in one step and a cancelled request cannot interrupt it.
    """

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

    async def acquire(self, key_id: int, limits: KeyLimits, tokens: int) -> RateView:
        now = self._clock()
        rpm, tpm = limits.requests_per_minute, limits.tokens_per_minute
        requests = self._bucket(self._requests, key_id, rpm, now) if rpm else None
        budget = self._bucket(self._tokens, key_id, tpm, now) if tpm else None
        left_requests, left_budget = take(limits, requests.level if requests else None,
                                          budget.level if budget else None, tokens)
        if requests is not None and left_requests is not None:
            requests.level = left_requests
        if budget is not None and left_budget is not None:
            budget.level = left_budget
        return view(limits, left_requests, left_budget)

    async def settle(self, key_id: int, limits: KeyLimits, reserved: int, used: int) -> None:
        bucket = self._tokens.get(key_id)
        if limits.tokens_per_minute and bucket is not None:
            bucket.level = give_back(bucket.level, limits.tokens_per_minute, reserved - used)

    async def cancel(self, key_id: int, limits: KeyLimits, reserved: int) -> None:
        bucket = self._requests.get(key_id)
        if limits.requests_per_minute and bucket is not None:
            bucket.level = give_back(bucket.level, limits.requests_per_minute, 1)
        await self.settle(key_id, limits, reserved, 0)
