"""Usage metering off the request path.

:meth:`UsageRecorder.record` only adds to an in-memory aggregate keyed by
(key, UTC day, model); a background task hands the aggregate to a
:class:`UsageSink` (the store) every ``flush_interval`` seconds, to be written
in one transaction. The recorder knows the sink only by that narrow interface,
so the store does not depend on it and can be used without it (the CLI). Counts taken out for a write go
back into the aggregate if the write fails, and writes run as tasks that a
cancelled caller cannot interrupt, so a count is never lost or written twice.
Only numbers are kept: no prompt, no client address, no per-request rows.

Counts are clamped to ``0..MAX_TOKENS`` on the way in: a backend that reports
a negative or absurd number must neither lower a key's totals nor overflow a
64-bit column, which would fail every later write of the whole batch.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Protocol

from privatai.config import StoreConfig
from privatai.store.records import utc_now

log = logging.getLogger(__name__)

UsageKey = tuple[int, str, str]  # key_id, UTC day (YYYY-MM-DD), model

# Far above any real request (a million-token context is 2**20), far below
# 2**63: even 2**31 requests a day at this size cannot overflow a day's sum.
MAX_TOKENS = 2**31 - 1


def clamp_tokens(value: int) -> int:
    """A reported token count as stored: an int in ``0..MAX_TOKENS``."""
    if not isinstance(value, int):  # a float (or worse) from a careless backend
        try:
            value = int(value)
        except (TypeError, ValueError, OverflowError):
            return 0
    return min(max(value, 0), MAX_TOKENS)


@dataclass(slots=True)
class Counts:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, other: Counts) -> None:
        self.requests += other.requests
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens


@dataclass(slots=True)
class Batch:
    """Counts and last-used times taken out of the aggregate for one write."""

    counts: dict[UsageKey, Counts] = field(default_factory=dict)
    last_used: dict[int, str] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.counts or self.last_used)


class UsageSink(Protocol):
    """Where batches go: the store."""

    async def write_usage(self, batch: Batch) -> list[UsageKey]:
        """Add ``batch`` to the stored aggregates; return the rows refused for
        their values (dropped). Raise, writing nothing, on any other failure."""

    async def prune_usage(self, retention_days: int) -> int:
        """Delete usage of UTC days older than ``retention_days``."""


class UsageRecorder:
    """Aggregates usage in memory and flushes it to a :class:`UsageSink`."""

    def __init__(self, sink: UsageSink, *, flush_interval: float = 1.0,
                 retention_days: int | None = None) -> None:
        self._sink = sink
        self._flush_interval = flush_interval
        self._retention_days = retention_days
        self._pending = Batch()
        self._writes: set[asyncio.Task[None]] = set()
        self._stopping: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._pruned_day: str | None = None

    @classmethod
    def from_config(cls, sink: UsageSink, config: StoreConfig) -> UsageRecorder:
        return cls(sink, flush_interval=config.flush_interval, retention_days=config.usage_retention_days)

    def record(self, key_id: int, model: str, prompt_tokens: int, completion_tokens: int) -> None:
        """Count one finished request of key ``key_id``. Synchronous and cheap: no I/O."""
        prompt, completion = clamp_tokens(prompt_tokens), clamp_tokens(completion_tokens)
        if (prompt, completion) != (prompt_tokens, completion_tokens):
            log.warning("usage out of range clamped to 0..%d tokens (key id %d)", MAX_TOKENS, key_id)
        now = utc_now()
        key = (key_id, now.date().isoformat(), model)
        counts = self._pending.counts.get(key)
        if counts is None:
            counts = self._pending.counts[key] = Counts()
        counts.requests += 1
        counts.prompt_tokens += prompt
        counts.completion_tokens += completion
        self._pending.last_used[key_id] = now.isoformat()

    @property
    def pending_counts(self) -> dict[UsageKey, Counts]:
        """A copy of what has not been written yet (for tests and shutdown checks)."""
        return {key: Counts(c.requests, c.prompt_tokens, c.completion_tokens)
                for key, c in self._pending.counts.items()}

    async def flush(self) -> None:
        """Write everything pending, and wait for writes already under way.

        Raises the database error if this call's own write failed; its counts
        are then pending again for the next flush.
        """
        batch, self._pending = self._pending, Batch()
        own: asyncio.Task[None] | None = None
        if batch:
            own = asyncio.get_running_loop().create_task(self._write(batch))
            self._writes.add(own)
            own.add_done_callback(self._writes.discard)
        if self._writes:
            # Shielded: a cancelled caller must not cut a write off between
            # COMMIT and the bookkeeping, which could count twice.
            await asyncio.shield(asyncio.gather(*self._writes, return_exceptions=True))
        if own is not None and own.exception() is not None:
            raise own.exception()  # type: ignore[misc]

    async def _write(self, batch: Batch) -> None:
        try:
            refused = await self._sink.write_usage(batch)
        except BaseException:
            self._restore(batch)
            raise
        for key_id, _day, _model in refused:
            # Retrying cannot help a row the database refuses for its values;
            # keeping it would fail every later flush.
            log.error("usage row refused by the database and dropped (key id %d)", key_id)

    def _restore(self, batch: Batch) -> None:
        for key, counts in batch.counts.items():
            self._pending.counts.setdefault(key, Counts()).add(counts)
        for key_id, when in batch.last_used.items():
            if when > self._pending.last_used.get(key_id, ""):
                self._pending.last_used[key_id] = when

    def start(self) -> None:
        """Start the periodic flush (and daily pruning, if retention is set)."""
        if self._task is not None:
            return
        self._stopping = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop the periodic flush and flush a last time."""
        if self._task is not None and self._stopping is not None:
            self._stopping.set()
            # wait() rather than await: a loop shutting down may already have
            # cancelled the task, and the last flush must happen regardless.
            await asyncio.wait([self._task])
            self._task = None
        await self.flush()

    async def _run(self) -> None:
        # Batches are taken every flush_interval, measured from one take to the
        # next rather than from the end of a write: so a crash loses at most
        # the last interval's usage plus the write in progress, the README's bound.
        assert self._stopping is not None
        loop = asyncio.get_running_loop()
        due = loop.time() + self._flush_interval
        while not self._stopping.is_set():
            await self._prune_daily()
            try:
                await asyncio.wait_for(self._stopping.wait(), max(0.0, due - loop.time()))
            except asyncio.TimeoutError:
                pass
            due = loop.time() + self._flush_interval
            try:
                await self.flush()
            except Exception as exc:  # kept pending; the next round retries
                log.warning("usage flush failed, will retry: %s", type(exc).__name__)

    async def _prune_daily(self) -> None:
        if self._retention_days is None:
            return
        today = utc_now().date().isoformat()
        if today == self._pruned_day:
            return
        try:
            await self._sink.prune_usage(self._retention_days)
            self._pruned_day = today
        except Exception as exc:
            log.warning("usage pruning failed, will retry: %s", type(exc).__name__)
