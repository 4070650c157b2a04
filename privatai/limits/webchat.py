"""Fair-use limits for the public web chat (API-key traffic is never limited here).

Per client identity the web chat allows ``requests_per_minute``,
``tokens_per_day`` and ``concurrent_streams`` (their exact meaning is in
:mod:`privatai.limits.shared`), plus a model allowlist and a ``max_tokens``
cap that clamps each request.

The counters live in a :class:`~privatai.limits.shared.LimitState`: in this
process when the gateway runs one worker (:class:`MemoryLimitState`), in a
file the workers of one machine share when it runs several
(:mod:`privatai.limits.sqlite_state`). Either way one ``admit`` call checks
every rule and takes the request and the stream slot atomically, so a burst
of 50 parallel requests admits exactly the configured number, however the
workers split it.

Privacy: a client is known only by a keyed hash (HMAC-SHA256 under a random
key drawn from :mod:`secrets` when the app is built, in the main process, so
every forked worker has the same key and none is written anywhere). The
counters never hold an IP address, the hashes cannot be reversed by trying
all IPv4 addresses without the key, and they become meaningless when the
server exits. Nothing here is logged.

The token budget is charged when a response ends, so responses already in
flight when it runs out still finish: the overspend is bounded by
``concurrent_streams`` responses of at most ``max_tokens`` each (plus their
prompts).

Use from a route handler (``request.ip`` is the socket peer in Sanic; do not
use ``remote_addr``, which applies Sanic's own proxy settings)::

    forwarded = ",".join(request.headers.getall("x-forwarded-for", []))
    identity = limiter.identity(request.ip, forwarded or None)
    admission = await limiter.admit(identity, chat.model, chat.max_output_tokens)
    try:
        ...  # call the backend with admission.model / admission.max_tokens
    finally:
        await admission.release(tokens_used)   # also on error or client disconnect

(:mod:`privatai.api.webchat` does exactly this, with the usage the request
settled in ``request.ctx.usage``.)
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

from privatai.config import WebChatConfig
from privatai.errors import InvalidRequest, LimitsUnavailable, ModelNotFound, RateLimited
from privatai.limits.shared import (CONCURRENT_STREAMS, detached, DEFAULT_MAX_IDENTITIES, TOKENS_PER_DAY, LimitRules,
                                    LimitState, MemoryLimitState, Verdict, duration)
from privatai.ops.logs import describe_error

log = logging.getLogger("privatai.limits")

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
    verdict: Verdict
    _limiter: WebChatLimiter = field(repr=False)
    released: bool = False

    async def release(self, tokens_used: int = 0) -> None:
        """Free the concurrency slot and charge ``tokens_used`` (prompt plus
        completion) to today's budget. Further calls do nothing, so a
        ``finally`` that runs after an earlier release cannot double-free."""
        if self.released:
            return
        self.released = True
        # Shielded: the handler is often cancelled right here, when the
        # visitor closes the connection after the last chunk; a shared state
        # must still get the slot back.
        await asyncio.shield(detached(self._limiter.release(self.identity, max(0, int(tokens_used)))))


class WebChatLimiter:
    """Fair-use limiter for the web chat; one per process (see module docstring)."""

    def __init__(
        self,
        config: WebChatConfig,
        *,
        state: LimitState | None = None,
        clock: Callable[[], float] = time.monotonic,
        max_identities: int = DEFAULT_MAX_IDENTITIES,
        identity_key: bytes | None = None,
    ) -> None:
        self.config = config
        # time.monotonic is one clock for every process of the machine, so
        # workers sharing a state agree on what "60 s ago" means.
        self.clock = clock
        self.state: LimitState = state if state is not None else MemoryLimitState(max_identities)
        self._rules = _rules(config)
        self._trusted = parse_networks(config.trusted_proxies)
        # Instances sharing Redis must hash a client alike: their key is
        # given (state.identity_key_env); alone, any secret key will do.
        self._key = identity_key if identity_key is not None else secrets.token_bytes(32)

    def reconfigure(self, config: WebChatConfig) -> None:
        """New limits from a reload; clients keep what they have used so far."""
        self.config = config
        self._rules = _rules(config)
        self._trusted = parse_networks(config.trusted_proxies)

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

    async def admit(self, identity: str, requested_model: str | None = None,
                    max_tokens: int | None = None) -> Admission:
        """Check every limit and reserve a request and a stream slot, or raise
        RateLimited (429 with Retry-After and the x-ratelimit-*-requests headers).
        A request refused for its model or max_tokens uses up nothing."""
        model = self.check_model(requested_model)
        clamped = self.clamp_max_tokens(max_tokens)
        asking = asyncio.ensure_future(self.state.admit(identity, self._rules, self.clock()))
        try:
            verdict = await asyncio.shield(asking)
        except asyncio.CancelledError:
            # The visitor left while the state decided: give back what it took.
            asking.add_done_callback(lambda done: self._undo(identity, done))
            raise
        except LimitsUnavailable:
            raise  # the state said so itself, and logged it once per outage
        except Exception as exc:
            log.error("web-chat limits unavailable, refusing: %s", describe_error(exc))
            raise LimitsUnavailable("The web chat is unavailable right now; try again shortly.") from None
        if not verdict.admitted:
            raise self._refusal(verdict)
        return Admission(identity, model, clamped, verdict, self)

    async def release(self, identity: str, tokens: int) -> None:
        """Give a slot back; a failure is logged (the answer is over, only the counters are behind)."""
        try:
            await self.state.release(identity, tokens, self.clock())
        except Exception as exc:
            log.error("web-chat limits: a release was lost: %s", describe_error(exc))

    def _undo(self, identity: str, asked: asyncio.Future[Verdict]) -> None:
        if not asked.cancelled() and asked.exception() is None and asked.result().admitted:
            detached(self.release(identity, 0))

    def _refusal(self, verdict: Verdict) -> RateLimited:
        config = self.config
        if verdict.rule == CONCURRENT_STREAMS:
            message = (f"Only {config.concurrent_streams} answer(s) at a time in the web chat; "
                       "wait for the current one to finish.")
        elif verdict.rule == TOKENS_PER_DAY:
            message = f"The web chat allows {config.tokens_per_day} tokens per day."
        else:
            message = f"The web chat allows {config.requests_per_minute} requests per minute."
        error = RateLimited(message, retry_after=verdict.retry_after, code=f"{verdict.rule}_exceeded")
        error.headers.update(rate_limit_headers(verdict))
        return error

    def __len__(self) -> int:
        """Identities known to an in-memory state (0 for a shared one)."""
        return len(self.state) if isinstance(self.state, MemoryLimitState) else 0



def rate_limit_headers(verdict: Verdict) -> dict[str, str]:
    """OpenAI's request-limit headers for the minute window of a Verdict."""
    return {
        "x-ratelimit-limit-requests": str(verdict.limit),
        "x-ratelimit-remaining-requests": str(verdict.remaining),
        # Written as the API's own limits write it (OpenAI's form: 1.5s, 1m0s).
        "x-ratelimit-reset-requests": duration(verdict.reset_seconds),
    }


def _rules(config: WebChatConfig) -> LimitRules:
    return LimitRules(config.requests_per_minute, config.tokens_per_day, config.concurrent_streams)
