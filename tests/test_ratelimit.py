"""The web-chat fair-use limiter: each limit, the windows moving on, the
trusted-proxy rule, hashing, bounded memory and exactness under concurrency."""
from __future__ import annotations

import asyncio
import ipaddress

import pytest

from privatai.config import WebChatConfig
from privatai.errors import InvalidRequest, ModelNotFound, RateLimited
from privatai.limits.shared import DAY, MINUTE
from privatai.limits.webchat import WebChatLimiter, client_address, parse_networks


class Clock:
    """A clock the test moves by hand, so windows pass without sleeping."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make(clock: Clock | None = None, max_identities: int = 100_000, **settings: object
         ) -> WebChatLimiter:
    defaults: dict[str, object] = dict(requests_per_minute=100, tokens_per_day=10**9,
                                       concurrent_streams=100, max_tokens=512)
    defaults.update(settings)
    config = WebChatConfig(**defaults)  # type: ignore[arg-type]
    return WebChatLimiter(config, clock=clock or Clock(), max_identities=max_identities)


async def refused(limiter: WebChatLimiter, identity: str, **kwargs: object) -> RateLimited:
    with pytest.raises(RateLimited) as info:
        await limiter.admit(identity, **kwargs)  # type: ignore[arg-type]
    return info.value


async def use(limiter: WebChatLimiter, identity: str, tokens: int = 0) -> None:
    """One admitted request that ends at once, charged ``tokens``."""
    await (await limiter.admit(identity)).release(tokens)


# -- requests per minute ------------------------------------------------------


async def test_requests_per_minute_refuses_the_next_and_says_when_to_retry() -> None:
    clock = Clock()
    limiter = make(clock, requests_per_minute=3)
    me = limiter.identity("203.0.113.7")
    for _ in range(3):
        await use(limiter, me, 0)
        clock.advance(10)
    error = await refused(limiter, me)
    assert error.status == 429
    assert error.code == "requests_per_minute_exceeded"
    # The first request was 30 s ago, so a slot frees in 30 s.
    assert error.headers["Retry-After"] == "30"
    assert error.retry_after == 30
    # The reset as the API's per-key limits (and OpenAI) write it.
    assert error.headers["x-ratelimit-reset-requests"] == "30s"
    clock.advance(0.25)
    assert (await refused(limiter, me)).headers["x-ratelimit-reset-requests"] == "29.75s"


async def test_minute_window_slides_on() -> None:
    clock = Clock()
    limiter = make(clock, requests_per_minute=2)
    me = limiter.identity("203.0.113.7")
    await use(limiter, me)
    clock.advance(30)
    await use(limiter, me)
    await refused(limiter, me)
    clock.advance(29.5)
    await refused(limiter, me)  # the first is 59.5 s old: still inside the window
    clock.advance(0.5)
    await use(limiter, me)  # the first has left the window
    await refused(limiter, me)  # ...but the second (30 s old) and third are still in it
    clock.advance(MINUTE)
    await use(limiter, me)
    await use(limiter, me)


async def test_refused_requests_do_not_use_up_the_window() -> None:
    clock = Clock()
    limiter = make(clock, requests_per_minute=1)
    me = limiter.identity("203.0.113.7")
    await use(limiter, me)
    for _ in range(10):
        await refused(limiter, me)
    clock.advance(MINUTE)
    await use(limiter, me)


async def test_limits_are_per_identity() -> None:
    limiter = make(requests_per_minute=1)
    alice, bob = limiter.identity("203.0.113.7"), limiter.identity("198.51.100.9")
    await use(limiter, alice)
    await refused(limiter, alice)
    await use(limiter, bob)


# -- tokens per day -----------------------------------------------------------


async def test_tokens_per_day_are_charged_after_the_response_and_then_refuse() -> None:
    clock = Clock()
    limiter = make(clock, tokens_per_day=1000)
    me = limiter.identity("203.0.113.7")
    await use(limiter, me, 600)
    clock.advance(3600)
    # 600 of 1000 used: still admitted, and charged with its real usage.
    await use(limiter, me, 500)
    clock.advance(60)
    error = await refused(limiter, me)
    assert error.code == "tokens_per_day_exceeded"
    # The day window opened with the first request, 3660 s ago.
    assert error.retry_after == int(DAY - 3660)


async def test_day_window_moves_on() -> None:
    clock = Clock()
    limiter = make(clock, tokens_per_day=100)
    me = limiter.identity("203.0.113.7")
    await use(limiter, me, 100)
    clock.advance(DAY - 1)
    await refused(limiter, me)
    clock.advance(1)
    admission = await limiter.admit(me)
    await admission.release(40)
    await use(limiter, me, 59)
    await use(limiter, me, 1)
    await refused(limiter, me)


async def test_an_aborted_response_is_charged_what_it_used() -> None:
    limiter = make(tokens_per_day=50)
    me = limiter.identity("203.0.113.7")
    admission = await limiter.admit(me)
    await admission.release(50)  # e.g. the client disconnected after 50 tokens
    await refused(limiter, me)


# -- concurrent streams -------------------------------------------------------


async def test_concurrent_streams_slot_is_held_until_release() -> None:
    limiter = make(concurrent_streams=2)
    me = limiter.identity("203.0.113.7")
    first, second = await limiter.admit(me), await limiter.admit(me)
    error = await refused(limiter, me)
    assert error.code == "concurrent_streams_exceeded"
    assert int(error.headers["Retry-After"]) >= 1
    await first.release(10)
    third = await limiter.admit(me)
    await second.release(10)
    await third.release(10)
    await use(limiter, me)


async def test_release_is_idempotent() -> None:
    limiter = make(concurrent_streams=1, tokens_per_day=100)
    me = limiter.identity("203.0.113.7")
    admission = await limiter.admit(me)
    await admission.release(60)
    await admission.release(60)  # a second call must neither free a slot nor charge again
    held = await limiter.admit(me)
    await refused(limiter, me)  # one slot, and it is held: the double release freed nothing
    await held.release(0)
    await use(limiter, me, 0)  # 60 charged, not 120: still under 100


# -- allowlist and max_tokens cap --------------------------------------------


async def test_model_allowlist() -> None:
    limiter = make(models=["small", "tiny"])
    me = limiter.identity("203.0.113.7")
    assert (await limiter.admit(me, "tiny")).model == "tiny"
    assert (await limiter.admit(me, None)).model == "small"  # none asked: the first allowed
    with pytest.raises(ModelNotFound) as info:
        await limiter.admit(me, "huge")
    assert info.value.status == 404 and info.value.param == "model"
    assert limiter.allowed_models(["huge", "tiny", "small"]) == ["tiny", "small"]


async def test_refused_model_uses_no_rate() -> None:
    limiter = make(requests_per_minute=1, models=["small"])
    me = limiter.identity("203.0.113.7")
    for _ in range(3):
        with pytest.raises(ModelNotFound):
            await limiter.admit(me, "huge")
    await (await limiter.admit(me, "small")).release()


async def test_empty_allowlist_allows_every_served_model() -> None:
    limiter = make()
    me = limiter.identity("203.0.113.7")
    assert (await limiter.admit(me, "anything")).model == "anything"
    assert (await limiter.admit(me, None)).model is None
    assert limiter.allowed_models(["a", "b"]) == ["a", "b"]


async def test_max_tokens_is_clamped_to_the_cap() -> None:
    limiter = make(max_tokens=256)
    me = limiter.identity("203.0.113.7")
    assert (await limiter.admit(me, max_tokens=None)).max_tokens == 256
    assert (await limiter.admit(me, max_tokens=100)).max_tokens == 100
    assert (await limiter.admit(me, max_tokens=100_000)).max_tokens == 256
    with pytest.raises(InvalidRequest):
        await limiter.admit(me, max_tokens=0)


# -- client identity ------------------------------------------------------------

TRUSTED = parse_networks(["10.0.0.1", "192.168.0.0/16", "fd00::/8"])


async def test_spoofed_forwarded_for_from_an_untrusted_peer_is_ignored() -> None:
    assert client_address("203.0.113.7", "1.2.3.4", TRUSTED) == "203.0.113.7"
    limiter = make(requests_per_minute=1, trusted_proxies=["10.0.0.1"])
    await use(limiter, limiter.identity("203.0.113.7", "1.1.1.1"))
    # A different made-up header does not make a new client.
    await refused(limiter, limiter.identity("203.0.113.7", "2.2.2.2"))


async def test_trusted_proxy_gives_the_right_most_untrusted_hop() -> None:
    # The client wrote "6.6.6.6" itself; our proxy appended the real peer.
    assert client_address("10.0.0.1", "6.6.6.6, 198.51.100.9", TRUSTED) == "198.51.100.9"
    # Two trusted hops (CIDR entry): skip both.
    assert client_address("10.0.0.1", "6.6.6.6, 198.51.100.9, 192.168.4.2", TRUSTED) \
        == "198.51.100.9"
    # IPv6 proxies in a CIDR, and ports on hops.
    assert client_address("fd00::5", "[2001:db8::1]:443", TRUSTED) == "2001:db8::1"
    assert client_address("10.0.0.1", "198.51.100.9:5678", TRUSTED) == "198.51.100.9"
    # IPv4-mapped peer addresses count as the IPv4 address.
    assert client_address("::ffff:10.0.0.1", "198.51.100.9", TRUSTED) == "198.51.100.9"
    # No header from a trusted proxy: the proxy is the client.
    assert client_address("10.0.0.1", None, TRUSTED) == "10.0.0.1"
    # Only trusted hops: the left-most of them.
    assert client_address("10.0.0.1", "192.168.1.1", TRUSTED) == "192.168.1.1"
    # Garbage: nothing left of it is trusted, the hop right of it is used.
    assert client_address("10.0.0.1", "1.1.1.1, nonsense, 192.168.1.1", TRUSTED) \
        == "192.168.1.1"


async def test_clients_behind_a_trusted_proxy_are_limited_separately() -> None:
    limiter = make(requests_per_minute=1, trusted_proxies=["10.0.0.0/8"])
    await use(limiter, limiter.identity("10.0.0.1", "198.51.100.9"))
    await refused(limiter, limiter.identity("10.0.0.1", "7.7.7.7, 198.51.100.9"))
    await use(limiter, limiter.identity("10.0.0.1", "198.51.100.10"))


async def test_an_ipv6_slash_64_is_one_client() -> None:
    limiter = make()
    assert limiter.identity("2001:db8:1:2::1") == limiter.identity("2001:db8:1:2:ffff::9")
    assert limiter.identity("2001:db8:1:2::1") != limiter.identity("2001:db8:1:3::1")


async def test_identity_is_a_keyed_hash_and_no_ip_is_kept() -> None:
    limiter = make(trusted_proxies=["10.0.0.1"])
    raw = ["203.0.113.7", "198.51.100.9", "10.0.0.1"]
    identity = limiter.identity("203.0.113.7")
    proxied = limiter.identity("10.0.0.1", "198.51.100.9")
    held = [await limiter.admit(identity), await limiter.admit(proxied)]
    assert identity == limiter.identity("203.0.113.7")  # stable within the process
    assert identity != make().identity("203.0.113.7")  # a new key per limiter/process
    assert len(identity) == 32 and int(identity, 16) >= 0
    # All per-client state (the configured proxy list is not client data).
    state = repr(limiter.state._entries) + repr(held)  # type: ignore[attr-defined]
    for ip in raw:
        assert ip not in state
        assert ip not in identity and ip not in proxied
    for admission in held:
        await admission.release()


# -- bounded memory -------------------------------------------------------------


async def test_table_is_capped() -> None:
    clock = Clock()
    limiter = make(clock, max_identities=100)
    for n in range(1000):
        await use(limiter, limiter.identity(str(ipaddress.IPv4Address(0x0B000000 + n))))
        clock.advance(0.01)
    assert len(limiter) == 100


async def test_cap_never_drops_an_identity_with_a_stream_in_flight() -> None:
    limiter = make(max_identities=10, concurrent_streams=1)
    busy = limiter.identity("203.0.113.7")
    held = await limiter.admit(busy)
    for n in range(50):
        await use(limiter, limiter.identity(f"11.0.0.{n}"))
    assert len(limiter) == 10
    await refused(limiter, busy)  # still known, still counted
    await held.release()


async def test_idle_identities_expire_after_a_day() -> None:
    clock = Clock()
    limiter = make(clock)
    for n in range(50):
        await use(limiter, limiter.identity(f"11.0.0.{n}"), 5)
    assert len(limiter) == 50
    clock.advance(DAY)
    await use(limiter, limiter.identity("203.0.113.7"))
    assert len(limiter) == 1


# -- exact under concurrency ---------------------------------------------------


async def burst(limiter: WebChatLimiter, identity: str, n: int) -> list[object]:
    start = asyncio.Event()

    async def one() -> object:
        await start.wait()  # all 50 are parked here, then race at once
        try:
            return await limiter.admit(identity)
        except RateLimited as error:
            return error

    tasks = [asyncio.create_task(one()) for _ in range(n)]
    await asyncio.sleep(0)
    start.set()
    return await asyncio.gather(*tasks)


async def test_burst_of_50_admits_exactly_requests_per_minute() -> None:
    limiter = make(requests_per_minute=5)
    results = await burst(limiter, limiter.identity("203.0.113.7"), 50)
    admitted = [r for r in results if not isinstance(r, RateLimited)]
    assert len(admitted) == 5
    assert all(r.code == "requests_per_minute_exceeded"
               for r in results if isinstance(r, RateLimited))


async def test_burst_of_50_admits_exactly_concurrent_streams_while_held() -> None:
    limiter = make(concurrent_streams=2)
    me = limiter.identity("203.0.113.7")
    results = await burst(limiter, me, 50)
    admitted = [r for r in results if not isinstance(r, RateLimited)]
    assert len(admitted) == 2
    # Slots stay taken until released, then exactly that many more get in.
    assert len([r for r in await burst(limiter, me, 50)
                if not isinstance(r, RateLimited)]) == 0
    await admitted[0].release(1)  # type: ignore[union-attr]
    again = [r for r in await burst(limiter, me, 50) if not isinstance(r, RateLimited)]
    assert len(again) == 1


async def test_streams_released_in_finally_on_cancellation() -> None:
    limiter = make(concurrent_streams=1)
    me = limiter.identity("203.0.113.7")
    streaming = asyncio.Event()

    async def handler() -> None:
        admission = await limiter.admit(me)
        try:
            streaming.set()
            await asyncio.sleep(3600)  # a long answer...
        finally:
            await admission.release(7)

    task = asyncio.create_task(handler())
    await streaming.wait()
    await refused(limiter, me)
    task.cancel()  # ...cut off by a client disconnect
    with pytest.raises(asyncio.CancelledError):
        await task
    await use(limiter, me)


async def test_reconfigure_applies_new_limits_and_keeps_usage() -> None:
    from privatai.config import WebChatConfig
    from privatai.errors import RateLimited
    from privatai.limits.webchat import WebChatLimiter

    now = [1000.0]
    limiter = WebChatLimiter(WebChatConfig(requests_per_minute=1, concurrent_streams=5), clock=lambda: now[0])
    client = limiter.identity("203.0.113.9")
    await use(limiter, client, 10)
    with pytest.raises(RateLimited):
        await limiter.admit(client)
    limiter.reconfigure(WebChatConfig(requests_per_minute=3, concurrent_streams=5))
    await use(limiter, client, 10)
    await use(limiter, client, 10)
    with pytest.raises(RateLimited):
        await limiter.admit(client)  # the first request still counts in this minute
