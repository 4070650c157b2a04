"""Monthly token quotas per account: exact against ``/usage``, bounded under concurrency.

The ledger of an account and UTC month starts from the store's sums (the
same table ``/usage`` reads) and then adds every request's settled usage,
the very numbers recorded for it. A request is admitted while the month's
used tokens plus the reservations of the account's requests in flight are
below the quota; it reserves its estimate (prompt tokens as counted here,
plus ``max_tokens`` when it sets one) and settles with its real usage. So the
quota is over-run only by requests already admitted: at most by the last
admitted request's reservation plus what requests in flight use beyond their
estimate (their completion, when they set no ``max_tokens``).

In this process's memory, like the usage batches: several gateway processes
each add their own usage to the month they loaded (see docs/plans.md).
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import date
from typing import Awaitable, Callable

from privatai.errors import PermissionDenied
from privatai.plans.status import dashboard_hint
from privatai.store.records import utc_now

# (account id, first day of the month) -> tokens used in that month according to the store.
LoadMonth = Callable[[int, date], Awaitable[int]]


@dataclass(slots=True)
class _Month:
    start: date
    used: int = 0
    reserved: int = 0


def month_start(today: date) -> date:
    return today.replace(day=1)


class QuotaExceeded(PermissionDenied):
    code = "quota_exceeded"


class QuotaLedger:
    def __init__(self, load: LoadMonth, today: Callable[[], date] = lambda: utc_now().date()) -> None:
        self._load = load
        self._today = today
        self._months: dict[int, _Month] = {}
        self._loading: dict[tuple[int, date], asyncio.Future[_Month]] = {}

    async def _month(self, account_id: int) -> _Month:
        start = month_start(self._today())
        month = self._months.get(account_id)
        if month is not None and month.start == start:
            return month
        # Every concurrent first request of the account waits for one load.
        pending = self._loading.get((account_id, start))
        if pending is None:
            pending = self._loading[(account_id, start)] = asyncio.ensure_future(self._fresh(account_id, start))
            pending.add_done_callback(lambda _: self._loading.pop((account_id, start), None))
        return await asyncio.shield(pending)

    async def _fresh(self, account_id: int, start: date) -> _Month:
        used = await self._load(account_id, start)
        month = self._months[account_id] = _Month(start, used=used)
        return month

    async def reserve(self, account_id: int, quota: int, tokens: int, dashboard: str | None) -> date:
        """Reserve ``tokens`` of this month's ``quota``, or raise 403 ``quota_exceeded``.
        Returns the month to settle in."""
        month = await self._month(account_id)
        if month.used + month.reserved >= quota:
            raise QuotaExceeded(
                f"This account has used its monthly quota of {quota:,} tokens"
                f"{' (with the requests still running)' if month.reserved else ''}; it renews on the "
                f"first of next month (UTC).{dashboard_hint(dashboard)}")
        month.reserved += tokens
        return month.start

    def settle(self, account_id: int, start: date, reserved: int, used: int) -> None:
        """The request's reservation ends and its usage counts. Usage is recorded
        on the day it settles, so it counts in the month the ledger holds now,
        also when the request was admitted in the month before."""
        month = self._months.get(account_id)
        if month is None:
            return
        if month.start == start:
            month.reserved -= reserved
        month.used += used
