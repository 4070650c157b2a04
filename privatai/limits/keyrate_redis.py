"""Per-key rates in Redis, shared by every instance: a :class:`~privatai.limits.keyrate.KeyRates`.

Each decision is one Lua script, which Redis runs atomically, so a burst
spread over any number of instances admits exactly one allowance. The
scripts use the token-bucket arithmetic of :mod:`privatai.limits.keyrate`
on Redis's own clock (``TIME``), not the instances' clocks.

Per key one hash, ``<prefix>:rate:{key id}``, with each bucket's level and
time (``rl``/``ra`` for requests, ``tl``/``ta`` for tokens). It expires when
its buckets would be full again, so a key that goes quiet leaves nothing
behind (an absent bucket is a full one). Only the key's database id is in
Redis: never the API key, never content.

While Redis cannot be asked, :class:`FallbackKeyRates` answers from this
instance's own buckets, so the API keeps serving (each instance then grants
the key its own allowance, until Redis is back).
"""
from __future__ import annotations

from collections import Counter

from redis.exceptions import RedisError

from privatai.errors import LimitsUnavailable
from privatai.limits.keyrate import KeyLimits, LocalKeyRates, RateView, SharedGiveBacks, refusal, view
from privatai.limits.redis_link import RedisLink

# Shared by both scripts: the levels refilled to Redis's now, and how to store them.
_BUCKETS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local function level(kind, limit)
  local l = tonumber(redis.call('HGET', KEYS[1], kind .. 'l') or '')
  local at = tonumber(redis.call('HGET', KEYS[1], kind .. 'a') or '')
  if l == nil or at == nil then return limit end
  return math.min(limit, l + math.max(0, now - at) * limit / 60)
end
local function store(r, rpm, b, tpm)
  local ttl = 1
  if rpm > 0 then
    redis.call('HSET', KEYS[1], 'rl', tostring(r), 'ra', tostring(now))
    ttl = math.max(ttl, (rpm - r) * 60 / rpm)
  end
  if tpm > 0 then
    redis.call('HSET', KEYS[1], 'tl', tostring(b), 'ta', tostring(now))
    ttl = math.max(ttl, (tpm - b) * 60 / tpm)
  end
  redis.call('EXPIRE', KEYS[1], math.ceil(ttl) + 1)
end
local rpm, tpm = tonumber(ARGV[1]), tonumber(ARGV[2])
local r, b = 0, 0
if rpm > 0 then r = level('r', rpm) end
if tpm > 0 then b = level('t', tpm) end
"""

# ARGV: rpm (0: none), tpm (0: none), tokens. Floats go back as strings:
# Redis turns a Lua number into an integer reply.
_ACQUIRE = _BUCKETS + """
local tokens = tonumber(ARGV[3])
local wait, code = 0, ''
if rpm > 0 and r < 1 then wait, code = (1 - r) * 60 / rpm, 'requests_per_minute_exceeded' end
if tpm > 0 then
  local need = math.min(tokens, tpm)
  if b < need and (need - b) * 60 / tpm > wait then
    wait, code = (need - b) * 60 / tpm, 'tokens_per_minute_exceeded'
  end
end
if wait > 0 then return {0, code, tostring(wait), tostring(r), tostring(b)} end
if rpm > 0 then r = r - 1 end
if tpm > 0 then b = b - tokens end
store(r, rpm, b, tpm)
return {1, '', '0', tostring(r), tostring(b)}
"""

# ARGV: rpm, tpm, requests back, tokens back (negative: taken).
_GIVE_BACK = _BUCKETS + """
if rpm > 0 then r = math.min(rpm, r + tonumber(ARGV[3])) end
if tpm > 0 then b = math.min(tpm, b + tonumber(ARGV[4])) end
store(r, rpm, b, tpm)
return 1
"""

UNAVAILABLE = "per-key rate limits: Redis cannot be asked"


class RedisKeyRates(SharedGiveBacks):
    """Exact rates across instances; raises LimitsUnavailable while Redis is down."""

    def __init__(self, link: RedisLink) -> None:
        self._link = link
        self._acquire = link.client.register_script(_ACQUIRE)
        self._give_back = link.client.register_script(_GIVE_BACK)

    def _key(self, key_id: int) -> str:
        return f"{self._link.prefix}:rate:{{{int(key_id)}}}"

    async def acquire(self, key_id: int, limits: KeyLimits, tokens: int) -> RateView:
        if not self._link.available():
            raise LimitsUnavailable(UNAVAILABLE)
        try:
            admitted, code, wait, requests, budget = await self._acquire(
                keys=[self._key(key_id)],
                args=[limits.requests_per_minute or 0, limits.tokens_per_minute or 0, max(0, int(tokens))])
        except (RedisError, OSError) as exc:
            self._link.failed(exc)
            raise LimitsUnavailable(UNAVAILABLE) from None
        seen = view(limits, float(requests), float(budget))
        if not admitted:
            raise refusal(float(wait), code.decode(), seen)
        return seen

    async def put_back(self, key_id: int, limits: KeyLimits, requests: int, tokens: int) -> None:
        try:
            await self._give_back(keys=[self._key(key_id)],
                                  args=[limits.requests_per_minute or 0, limits.tokens_per_minute or 0,
                                        requests, tokens])
        except (RedisError, OSError) as exc:
            # Lost: the bucket refills within a minute (the key gets a little
            # less for that minute, never more than its allowance).
            self._link.failed(exc)


class FallbackKeyRates:
    """Redis's buckets while it answers, this instance's own while it does not.

    A request is settled where it was admitted, so tokens taken in memory are
    never given back in Redis (where they would raise the shared allowance).
    """

    def __init__(self, shared: RedisKeyRates, local: LocalKeyRates | None = None) -> None:
        self._shared = shared
        self._local = local if local is not None else LocalKeyRates()
        self._held_locally: Counter[int] = Counter()

    async def acquire(self, key_id: int, limits: KeyLimits, tokens: int) -> RateView:
        try:
            return await self._shared.acquire(key_id, limits, tokens)
        except LimitsUnavailable:
            seen = await self._local.acquire(key_id, limits, tokens)
            self._held_locally[key_id] += 1
            return seen

    def _was_local(self, key_id: int) -> bool:
        if self._held_locally[key_id] <= 0:
            self._held_locally.pop(key_id, None)
            return False
        self._held_locally[key_id] -= 1
        if not self._held_locally[key_id]:
            del self._held_locally[key_id]
        return True

    async def settle(self, key_id: int, limits: KeyLimits, reserved: int, used: int) -> None:
        if self._was_local(key_id):
            await self._local.settle(key_id, limits, reserved, used)
        else:
            await self._shared.settle(key_id, limits, reserved, used)

    async def cancel(self, key_id: int, limits: KeyLimits, reserved: int) -> None:
        if self._was_local(key_id):
            await self._local.cancel(key_id, limits, reserved)
        else:
            await self._shared.cancel(key_id, limits, reserved)
