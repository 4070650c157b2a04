"""The web-chat counters in Redis, shared by every instance: a :class:`LimitState`.

Each decision is one Lua script, which Redis runs atomically: it checks the
three rules and takes the request and the stream slot in one step, so a
burst spread over any number of instances admits exactly what the rules allow.
The scripts read Redis's own clock (``TIME``), not the instances' clocks,
which may disagree by more than the precision a 60 s window needs; the
``now`` the Protocol passes is used only by the in-memory fallback.

Per identity (a keyed hash, never an address) three keys, all with a TTL so
an identity that goes quiet leaves nothing behind:

* ``<prefix>:lim:{id}:m`` a sorted set of admission times: the sliding-window
  log of :mod:`privatai.limits.shared` (exact, with an exact Retry-After);
* ``<prefix>:lim:{id}:d`` a hash with the day window's start and the tokens used;
* ``<prefix>:lim:{id}:a`` the streams in flight. Its TTL (``slot_ttl``,
  refreshed on each admission) frees the slots of an instance that died in
  the middle of a stream, which could never release them.

The ``{id}`` hash tag keeps an identity's keys in one Redis Cluster slot.

When Redis cannot be asked, :class:`RedisLimitState` raises
:class:`~privatai.errors.LimitsUnavailable` (the web chat fails closed: a
public, keyless page must not become unlimited), and
:class:`FallbackLimitState` answers from per-instance counters instead (for
limits on paying API keys, which must keep working).
"""
from __future__ import annotations

import secrets
from collections import Counter

from redis.exceptions import RedisError

from privatai.errors import LimitsUnavailable
from privatai.limits.redis_link import RedisLink
from privatai.limits.shared import (CONCURRENCY_RETRY_AFTER, DAY, MINUTE, LimitRules, LimitState,
                                    MemoryLimitState, Verdict)

# A stream longer than this is not expected (server.response_timeout's default).
DEFAULT_SLOT_TTL = 900

# KEYS: minute log, day hash, active counter.
# ARGV: rpm, tokens per day, concurrent streams, log member, slot TTL, minute, day, concurrency retry.
# Floats go back as strings: Redis turns a Lua number into an integer reply.
_ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rpm, tpd, streams = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local minute, day = tonumber(ARGV[6]), tonumber(ARGV[7])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - minute)
local count = redis.call('ZCARD', KEYS[1])
local reset = 0
if count > 0 then
  reset = tonumber(redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')[2]) + minute - now
end
local remaining = rpm - count
local active = tonumber(redis.call('GET', KEYS[3]) or '0')
if active >= streams then
  return {0, 'concurrent_streams', ARGV[8], remaining, tostring(reset)}
end
if remaining <= 0 then
  return {0, 'requests_per_minute', tostring(reset), 0, tostring(reset)}
end
local start = tonumber(redis.call('HGET', KEYS[2], 'start') or '-1')
local used = tonumber(redis.call('HGET', KEYS[2], 'used') or '0')
if start < 0 or now - start >= day then
  start, used = now, 0
  redis.call('HSET', KEYS[2], 'start', tostring(now), 'used', 0)
  redis.call('EXPIRE', KEYS[2], math.ceil(day) + 60)
end
if used >= tpd then
  return {0, 'tokens_per_day', tostring(start + day - now), remaining, tostring(reset)}
end
redis.call('ZADD', KEYS[1], now, ARGV[4])
redis.call('EXPIRE', KEYS[1], math.ceil(minute) + 1)
redis.call('INCR', KEYS[3])
redis.call('EXPIRE', KEYS[3], tonumber(ARGV[5]))
local oldest = tonumber(redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')[2])
return {1, '', '0', remaining - 1, tostring(oldest + minute - now)}
"""

# KEYS: day hash, active counter. ARGV: tokens, day.
_RELEASE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local day = tonumber(ARGV[2])
if tonumber(redis.call('DECR', KEYS[2])) <= 0 then redis.call('DEL', KEYS[2]) end
local start = tonumber(redis.call('HGET', KEYS[1], 'start') or '-1')
if start < 0 or now - start >= day then
  redis.call('HSET', KEYS[1], 'start', tostring(now), 'used', 0)
  redis.call('EXPIRE', KEYS[1], math.ceil(day) + 60)
end
local tokens = tonumber(ARGV[1])
if tokens > 0 then redis.call('HINCRBY', KEYS[1], 'used', tokens) end
return 1
"""

UNAVAILABLE = ("The web chat is unavailable right now: its shared limits cannot be checked. "
               "Please try again in a minute.")


class RedisLimitState:
    """Exact limits across instances; raises LimitsUnavailable while Redis is down."""

    def __init__(self, link: RedisLink, *, slot_ttl: int = DEFAULT_SLOT_TTL) -> None:
        self._link = link
        self._slot_ttl = slot_ttl
        self._admit = link.client.register_script(_ADMIT)
        self._release = link.client.register_script(_RELEASE)

    def _keys(self, identity: str) -> tuple[str, str, str]:
        base = f"{self._link.prefix}:lim:{{{identity}}}"
        return f"{base}:m", f"{base}:d", f"{base}:a"

    async def admit(self, identity: str, rules: LimitRules, now: float) -> Verdict:
        if not self._link.available():
            raise LimitsUnavailable(UNAVAILABLE)
        minute_log, day, active = self._keys(identity)
        try:
            reply = await self._admit(
                keys=[minute_log, day, active],
                args=[rules.rpm, rules.tokens_per_day, rules.concurrent_streams, secrets.token_hex(8),
                      self._slot_ttl, MINUTE, DAY, CONCURRENCY_RETRY_AFTER])
        except (RedisError, OSError) as exc:
            self._link.failed(exc)
            raise LimitsUnavailable(UNAVAILABLE) from None
        admitted, rule, retry_after, remaining, reset = reply
        return Verdict(bool(admitted), rule.decode() or None, max(0.0, float(retry_after)), rules.rpm,
                       max(0, int(remaining)), max(0.0, float(reset)))

    async def release(self, identity: str, tokens: int, now: float) -> None:
        _minute_log, day, active = self._keys(identity)
        try:
            await self._release(keys=[day, active], args=[max(0, int(tokens)), DAY])
        except (RedisError, OSError) as exc:
            # The slot expires with its TTL; the tokens are not charged (the
            # visitor gets a little more than the budget, never less).
            self._link.failed(exc)

    async def problem(self) -> str | None:
        return self._link.problem()


class FallbackLimitState:
    """Shared limits while Redis answers, this instance's own counters while it
    does not: for limits that must not take the API down with Redis.

    A request is released where it was admitted, so a slot taken in memory is
    never given back in Redis (where it would free somebody else's).
    """

    def __init__(self, shared: RedisLimitState, local: LimitState | None = None) -> None:
        self._shared = shared
        self._local = local if local is not None else MemoryLimitState()
        self._local_active: Counter[str] = Counter()

    async def admit(self, identity: str, rules: LimitRules, now: float) -> Verdict:
        try:
            return await self._shared.admit(identity, rules, now)
        except LimitsUnavailable:
            verdict = await self._local.admit(identity, rules, now)
            if verdict.admitted:
                self._local_active[identity] += 1
            return verdict

    async def release(self, identity: str, tokens: int, now: float) -> None:
        if self._local_active[identity] > 0:
            self._local_active[identity] -= 1
            if not self._local_active[identity]:
                del self._local_active[identity]
            await self._local.release(identity, tokens, now)
        else:
            await self._shared.release(identity, tokens, now)

    async def problem(self) -> str | None:
        return await self._shared.problem()
