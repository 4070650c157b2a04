"""Monthly token quotas per account: exact against ``/usage``, bounded under concurrency.

The count of an account and UTC month starts from the store's sums (the
same table ``/usage`` reads) and then adds every request's settled usage,
the very numbers recorded for it. A request is admitted while the month's
used tokens plus the reservations of the account's requests in flight are
below the quota; it reserves its estimate (prompt tokens as counted here,
plus ``max_tokens`` when it sets one) and settles with its real usage. So the
quota is over-run only by requests already admitted: at most by the last
admitted request's reservation plus what requests in flight use beyond their
estimate (their completion, when they set no ``max_tokens``).

:class:`Quotas` is the interface the plan gate uses, built like the per-key
rates (:mod:`privatai.limits.keyrate`): :class:`QuotaLedger` keeps the months
in this process's memory (one gateway process; it suspends only to load a
month from the store), :mod:`privatai.limits.quota_sqlite` in a file the
workers of one machine share, :mod:`privatai.limits.quota_redis` in Redis for
several instances. A shared count is seeded from the store once, by whichever
process needs it first (set-if-absent, so two seeding at once agree), and
from then on every process reserves and settles in it.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import date
from typing import Awaitable, Callable, Protocol

from privatai.errors import LimitsUnavailable, PermissionDenied
from privatai.plans.status import dashboard_hint
from privatai.store.records import utc_now

# (account id, first day of the month) -> tokens used in that month according to the store.
LoadMonth = Callable[[int, date], Awaitable[int]]
Today = Callable[[], date]


def utc_today() -> date:
    return utc_now().date()


@dataclass(frozen=True, slots=True)
class Hold:
    """An admitted request's reservation: the month it was taken in, and where
    (``local``: this process's ledger, while a shared one could not be asked)."""

    month: date
    local: bool = False


class Quotas(Protocol):
    async def reserve(self, account_id: int, quota: int, tokens: int, dashboard: str | None) -> Hold:
        """Reserve ``tokens`` of this month's ``quota``, or raise 403
        ``quota_exceeded`` (and reserve nothing) when used + reserved >= quota."""
        ...

    async def settle(self, account_id: int, hold: Hold, reserved: int, used: int) -> None:
        """The request's reservation ends and its real usage counts. Usage is
        recorded on the day it settles, so it counts in the current month, also
        when the request was admitted in the month before."""
        ...


@dataclass(slots=True)
class _Month:
    start: date
    used: int = 0
    reserved: int = 0


def month_start(today: date) -> date:
    return today.replace(day=1)


class QuotaExceeded(PermissionDenied):
    code = "quota_exceeded"


def exceeded(quota: int, in_flight: bool, dashboard: str | None) -> QuotaExceeded:
    return QuotaExceeded(
        f"This account has used its monthly quota of {quota:,} tokens"
        f"{' (with the requests still running)' if in_flight else ''}; it renews on the "
        f"first of next month (UTC).{dashboard_hint(dashboard)}")


class QuotaLedger:
    """The months in this process's memory: exact for one gateway process."""

    def __init__(self, load: LoadMonth, today: Today = utc_today) -> None:
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

    async def reserve(self, account_id: int, quota: int, tokens: int, dashboard: str | None) -> Hold:
        month = await self._month(account_id)
        # No await from here on: concurrent requests cannot interleave check and take.
        if month.used + month.reserved >= quota:
            raise exceeded(quota, bool(month.reserved), dashboard)
        month.reserved += tokens
        return Hold(month.start, local=True)

    async def settle(self, account_id: int, hold: Hold, reserved: int, used: int) -> None:
        month = self._months.get(account_id)
        if month is None:
            return
        if month.start == hold.month:
            month.reserved -= reserved
        month.used += used


class SharedQuotas:
    """The seeding every shared count does: a count that does not exist yet
    (first request of the month, or a Redis that lost its data) is loaded from
    the store and set if still absent, then the reservation is tried again."""

    def __init__(self, load: LoadMonth, today: Today = utc_today) -> None:
        self._load = load
        self._today = today
        self._seeding: dict[tuple[int, str], asyncio.Future[None]] = {}

    async def take(self, account_id: int, month: str, quota: int, tokens: int) -> tuple[bool, int] | None:
        """Check and reserve atomically: (admitted, tokens reserved before), or None if no count exists."""
        raise NotImplementedError

    async def seed(self, account_id: int, month: str, used: int) -> None:
        """Create the count with ``used`` tokens unless it exists."""
        raise NotImplementedError

    async def give_back(self, account_id: int, held: str, current: str, reserved: int, used: int) -> None:
        """End a reservation in month ``held`` and add ``used`` to month ``current`` (where they exist)."""
        raise NotImplementedError

    async def reserve(self, account_id: int, quota: int, tokens: int, dashboard: str | None) -> Hold:
        start = month_start(self._today())
        month = month_key(start)
        outcome = await self.take(account_id, month, quota, tokens)
        if outcome is None:
            await self._seeded(account_id, start, month)
            outcome = await self.take(account_id, month, quota, tokens)
            if outcome is None:  # gone again at once (a Redis flushed in between)
                raise LimitsUnavailable("monthly quotas: the shared count could not be seeded")
        admitted, in_flight = outcome
        if not admitted:
            raise exceeded(quota, in_flight > 0, dashboard)
        return Hold(start)

    async def _seeded(self, account_id: int, start: date, month: str) -> None:
        # The concurrent first requests of an account in this process wait for one load.
        pending = self._seeding.get((account_id, month))
        if pending is None:
            pending = asyncio.ensure_future(self._load_and_seed(account_id, start, month))
            self._seeding[(account_id, month)] = pending
            pending.add_done_callback(lambda _: self._seeding.pop((account_id, month), None))
        await asyncio.shield(pending)

    async def _load_and_seed(self, account_id: int, start: date, month: str) -> None:
        await self.seed(account_id, month, await self._load(account_id, start))

    async def settle(self, account_id: int, hold: Hold, reserved: int, used: int) -> None:
        await self.give_back(account_id, month_key(hold.month), month_key(month_start(self._today())),
                             reserved, used)


def month_key(start: date) -> str:
    """A month as shared counts name it: ``2026-11``."""
    return start.strftime("%Y-%m")
