"""Usage as the dashboard and the operator's page show it: per day, key and
model for one account, and totals per account."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from sqlalchemy import BigInteger, cast, func, select

from privatai.store.connection import Database, Queries
from privatai.store.schema import api_keys, usage_daily


@dataclass(frozen=True, slots=True)
class DailyUsage:
    day: str
    key_prefix: str
    key_label: str
    model: str
    requests: int
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True, slots=True)
class Totals:
    requests: int
    prompt_tokens: int
    completion_tokens: int


def _sum(column: object) -> object:
    return cast(func.sum(column), BigInteger)


class AccountUsage(Queries):
    def __init__(self, db: Database) -> None:
        super().__init__(db)

    async def daily(self, account_id: int, since: date | None = None) -> list[DailyUsage]:
        u, k = usage_daily.c, api_keys.c
        statement = (select(u.day, k.prefix, k.label, u.model, u.requests, u.prompt_tokens, u.completion_tokens)
                     .join_from(usage_daily, api_keys).where(k.account_id == account_id)
                     .order_by(u.day, k.id, u.model))
        if since is not None:
            statement = statement.where(u.day >= since.isoformat())
        return [DailyUsage(*row) for row in await self._rows(statement)]

    async def totals(self, since: date | None = None) -> dict[int, Totals]:
        """Sums per account id (accounts without usage are absent)."""
        u, k = usage_daily.c, api_keys.c
        statement = (select(k.account_id, _sum(u.requests), _sum(u.prompt_tokens), _sum(u.completion_tokens))
                     .join_from(usage_daily, api_keys).group_by(k.account_id))
        if since is not None:
            statement = statement.where(u.day >= since.isoformat())
        return {row[0]: Totals(*row[1:]) for row in await self._rows(statement)}
