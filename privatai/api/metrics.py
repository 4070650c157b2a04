"""GET /metrics: Prometheus exposition, for an admin token or the local host only.

The rule: when the environment variable named by ``metrics.token_env`` is set
(and not empty), every scrape must send ``Authorization: Bearer <token>``;
otherwise /metrics answers only requests from a loopback peer that did not pass
through a reverse proxy (no ``Forwarded``/``X-Forwarded-For`` header), because
a proxy on the same host makes every client look local.
"""
from __future__ import annotations

import hmac
import ipaddress
import os
from typing import Awaitable, Callable

from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from sanic import Request
from sanic.response import HTTPResponse, raw

from privatai.config import MetricsConfig
from privatai.errors import AuthenticationFailed, PermissionDenied
from privatai.state import AppState

_PROXY_HEADERS = ("forwarded", "x-forwarded-for", "x-real-ip")


def is_loopback(address: str) -> bool:
    """127.0.0.0/8, ::1, or an IPv4-mapped loopback address (::ffff:127.0.0.1)."""
    try:
        ip = ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        return False  # a Unix socket or anything unparsable is not trusted
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def _bearer(request: Request) -> bytes:
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    return credentials.strip().encode() if scheme.lower() == "bearer" else b""


def metrics_endpoint(config: MetricsConfig) -> Callable[[Request], Awaitable[HTTPResponse]]:
    """The /metrics handler; the token is read once, when the app is made."""
    token = os.environ.get(config.token_env, "").encode()

    async def metrics(request: Request) -> HTTPResponse:
        if token:
            # compare_digest: the time taken does not tell how much of a guess was right.
            if not hmac.compare_digest(_bearer(request), token):
                raise AuthenticationFailed("A valid metrics token is required.", code="invalid_metrics_token",
                                           headers={"WWW-Authenticate": "Bearer"})
        elif not is_loopback(request.ip) or any(h in request.headers for h in _PROXY_HEADERS):
            raise PermissionDenied(f"Metrics are served to the local host only; set {config.token_env} "
                                   "to scrape them from elsewhere.", code="metrics_local_only")
        state: AppState = request.app.ctx.state
        assert state.metrics is not None  # the route exists only when metrics are enabled
        # generate_latest writes the classic text format (version 0.0.4);
        # prometheus-client's own servers pair it with this content type.
        state.metrics.refresh()
        return raw(generate_latest(state.metrics.exposed), content_type=CONTENT_TYPE_PLAIN_0_0_4)

    return metrics
