"""The one connection an instance keeps to Redis, and whether Redis is there.

Every user of Redis (the shared limits, the revocation channel) goes through
a :class:`RedisLink`, so "Redis is down" is known in one place: the first
failure is logged once as a warning and the recovery once as info, never a
line per request; while Redis is down, callers are told at once
(:meth:`RedisLink.available`) instead of each waiting for a connect timeout,
and a background ping finds out when it is back.

The pub/sub subscription is kept up by the same task: after any outage the
subscriber's callback runs once, because messages published meanwhile were
lost (revocations are then picked up by clearing the whole cache).

Nothing about requests goes to Redis: keyed hashes, counters and content-free
notices only.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from privatai.limits.state_config import StateConfig
from privatai.ops.logs import describe_error

log = logging.getLogger("privatai.state.redis")

# Short: a request that asks Redis while it stalls waits at most this long.
SOCKET_TIMEOUT = 0.5
# How often a link that is down tries again, and a link that is up checks.
PING_INTERVAL = 1.0
AUTH_CHANNEL = "auth"


class RedisLink:
    """A Redis client with an up/down verdict and an optional subscription."""

    def __init__(self, config: StateConfig, *, ping_interval: float = PING_INTERVAL) -> None:
        assert config.redis_url is not None
        self.prefix = config.key_prefix
        self.client: aioredis.Redis = aioredis.Redis.from_url(
            config.redis_url, password=config.password(), socket_timeout=SOCKET_TIMEOUT,
            socket_connect_timeout=SOCKET_TIMEOUT, retry_on_timeout=False, decode_responses=False)
        self._ping_interval = ping_interval
        self._up = False
        self._reported_down = False
        self._tasks: list[asyncio.Task[None]] = []
        self._on_message: Callable[[], Awaitable[None] | None] | None = None

    def channel(self, name: str) -> str:
        return f"{self.prefix}:{name}"

    # -- the verdict ----------------------------------------------------------

    def available(self) -> bool:
        return self._up

    def problem(self) -> str | None:
        return None if self._up else "Redis unreachable: limits are per instance, the web chat is closed"

    def failed(self, exc: BaseException) -> None:
        """Note a failed call: logged once per outage, by class only."""
        self._up = False
        if not self._reported_down:
            self._reported_down = True
            log.warning("Redis unreachable (%s): API limits are per instance and the web chat refuses "
                        "requests until it is back", describe_error(exc))

    def _recovered(self) -> None:
        if not self._up and self._reported_down:
            log.info("Redis reachable again: limits are shared across instances")
        self._up = True
        self._reported_down = False

    # -- lifecycle ------------------------------------------------------------

    async def start(self, on_message: Callable[[], Awaitable[None] | None] | None = None) -> None:
        """Check Redis once (a failure is logged, not fatal: the API serves on)
        and keep checking; ``on_message`` runs for every notice on the auth
        channel and once after each reconnection."""
        self._on_message = on_message
        await self._ping()
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._monitor(), name="privatai-redis-monitor"))
        if on_message is not None:
            self._tasks.append(loop.create_task(self._subscribe(), name="privatai-redis-subscriber"))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        await self.client.aclose()

    async def _ping(self) -> bool:
        try:
            await self.client.ping()
        except (RedisError, OSError) as exc:
            self.failed(exc)
            return False
        self._recovered()
        return True

    async def _monitor(self) -> None:
        while True:
            await asyncio.sleep(self._ping_interval)
            await self._ping()

    # -- pub/sub --------------------------------------------------------------

    async def publish(self, name: str, message: str) -> bool:
        """Publish a content-free notice; False (logged by class) if Redis is down."""
        try:
            await self.client.publish(self.channel(name), message)
        except (RedisError, OSError) as exc:
            self.failed(exc)
            return False
        return True

    async def _notify(self) -> None:
        if self._on_message is not None:
            result = self._on_message()
            if result is not None:
                await result

    async def _subscribe(self) -> None:
        channel = self.channel(AUTH_CHANNEL)
        while True:
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(channel)
                # Whatever was published while we were not listening is lost.
                await self._notify()
                while True:
                    # Without a timeout: a subscriber waits for messages, and
                    # the monitor's ping notices a dead Redis.
                    message = await pubsub.get_message(timeout=self._ping_interval)
                    if message is not None and message.get("type") == "message":
                        await self._notify()
                    elif not self._up:
                        break  # the monitor saw Redis go: subscribe anew once it is back
            except (RedisError, OSError) as exc:
                self.failed(exc)
            finally:
                try:
                    await pubsub.aclose()
                except (RedisError, OSError):
                    pass
            while not self._up:
                await asyncio.sleep(self._ping_interval / 4)


async def announce_auth_change(config: StateConfig) -> bool:
    """Tell every instance to drop its cached authentication outcomes (a key
    was revoked, an account suspended): one content-free notice. False if
    Redis could not be reached (the instances' polling still catches up)."""
    if not config.shared:
        return True
    link = RedisLink(config)
    try:
        return await link.publish(AUTH_CHANNEL, "changed")
    finally:
        await link.client.aclose()
