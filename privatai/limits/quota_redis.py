"""Monthly quotas in Redis, shared by every instance: a :class:`~privatai.plans.quota.Quotas`.

Each decision is one Lua script, which Redis runs atomically, so a burst
spread over any number of instances reserves against one count. Per account
and UTC month one hash, ``<prefix>:quota:{account id}:YYYY-MM``, with the
month's used (``u``) and reserved (``r``) tokens; it expires a day after its
month ends (requests admitted on the last evening still settle in it). Only
the account's database id is in Redis: never a key, never content.

While Redis cannot be asked, :class:`FallbackQuotas` answers from this
instance's own ledger (loaded from the store), so the API keeps serving; each
instance then enforces the quota against what it saw, until Redis is back.
"""
from __future__ import annotations

import calendar
from datetime import datetime, timedelta, timezone

from redis.exceptions import RedisError

from privatai.errors import LimitsUnavailable
from privatai.limits.redis_link import RedisLink
from privatai.plans.quota import Hold, LoadMonth, QuotaLedger, SharedQuotas, Today, utc_today

# KEYS[1]: the month's hash. ARGV: quota, tokens. Returns {-1, 0} when absent.
_TAKE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {-1, 0} end
local used = tonumber(redis.call('HGET', KEYS[1], 'u') or '0')
local reserved = tonumber(redis.call('HGET', KEYS[1], 'r') or '0')
if used + reserved >= tonumber(ARGV[1]) then return {0, reserved} end
redis.call('HINCRBY', KEYS[1], 'r', ARGV[2])
return {1, reserved}
"""

# KEYS[1]: the month's hash. ARGV: used, expiry (Unix seconds). Set if absent.
_SEED = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'u', ARGV[1], 'r', 0)
redis.call('EXPIREAT', KEYS[1], ARGV[2])
return 1
"""

# KEYS[1]: the month the request was admitted in; KEYS[2]: the month now. ARGV: reserved, used.
_GIVE_BACK = """
if redis.call('EXISTS', KEYS[1]) == 1 and tonumber(ARGV[1]) ~= 0 then
  if redis.call('HINCRBY', KEYS[1], 'r', -tonumber(ARGV[1])) < 0 then redis.call('HSET', KEYS[1], 'r', 0) end
end
if redis.call('EXISTS', KEYS[2]) == 1 and tonumber(ARGV[2]) ~= 0 then
  redis.call('HINCRBY', KEYS[2], 'u', ARGV[2])
end
return 1
"""

UNAVAILABLE = "monthly quotas: Redis cannot be asked"


def expiry(month: str) -> int:
    """A day after the month ends, in Unix seconds."""
    year, number = int(month[:4]), int(month[5:7])
    last = calendar.monthrange(year, number)[1]
    end = datetime(year, number, last, tzinfo=timezone.utc) + timedelta(days=2)
    return int(end.timestamp())


class RedisQuotas(SharedQuotas):
    """Exact quotas across instances; raises LimitsUnavailable while Redis is down."""

    def __init__(self, link: RedisLink, load: LoadMonth, today: Today = utc_today) -> None:
        super().__init__(load, today)
        self._link = link
        self._take = link.client.register_script(_TAKE)
        self._seed = link.client.register_script(_SEED)
        self._give_back = link.client.register_script(_GIVE_BACK)

    def available(self) -> bool:
        return self._link.available()

    def _key(self, account_id: int, month: str) -> str:
        # The hash tag puts an account's months in one cluster slot (give-back touches two).
        return f"{self._link.prefix}:quota:{{{int(account_id)}}}:{month}"

    async def take(self, account_id: int, month: str, quota: int, tokens: int) -> tuple[bool, int] | None:
        if not self._link.available():
            raise LimitsUnavailable(UNAVAILABLE)
        try:
            admitted, reserved = await self._take(keys=[self._key(account_id, month)],
                                                  args=[quota, max(0, int(tokens))])
        except (RedisError, OSError) as exc:
            self._link.failed(exc)
            raise LimitsUnavailable(UNAVAILABLE) from None
        return None if admitted < 0 else (bool(admitted), int(reserved))

    async def seed(self, account_id: int, month: str, used: int) -> None:
        try:
            await self._seed(keys=[self._key(account_id, month)], args=[int(used), expiry(month)])
        except (RedisError, OSError) as exc:
            self._link.failed(exc)
            raise LimitsUnavailable(UNAVAILABLE) from None

    async def give_back(self, account_id: int, held: str, current: str, reserved: int, used: int) -> None:
        try:
            await self._give_back(keys=[self._key(account_id, held), self._key(account_id, current)],
                                  args=[int(reserved), int(used)])
        except (RedisError, OSError) as exc:
            # Lost from the count (the store has the usage; a count seeded
            # after Redis lost its data starts from it again).
            self._link.failed(exc)


class FallbackQuotas:
    """Redis's count while it answers, this instance's ledger while it does not.

    A request admitted in memory ends its reservation there; its usage is
    also added to Redis's count if Redis answers again by then (else a count
    seeded later finds it in the store). Usage settled in Redis is added to
    the ledger too (when this instance loaded one), so an outage starts from
    what every instance served, not from what this one saw before.
    """

    def __init__(self, shared: RedisQuotas, local: QuotaLedger) -> None:
        self._shared = shared
        self._local = local

    async def reserve(self, account_id: int, quota: int, tokens: int, dashboard: str | None) -> Hold:
        try:
            return await self._shared.reserve(account_id, quota, tokens, dashboard)
        except LimitsUnavailable:
            return await self._local.reserve(account_id, quota, tokens, dashboard)

    async def settle(self, account_id: int, hold: Hold, reserved: int, used: int) -> None:
        if hold.local:
            await self._local.settle(account_id, hold, reserved, used)
            if self._shared.available():
                await self._shared.settle(account_id, hold, 0, used)
        else:
            # The ledger (if this instance loaded one) stays current for the next outage.
            await self._local.settle(account_id, Hold(hold.month, local=True), 0, used)
            await self._shared.settle(account_id, hold, reserved, used)
