"""Per-key request and token buckets (privatai.limits.keyrate) on a hand-moved clock."""
from __future__ import annotations

import pytest

from privatai.errors import RateLimited
from privatai.limits.keyrate import KeyLimits, LocalKeyRates, duration


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_requests_refill_at_the_per_minute_rate() -> None:
    clock = Clock()
    rates, limits = LocalKeyRates(clock), KeyLimits(requests_per_minute=2)
    assert (await rates.acquire(1, limits, 0)).headers() == {
        "x-ratelimit-limit-requests": "2", "x-ratelimit-remaining-requests": "1",
        "x-ratelimit-reset-requests": "30s"}
    await rates.acquire(1, limits, 0)
    with pytest.raises(RateLimited) as refused:
        await rates.acquire(1, limits, 0)
    assert refused.value.headers["Retry-After"] == "30"
    assert refused.value.headers["x-ratelimit-remaining-requests"] == "0"
    assert refused.value.headers["x-ratelimit-reset-requests"] == "1m0s"
    await rates.acquire(2, limits, 0)  # another key: its own bucket
    clock.now += 29.9
    with pytest.raises(RateLimited):
        await rates.acquire(1, limits, 0)
    clock.now += 0.1
    await rates.acquire(1, limits, 0)


async def test_tokens_are_reserved_then_settled_to_what_was_used() -> None:
    clock = Clock()
    rates, limits = LocalKeyRates(clock), KeyLimits(tokens_per_minute=600)
    assert (await rates.acquire(1, limits, 500)).tokens is not None
    with pytest.raises(RateLimited) as refused:
        await rates.acquire(1, limits, 200)
    # 100 left, 200 needed: 100 tokens refill in 10 s.
    assert refused.value.code == "tokens_per_minute_exceeded" and refused.value.retry_after == 10
    await rates.settle(1, limits, reserved=500, used=50)  # 550 back... capped at the limit
    assert (await rates.acquire(1, limits, 200)).tokens.remaining == 350  # type: ignore[union-attr]
    await rates.settle(1, limits, reserved=200, used=1000)  # used more than estimated: the bucket goes below zero
    with pytest.raises(RateLimited):
        await rates.acquire(1, limits, 1)


async def test_a_request_larger_than_the_allowance_waits_for_a_full_bucket_not_forever() -> None:
    clock = Clock()
    rates, limits = LocalKeyRates(clock), KeyLimits(tokens_per_minute=100)
    await rates.acquire(1, limits, 1000)
    with pytest.raises(RateLimited):
        await rates.acquire(1, limits, 1000)
    clock.now += 60 * 10  # 900 below zero + 100 to fill: ten minutes
    await rates.acquire(1, limits, 1000)


async def test_cancel_gives_back_request_and_tokens() -> None:
    rates, limits = LocalKeyRates(Clock()), KeyLimits(requests_per_minute=1, tokens_per_minute=10)
    await rates.acquire(1, limits, 10)
    await rates.cancel(1, limits, 10)
    await rates.acquire(1, limits, 10)


@pytest.mark.parametrize("seconds, text", [(0.02, "20ms"), (1.5, "1.5s"), (60, "1m0s"), (61.25, "1m1.25s")])
def test_durations_read_like_openais(seconds: float, text: str) -> None:
    assert duration(seconds) == text
