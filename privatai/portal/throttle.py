"""Login, sign-up and reset attempts, limited per e-mail address and per client.

Both are known only as keyed hashes (HMAC-SHA256 under a key drawn per
process, as the web chat's limiter identifies clients, whose address rules
this reuses: a trusted proxy's X-Forwarded-For, IPv6 by /64), kept in memory
and forgotten when the window passes. An attempt counts whether or not the
address exists, so the limit says nothing about who has an account.
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import time
from collections import OrderedDict, deque
from typing import Callable

from privatai.limits.webchat import IPV6_PREFIX, client_address, parse_address, parse_networks
from privatai.portal.settings import AccountsConfig

MAX_ENTRIES = 100_000


class Throttle:
    def __init__(self, config: AccountsConfig, trusted_proxies: list[str], *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self._trusted = parse_networks(trusted_proxies)
        self._key = secrets.token_bytes(32)
        self._clock = clock
        self._attempts: OrderedDict[str, deque[float]] = OrderedDict()

    def _hash(self, kind: str, value: str) -> str:
        return kind + hmac.new(self._key, value.encode("utf-8"), hashlib.sha256).hexdigest()[:32]

    def client(self, peer: str, forwarded_for: str | None) -> str:
        address = client_address(peer, forwarded_for, self._trusted)
        parsed = parse_address(address)
        if isinstance(parsed, ipaddress.IPv6Address):
            address = str(ipaddress.IPv6Network((parsed, IPV6_PREFIX), strict=False))
        return self._hash("c", address)

    def address(self, email: str) -> str:
        return self._hash("a", email.strip().lower())

    def attempt(self, client: str, address: str | None) -> float | None:
        """Count an attempt; the seconds to wait if it is one too many (then it
        is not counted: a refused attempt costs the client nothing more)."""
        wait = self.blocked(client, address)
        if wait is None:
            self.count(client, address)
        return wait

    def blocked(self, client: str, address: str | None) -> float | None:
        """The seconds to wait when the client or the address has used up its attempts."""
        now = self._clock()
        window = self.config.attempt_window
        wait = 0.0
        for key, limit in self._limits(client, address):
            log = self._log(key, now - window)
            if len(log) >= limit:
                wait = max(wait, log[0] + window - now)
        return wait if wait > 0 else None

    def count(self, client: str, address: str | None) -> None:
        """Count an attempt (a failed login: a successful one costs nothing)."""
        now = self._clock()
        for key, _ in self._limits(client, address):
            self._attempts.setdefault(key, deque()).append(now)
            self._attempts.move_to_end(key)
        while len(self._attempts) > MAX_ENTRIES:
            self._attempts.popitem(last=False)

    def _limits(self, client: str, address: str | None) -> list[tuple[str, int]]:
        limits = [(client, self.config.attempts_per_client)]
        if address is not None:
            limits.append((address, self.config.attempts_per_address))
        return limits

    def _log(self, key: str, since: float) -> deque[float]:
        log = self._attempts.get(key)
        if log is None:
            return deque()
        while log and log[0] <= since:
            log.popleft()
        if not log:
            del self._attempts[key]
        return log
