"""Where the web chat's fair-use counters live: the :class:`LimitState` Protocol.

The web-chat limiter (:mod:`privatai.limits.webchat`) knows the rules and
the identities; a ``LimitState`` holds the counters and decides. Keeping
the decision behind one ``admit`` call lets the counters live in this
process (:class:`MemoryLimitState`, one worker), in a file shared by the
workers of one machine (:mod:`privatai.limits.sqlite_state`) or in Redis for
several instances (:mod:`privatai.limits.redis_state`), with the same
semantics everywhere:

* ``rpm``: at most N admitted requests in any 60 s window (a sliding-window
  log: exact, and it gives an exact Retry-After);
* ``tokens_per_day``: a 24 h budget per identity that starts with its first
  request, charged by :meth:`LimitState.release` with the real usage;
* ``concurrent_streams``: answers in flight at once.

``admit`` is atomic: it checks every rule and takes the request and the
stream slot in one step, so a burst admits exactly what the rules allow
however it is spread over workers. Identities are keyed hashes, never
addresses. Rules are checked in this order: concurrent streams, requests per
minute, tokens per day; the first one that refuses names the Verdict's rule.
"""
from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any, Coroutine, Protocol

MINUTE = 60.0
DAY = 86400.0
# No way to know when another stream ends; this is a polite "try again soon".
CONCURRENCY_RETRY_AFTER = 5.0
DEFAULT_MAX_IDENTITIES = 100_000

RPM = "requests_per_minute"
TOKENS_PER_DAY = "tokens_per_day"
CONCURRENT_STREAMS = "concurrent_streams"


def duration(seconds: float) -> str:
    """Seconds as OpenAI's reset headers write them: ``20ms``, ``1.5s``, ``6m0s``."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    if seconds < MINUTE:
        return f"{round(seconds, 3):g}s"
    minutes, rest = divmod(seconds, MINUTE)
    return f"{int(minutes)}m{round(rest, 3):g}s"


@dataclass(frozen=True, slots=True)
class LimitRules:
    """The limits one identity gets (from ``web_chat`` in backends.yaml)."""

    rpm: int
    tokens_per_day: int
    concurrent_streams: int


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of :meth:`LimitState.admit`."""

    admitted: bool
    # "requests_per_minute" | "tokens_per_day" | "concurrent_streams" when refused.
    rule: str | None
    retry_after: float  # seconds; 0 when admitted
    # The request rule's numbers, for the x-ratelimit-*-requests headers.
    limit: int
    remaining: int
    reset_seconds: float


class LimitState(Protocol):
    """Counters per identity; every method is safe to call from many workers at once."""

    async def admit(self, identity: str, rules: LimitRules, now: float) -> Verdict:
        """Check every rule and, if all pass, take one request and one stream slot."""
        ...

    async def release(self, identity: str, tokens: int, now: float) -> None:
        """Give the stream slot back and charge ``tokens`` to today's budget."""
        ...

    async def problem(self) -> str | None:
        """None when healthy, else a short content-free reason for /readyz."""
        ...


def refused(rule: str, retry_after: float, rules: LimitRules, remaining: int,
            reset_seconds: float) -> Verdict:
    return Verdict(False, rule, max(0.0, retry_after), rules.rpm, max(0, remaining),
                   max(0.0, reset_seconds))


@dataclass(slots=True)
class Counters:
    """One identity: the start times of its last ``rpm`` requests, its day
    window, the tokens used in it and its streams in flight."""

    starts: deque[float]
    day_start: float
    day_used: int = 0
    active: int = 0
    last_seen: float = 0.0


def decide(counters: Counters, rules: LimitRules, now: float) -> Verdict:
    """Check every rule and, when all pass, take a request and a slot in
    ``counters``: the one decision every LimitState makes, under its own lock."""
    starts = counters.starts
    if starts and starts[-1] > now:
        # Another worker read its clock later but took the shared file first:
        # decide at its time, so the log stays in order and no wait exceeds
        # the window (a Retry-After of 61 s for a per-minute limit).
        now = starts[-1]
    while starts and now - starts[0] >= MINUTE:
        starts.popleft()
    while len(starts) > rules.rpm:
        starts.popleft()  # a reload lowered the limit: only the newest starts matter now
    counters.last_seen = now
    reset = starts[0] + MINUTE - now if starts else 0.0
    remaining = rules.rpm - len(starts)
    if counters.active >= rules.concurrent_streams:
        return refused(CONCURRENT_STREAMS, CONCURRENCY_RETRY_AFTER, rules, remaining, reset)
    if remaining <= 0:
        return refused(RPM, reset, rules, 0, reset)
    _roll_day(counters, now)
    if counters.day_used >= rules.tokens_per_day:
        return refused(TOKENS_PER_DAY, counters.day_start + DAY - now, rules, remaining, reset)
    starts.append(now)
    counters.active += 1
    return Verdict(True, None, 0.0, rules.rpm, remaining - 1, starts[0] + MINUTE - now)


def charge(counters: Counters, tokens: int, now: float) -> None:
    """Give a slot back and add ``tokens`` to the day's budget."""
    counters.active = max(0, counters.active - 1)
    _roll_day(counters, now)
    counters.day_used += max(0, int(tokens))
    counters.last_seen = now


def _roll_day(counters: Counters, now: float) -> None:
    if now - counters.day_start >= DAY:
        counters.day_start, counters.day_used = now, 0


class MemoryLimitState:
    """Counters in this process: exact for one worker, where one event loop
    sees every request and ``admit`` has no ``await`` between check and take.

    Memory is bounded: identities idle for a day carry nothing worth keeping
    and are pruned in amortized O(1) (the table is in least-recently-used
    order), and at most ``max_identities`` are kept (the least recently used
    one without a stream in flight goes first; forgetting early only ever lets
    a client in sooner, never refuses anybody wrongly).
    """

    def __init__(self, max_identities: int = DEFAULT_MAX_IDENTITIES) -> None:
        self._max_identities = max(1, max_identities)
        self._entries: OrderedDict[str, Counters] = OrderedDict()

    async def admit(self, identity: str, rules: LimitRules, now: float) -> Verdict:
        # No await inside: concurrent requests on the loop cannot interleave.
        self._prune(now)
        return decide(self._counters(identity, now), rules, now)

    async def release(self, identity: str, tokens: int, now: float) -> None:
        counters = self._entries.get(identity)
        if counters is not None:  # else never admitted here: nothing to give back
            charge(counters, tokens, now)

    async def problem(self) -> str | None:
        return None

    def _counters(self, identity: str, now: float) -> Counters:
        counters = self._entries.get(identity)
        if counters is None:
            self._make_room()
            counters = self._entries[identity] = Counters(deque(), day_start=now)
        else:
            self._entries.move_to_end(identity)
        return counters

    def _prune(self, now: float) -> None:
        """Drop identities idle for a day: their minute log and their day
        window have both run out, so forgetting them changes no decision."""
        entries = self._entries
        while entries:
            identity, entry = next(iter(entries.items()))
            if now - entry.last_seen < DAY:
                break
            if entry.active:
                # A stream still holds a slot (or was never released): keep it.
                entries.move_to_end(identity)
                entry.last_seen = now
                continue
            del entries[identity]

    def _make_room(self) -> None:
        entries = self._entries
        skipped = 0
        while len(entries) >= self._max_identities and skipped < len(entries):
            identity, entry = next(iter(entries.items()))
            if entry.active:
                entries.move_to_end(identity)
                skipped += 1
                continue
            del entries[identity]
        # If every entry has a stream in flight the table grows by one; the
        # number of streams in flight is itself bounded by backend capacity.

    def __len__(self) -> int:
        return len(self._entries)


# Give-backs still running after the request that took them was cancelled
# (referenced here until done, so that they are not collected half-way).
_RUNNING: set[asyncio.Task[None]] = set()


def detached(give_back: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
    """Run ``give_back`` to its end even if its caller is cancelled (shield it to wait)."""
    task = asyncio.ensure_future(give_back)
    _RUNNING.add(task)
    task.add_done_callback(_RUNNING.discard)
    return task
