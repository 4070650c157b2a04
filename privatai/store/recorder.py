"""Usage metering off the request path.

:meth:`UsageRecorder.record` only adds to an in-memory aggregate keyed by
(key, UTC day, model); a background task hands the aggregate to a
:class:`UsageSink` (the store) every ``flush_interval`` seconds, to be written
in one transaction. The recorder knows the sink only by that narrow interface,
so the store does not depend on it and can be used without it (the CLI).

A batch taken out for a write carries a random id that the sink stores in the
same transaction. If the write fails, the batch is kept as it is and retried,
with the same id, before anything newer is taken: a failure that did commit
(the connection lost during COMMIT) is then recognised by its id, and one
that did not is written now. So while the database is down, usage is held in
memory (the batches in doubt plus the aggregate still growing, bounded by
``max_rows``) and written when it is back: nothing lost, nothing twice.
Only numbers are kept: no prompt, no client address, no per-request rows.

If the gateway stops before the database is back, what is held goes to a
spill file (:mod:`privatai.store.spill`), batch ids included, and the next
start takes it back in as batches in doubt: the same retry writes it.

Counts are clamped to ``0..MAX_TOKENS`` on the way in: a backend that reports
a negative or absurd number must neither lower a key's totals nor overflow a
64-bit column, which would fail every later write of the whole batch.
"""
from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Protocol

from privatai.config import StoreConfig
from privatai.store.records import utc_now

if TYPE_CHECKING:  # spill imports Batch from here
    from privatai.store.spill import SpillDir

log = logging.getLogger(__name__)

UsageKey = tuple[int, str, str]  # key_id, UTC day (YYYY-MM-DD), model


class Refused(NamedTuple):
    """A row the database refused and no retry can write."""

    key: UsageKey
    # The key was deleted meanwhile (its account erased while other requests
    # of it were still being counted): expected, unlike numbers out of range.
    gone: bool

# Far above any real request (a million-token context is 2**20), far below
# 2**63: even 2**31 requests a day at this size cannot overflow a day's sum.
MAX_TOKENS = 2**31 - 1
DEFAULT_MAX_ROWS = 100_000


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
    # Given by the recorder when it takes the batch; "" writes without the
    # written-before check (the CLI, tests that write directly).
    id: str = ""

    def __bool__(self) -> bool:
        return bool(self.counts or self.last_used)


def requests_in(batches: list[Batch]) -> int:
    """How many requests ``batches`` count, for log lines (counts only)."""
    return sum(c.requests for b in batches for c in b.counts.values())


class UsageSink(Protocol):
    """Where batches go: the store."""

    async def write_usage(self, batch: Batch) -> list[Refused]:
        """Add ``batch`` to the stored aggregates; return the rows refused for
        their values or for a key that no longer exists (dropped). Raise,
        writing nothing, on any other failure."""

    async def prune_usage(self, retention_days: int) -> int:
        """Delete usage of UTC days older than ``retention_days``."""


class UsageRecorder:
    """Aggregates usage in memory and flushes it to a :class:`UsageSink`."""

    def __init__(self, sink: UsageSink, *, flush_interval: float = 1.0,
                 retention_days: int | None = None, max_rows: int = DEFAULT_MAX_ROWS,
                 spill: SpillDir | None = None) -> None:
        self._sink = sink
        self._spill = spill
        # Spill files this process took in: deleted once their batches are written.
        self._claimed: list[Path] = []
        self._flush_interval = flush_interval
        self._retention_days = retention_days
        self._max_rows = max_rows
        self._pending = Batch()
        # Batches whose write failed (or taken in from spill files), oldest
        # first: retried as they are, under their ids, before a new one is taken.
        self._in_doubt: list[Batch] = []
        self._lock = asyncio.Lock()
        self._failing = False
        self._dropped = 0
        self._stopping: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._pruned_day: str | None = None
        # (epoch second, its UTC day, its stored time): formatted once a second, not per request.
        self._clock: tuple[int, str, str] = (-1, "", "")

    @classmethod
    def from_config(cls, sink: UsageSink, config: StoreConfig, *, max_rows: int = DEFAULT_MAX_ROWS,
                    spill: SpillDir | None = None) -> UsageRecorder:
        return cls(sink, flush_interval=config.flush_interval, retention_days=config.usage_retention_days,
                   max_rows=max_rows, spill=spill)

    @property
    def failing(self) -> bool:
        """Whether the last write failed: usage is being held in memory."""
        return self._failing

    def record(self, key_id: int, model: str, prompt_tokens: int, completion_tokens: int) -> None:
        """Count one finished request of key ``key_id``. Synchronous and cheap: no I/O."""
        prompt, completion = clamp_tokens(prompt_tokens), clamp_tokens(completion_tokens)
        if (prompt, completion) != (prompt_tokens, completion_tokens):
            log.warning("usage out of range clamped to 0..%d tokens (key id %d)", MAX_TOKENS, key_id)
        second = int(time.time())
        if second != self._clock[0]:
            now = datetime.fromtimestamp(second, timezone.utc).replace(tzinfo=None)  # as utc_now() gives it
            self._clock = (second, now.date().isoformat(), now.isoformat())
        _, day, now_stored = self._clock
        key = (key_id, day, model)
        counts = self._pending.counts.get(key)
        if counts is None:
            # A row also held in doubt adds no new (key, day, model) to what is held.
            if (len(self._pending.counts) + sum(len(b.counts) for b in self._in_doubt) >= self._max_rows
                    and not any(key in b.counts for b in self._in_doubt)):
                # Bounded memory while the database is down: the price is this request's count.
                if not self._dropped:
                    log.error("usage held in memory is full (%d rows): new rows are dropped until "
                              "the database is back", self._max_rows)
                self._dropped += 1
                return
            counts = self._pending.counts[key] = Counts()
        counts.requests += 1
        counts.prompt_tokens += prompt
        counts.completion_tokens += completion
        self._pending.last_used[key_id] = now_stored

    @property
    def pending_counts(self) -> dict[UsageKey, Counts]:
        """A copy of what has not been written yet (for tests and shutdown checks)."""
        held: dict[UsageKey, Counts] = {}
        for batch in (*self._in_doubt, self._pending):
            for key, c in batch.counts.items():
                held.setdefault(key, Counts()).add(c)
        return held

    async def flush(self) -> None:
        """Write everything pending, after a batch still in doubt.

        Raises the database error if a write failed; what it held is kept for
        the next flush. Shielded: a cancelled caller cannot cut a write off
        (and a write cut off anyway is retried under its id).
        """
        task = asyncio.ensure_future(self._flush())
        # Retrieved even when nobody awaits it any more (the caller was cancelled).
        task.add_done_callback(lambda done: done.cancelled() or done.exception())
        await asyncio.shield(task)

    async def _flush(self) -> None:
        async with self._lock:
            while self._in_doubt:
                await self._write(self._in_doubt[0])
            if self._claimed and self._spill is not None:
                self._spill.release(self._claimed)
                self._claimed = []
            batch = self._take()
            if batch is not None:
                await self._write(batch)

    def _take(self) -> Batch | None:
        """Move the pending aggregate, under a fresh id, to the batches in doubt."""
        batch, self._pending = self._pending, Batch()
        if not batch:
            return None
        batch.id = uuid.uuid4().hex
        self._in_doubt.append(batch)
        return batch

    async def _write(self, batch: Batch) -> None:
        try:
            refused = await self._sink.write_usage(batch)
        except BaseException as exc:
            if not self._failing:
                self._failing = True
                log.warning("usage cannot be written (%s): held in memory and retried", type(exc).__name__)
            raise
        self._in_doubt = [held for held in self._in_doubt if held is not batch]
        if self._failing:
            self._failing = False
            log.info("usage written again after a database outage (%d request(s) dropped as over the "
                     "memory bound)", self._dropped)
            self._dropped = 0
        for (key_id, _day, _model), gone in refused:
            # Retrying cannot help a row the database refuses; keeping it
            # would fail every later flush.
            if gone:
                log.info("usage of a deleted key dropped (key id %d)", key_id)
            else:
                log.error("usage row refused by the database and dropped (key id %d)", key_id)

    def start(self) -> None:
        """Start the periodic flush (and daily pruning, if retention is set)."""
        if self._task is not None:
            return
        self._stopping = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def replay_spilled(self) -> None:
        """Take in the spill files earlier stops left and write them now.

        Called once at start, before serving. Their batches keep their ids,
        so one that was written before adds nothing. If the database cannot
        be written now, they stay held in memory (and their files claimed)
        and the periodic flush retries them like any batch in doubt.
        """
        if self._spill is None:
            return
        claimed = await asyncio.to_thread(self._spill.claim)
        if not claimed.paths:
            return
        async with self._lock:
            self._in_doubt[:0] = claimed.batches
            self._claimed.extend(claimed.paths)
        held = requests_in(claimed.batches)
        try:
            await self.flush()
        except Exception:
            log.warning("usage of %d request(s) from %d spill file(s) cannot be written yet: held "
                        "in memory and retried", held, len(claimed.paths))
            return
        log.info("usage of %d request(s) from %d spill file(s) written", held, len(claimed.paths))

    async def stop(self) -> None:
        """Stop the periodic flush and flush a last time; if that fails, spill what is held."""
        if self._task is not None and self._stopping is not None:
            self._stopping.set()
            # wait() rather than await: a loop shutting down may already have
            # cancelled the task, and the last flush must happen regardless.
            await asyncio.wait([self._task])
            self._task = None
        try:
            await self.flush()
        except Exception:
            if not await self._spill_held():
                raise

    async def _spill_held(self) -> bool:
        """Write what is held to a spill file; False (logged) if there is none or it failed."""
        async with self._lock:
            self._take()
            if not self._in_doubt:
                return True
            held = requests_in(self._in_doubt)
            if self._spill is None:
                log.error("usage of %d request(s) could not be written before stopping: the database "
                          "is unreachable", held)
                return False
            try:
                path = await asyncio.to_thread(self._spill.write, self._in_doubt)
            except Exception as exc:
                log.error("usage of %d request(s) could not be written before stopping: the database "
                          "is unreachable and the spill file failed (%s)", held, type(exc).__name__)
                return False
            # The new file holds the claimed files' batches too (those not written yet).
            self._spill.release(self._claimed)
            self._claimed = []
            self._in_doubt = []
        log.warning("usage of %d request(s) kept in %s for the next start: the database is unreachable",
                    held, path)
        return True

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
            except Exception:  # kept, and logged once per outage by _write; the next round retries
                pass

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
