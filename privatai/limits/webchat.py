"""Fair-use limits for the public web chat (API-key traffic is never limited here).

Per client identity the web chat allows

* ``requests_per_minute``: at most N admitted requests in any 60 s window
  (a sliding-window log, see :class:`_Entry`);
* ``tokens_per_day``: a per-identity 24 h budget, charged after each response
  with its real usage; a request is refused once the budget is spent;
* ``concurrent_streams``: responses in flight at once; a slot is taken by
  :meth:`WebChatLimiter.admit` and given back by :meth:`Admission.release`;

plus a model allowlist and a ``max_tokens`` cap that clamps each request.

Why in-memory state is correct: the gateway runs exactly one worker process
(``server.workers`` only accepts ``1``, see :mod:`privatai.config`), so one
event loop sees every web-chat request. All admission checks and the
reservation happen in one synchronous call with no ``await`` in between, so
concurrent requests on that loop cannot interleave between "check" and
"reserve": a burst of 50 parallel requests admits exactly the configured
number. The limiter is confined to the event loop's thread; it is not meant
to be called from worker threads.

Privacy: a client is known only by a keyed hash (HMAC-SHA256 under a random
key drawn per process from :mod:`secrets`), so the table never holds an IP
address, the hashes cannot be reversed by trying all IPv4 addresses without
the key, and they become meaningless when the process exits. Nothing here is
written to disk or logged.

Memory is bounded: entries idle for a day carry no state worth keeping and are
pruned in amortized O(1) on each call (the table is kept in least-recently-used
order), and the table never holds more than ``max_identities`` entries (the
least recently used idle identity is dropped first).

The token budget is charged when a response ends, so responses already in
flight when it runs out still finish: the overspend is bounded by
``concurrent_streams`` responses of at most ``max_tokens`` each (plus their
prompts).

Use from a route handler (``request.ip`` is the socket peer in Sanic; do not
use ``remote_addr``, which applies Sanic's own proxy settings)::

    forwarded = ",".join(request.headers.getall("x-forwarded-for", []))
    identity = limiter.identity(request.ip, forwarded or None)
    admission = limiter.admit(identity, chat.model, chat.max_output_tokens)
    try:
        ...  # call the backend with admission.model / admission.max_tokens
    finally:
        admission.release(tokens_used)   # also on error or client disconnect

(:mod:`privatai.api.webchat` does exactly this, with the usage the request
settled in ``request.ctx.usage``.)
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Callable, Iterable

from privatai.config import WebChatConfig
from privatai.errors import InvalidRequest, ModelNotFound, RateLimited

MINUTE = 60.0
DAY = 86400.0
# No way to know when another stream ends; this is a polite "try again soon".
CONCURRENCY_RETRY_AFTER = 5.0
DEFAULT_MAX_IDENTITIES = 100_000
# IPv6 clients usually get a whole /64 each, so limiting single addresses would
# let one client rotate through billions of identities.
IPV6_PREFIX = 64

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_networks(entries: Iterable[str]) -> tuple[Network, ...]:
    """``["10.0.0.1", "192.168.0.0/16", "::1"]`` -> networks; a bad entry raises ValueError."""
    return tuple(ipaddress.ip_network(entry.strip(), strict=False) for entry in entries)


def parse_address(text: str) -> Address | None:
    """An IP from a peer address or an X-Forwarded-For hop, tolerating ports and brackets."""
    text = text.strip()
    if text.startswith("["):  # "[2001:db8::1]:443"
        text = text[1:].split("]", 1)[0]
    elif text.count(":") == 1:  # "203.0.113.7:5678"
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])  # drop an IPv6 zone id
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def client_address(peer: str, forwarded_for: str | None, trusted: tuple[Network, ...]) -> str:
    """The address to limit: the peer, or, when the peer is a trusted proxy, the
    right-most hop in X-Forwarded-For that is not itself a trusted proxy.

    Hops left of the first untrusted one were written by the client and are
    ignored, as is the whole header when the peer is not trusted (anyone can
    send it). Pass several X-Forwarded-For headers joined with ``","``.
    """
    peer_address = parse_address(peer)
    if peer_address is None:
        return peer.strip()  # a unix socket path or similar: still one identity
    if not forwarded_for or not _is_trusted(peer_address, trusted):
        return str(peer_address)
    chosen = peer_address
    for hop in reversed(forwarded_for.split(",")):
        address = parse_address(hop)
        if address is None:
            break  # garbage from the client side: trust nothing left of it
        chosen = address
        if not _is_trusted(address, trusted):
            break
    return str(chosen)


def _is_trusted(address: Address, trusted: tuple[Network, ...]) -> bool:
    return any(address.version == net.version and address in net for net in trusted)


@dataclass(slots=True)
class _Entry:
    """One identity's state.

    ``starts`` is a sliding-window log of admission times, at most
    ``requests_per_minute`` long: exact ("never more than N in any 60 s"),
    gives an exact Retry-After (the oldest start plus 60 s), and costs only N
    floats with the small N a web chat uses. A token bucket/GCRA would use one
    float but lets up to about 2N through in some 60 s windows.

    The token budget is a fixed 24 h window that starts with the identity's
    first request, so not every client's budget resets at the same midnight.
    """

    starts: deque[float]
    day_start: float
    day_used: int = 0
    active: int = 0
    last_seen: float = 0.0


@dataclass(slots=True, eq=False)
class Admission:
    """A granted web-chat request. Call :meth:`release` exactly once when the
    response has ended, however it ended."""

    identity: str
    # The model to call: the requested one, or the first allowlisted model
    # when none was requested; None means "the gateway's default".
    model: str | None
    # The clamped output limit to send upstream.
    max_tokens: int
    _limiter: WebChatLimiter = field(repr=False)
    _entry: _Entry = field(repr=False)
    released: bool = False

    def release(self, tokens_used: int = 0) -> None:
        """Free the concurrency slot and charge ``tokens_used`` (prompt plus
        completion) to today's budget. Further calls do nothing, so a
        ``finally`` that runs after an earlier release cannot double-free."""
        if self.released:
            return
        self.released = True
        self._limiter._release(self._entry, max(0, int(tokens_used)))


class WebChatLimiter:
    """Fair-use limiter for the web chat; one per process (see module docstring)."""

    def __init__(
        self,
        config: WebChatConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_identities: int = DEFAULT_MAX_IDENTITIES,
    ) -> None:
        self.config = config
        self._clock = clock
        self._max_identities = max(1, max_identities)
        self._trusted = parse_networks(config.trusted_proxies)
        self._key = secrets.token_bytes(32)
        # Least recently used first, so pruning looks only at the front.
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    def reconfigure(self, config: WebChatConfig) -> None:
        """New limits from a reload; clients keep what they have used so far."""
        self.config = config
        self._trusted = parse_networks(config.trusted_proxies)
        for entry in self._entries.values():
            entry.starts = deque(entry.starts, maxlen=config.requests_per_minute)

    # -- identity -------------------------------------------------------

    def identity(self, peer_ip: str, forwarded_for: str | None = None) -> str:
        """The keyed hash that stands for this client (see :func:`client_address`)."""
        address = client_address(peer_ip, forwarded_for, self._trusted)
        parsed = parse_address(address)
        if isinstance(parsed, ipaddress.IPv6Address):
            address = str(ipaddress.IPv6Network((parsed, IPV6_PREFIX), strict=False))
        digest = hmac.new(self._key, address.encode(), hashlib.sha256).hexdigest()
        return digest[:32]  # 128 bits: collision-free in practice, half the memory

    # -- model allowlist and max_tokens cap -------------------------------

    def allowed_models(self, served: Iterable[str]) -> list[str]:
        """The models the web chat may offer, in the gateway's order: the
        allowlist when one is configured, else everything served."""
        served = list(served)
        if not self.config.models:
            return served
        allowed = set(self.config.models)
        return [name for name in served if name in allowed]

    def check_model(self, requested: str | None) -> str | None:
        """The model to use, or ModelNotFound (404, as OpenAI answers for a
        model it does not offer) when it is not on the allowlist."""
        allowlist = self.config.models
        if not requested:
            return allowlist[0] if allowlist else None
        if allowlist and requested not in allowlist:
            raise ModelNotFound(f"The model {requested!r} is not available in the web chat.",
                                param="model")
        return requested

    def clamp_max_tokens(self, requested: int | None) -> int:
        """The request's output limit, never above the configured cap."""
        cap = self.config.max_tokens
        if requested is None:
            return cap
        if requested < 1:
            raise InvalidRequest("max_tokens must be at least 1.", param="max_tokens")
        return min(requested, cap)

    # -- admission --------------------------------------------------------

    def admit(self, identity: str, requested_model: str | None = None,
              max_tokens: int | None = None) -> Admission:
        """Check every limit and reserve a request and a stream slot, or raise.

        Deliberately synchronous: with no ``await`` between the checks and the
        reservation, concurrent requests on the event loop cannot both pass a
        check that only one of them should pass.
        """
        model = self.check_model(requested_model)
        clamped = self.clamp_max_tokens(max_tokens)
        now = self._clock()
        self._prune(now)
        entry = self._entry(identity, now)
        config = self.config

        if entry.active >= config.concurrent_streams:
            raise RateLimited(
                f"Only {config.concurrent_streams} answer(s) at a time in the web chat; "
                "wait for the current one to finish.",
                retry_after=CONCURRENCY_RETRY_AFTER, code="concurrent_streams_exceeded")

        starts = entry.starts
        while starts and now - starts[0] >= MINUTE:
            starts.popleft()
        if len(starts) >= config.requests_per_minute:
            raise RateLimited(
                f"The web chat allows {config.requests_per_minute} requests per minute.",
                retry_after=starts[0] + MINUTE - now, code="requests_per_minute_exceeded")

        self._roll_day(entry, now)
        if entry.day_used >= config.tokens_per_day:
            raise RateLimited(
                f"The web chat allows {config.tokens_per_day} tokens per day.",
                retry_after=entry.day_start + DAY - now, code="tokens_per_day_exceeded")

        starts.append(now)
        entry.active += 1
        return Admission(identity, model, clamped, self, entry)

    def _release(self, entry: _Entry, tokens_used: int) -> None:
        now = self._clock()
        entry.active = max(0, entry.active - 1)
        self._roll_day(entry, now)
        entry.day_used += tokens_used
        entry.last_seen = now

    # -- table upkeep -------------------------------------------------------

    def _entry(self, identity: str, now: float) -> _Entry:
        entry = self._entries.get(identity)
        if entry is None:
            self._make_room()
            entry = _Entry(deque(maxlen=self.config.requests_per_minute), day_start=now)
            self._entries[identity] = entry
        else:
            self._entries.move_to_end(identity)
        entry.last_seen = now
        return entry

    @staticmethod
    def _roll_day(entry: _Entry, now: float) -> None:
        if now - entry.day_start >= DAY:
            entry.day_start = now
            entry.day_used = 0

    def _prune(self, now: float) -> None:
        """Drop identities idle for a day: their minute log and their day window
        have both run out, so forgetting them changes no decision. Each entry is
        dropped at most once, so the cost is amortized O(1) per call."""
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
        """Keep the table at most ``max_identities`` long by dropping the least
        recently used identity without a stream in flight. Forgetting an
        identity early is the price of bounded memory: it only ever lets that
        client in sooner, never refuses anybody wrongly."""
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
