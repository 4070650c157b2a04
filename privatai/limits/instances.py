"""Putting the shared state together for an app: Redis when ``state.redis_url`` is set.

Kept apart from :mod:`privatai.limits.redis_link` so that an app without
Redis never imports redis-py.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from privatai.config import Config
from privatai.limits.state_config import require_secrets

if TYPE_CHECKING:
    from privatai.limits.keyrate import KeyRates
    from privatai.limits.redis_link import RedisLink
    from privatai.limits.shared import LimitState
    from privatai.ops.runtime import RuntimeDir
    from privatai.plans.quota import LoadMonth, Quotas


def redis_link(config: Config) -> RedisLink | None:
    """The app's Redis link (not yet connected), or None; a ConfigError if a secret is missing."""
    if not config.state.shared:
        return None
    require_secrets(config.source, config.state)
    from privatai.limits.redis_link import RedisLink
    return RedisLink(config.state)


def web_chat_state(link: RedisLink | None) -> LimitState | None:
    """Where the web chat counts: Redis (failing closed without it), or None for the default."""
    if link is None:
        return None
    from privatai.limits.redis_state import RedisLimitState
    return RedisLimitState(link)


def key_rates(link: RedisLink | None, runtime: RuntimeDir | None) -> KeyRates | None:
    """Where per-key rates count: Redis (this instance's buckets while it is
    down), else the workers' shared file, else None for this process's memory."""
    if link is not None:
        from privatai.limits.keyrate_redis import FallbackKeyRates, RedisKeyRates
        return FallbackKeyRates(RedisKeyRates(link))
    if runtime is not None:
        from privatai.limits.keyrate_sqlite import SqliteKeyRates
        return SqliteKeyRates(runtime.keyrates_file)
    return None


def quotas(link: RedisLink | None, runtime: RuntimeDir | None, load: LoadMonth) -> Quotas:
    """Where monthly quotas count: Redis (this instance's ledger while it is
    down), else the workers' shared file, else this process's memory."""
    from privatai.plans.quota import QuotaLedger
    if link is not None:
        from privatai.limits.quota_redis import FallbackQuotas, RedisQuotas
        return FallbackQuotas(RedisQuotas(link, load), QuotaLedger(load))
    if runtime is not None:
        from privatai.limits.quota_sqlite import SqliteQuotas
        return SqliteQuotas(runtime.quotas_file, load)
    return QuotaLedger(load)
