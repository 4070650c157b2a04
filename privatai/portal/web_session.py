"""Who is logged in, and the cookies and form tokens that say so.

The session cookie holds a random token; the database keeps its SHA-256
(:mod:`privatai.store.people`). Visitors not logged in get a form cookie of
the same kind, stored nowhere. Every state-changing form carries a CSRF token
derived from the cookie it goes with (HMAC of the token): another site can
neither read the cookie nor compute the token, and a token is useless with
anybody else's cookie (a synchronizer token bound to the session, which needs
no storage of its own).

Cookies are ``HttpOnly``, ``SameSite=Lax`` and, behind TLS, ``Secure``. TLS
is known from ``portal.public_url`` (https), from the socket (Sanic serving
TLS), or from ``X-Forwarded-Proto: https`` sent by a trusted proxy (the
loopback addresses and ``web_chat.trusted_proxies``); a header from anybody
else is ignored.
"""
from __future__ import annotations

import hashlib
import hmac

from sanic import Request
from sanic.response import HTTPResponse

from privatai.config import Config
from privatai.limits.webchat import parse_address, parse_networks

SESSION_COOKIE = "privatai_session"
FORM_COOKIE = "privatai_form"
CSRF_FIELD = "csrf"
LOOPBACK = parse_networks(["127.0.0.0/8", "::1"])


def behind_tls(request: Request, config: Config) -> bool:
    if config.portal.public_url is not None:
        return config.portal.public_url.startswith("https://")
    if request.scheme == "https":
        return True
    peer = parse_address(request.ip or "")
    trusted = LOOPBACK + parse_networks(config.web_chat.trusted_proxies)
    if peer is None or not any(peer.version == net.version and peer in net for net in trusted):
        return False
    forwarded = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    return forwarded == "https"


def csrf_token(cookie_token: str) -> str:
    return hmac.new(cookie_token.encode("utf-8"), b"privatai-csrf", hashlib.sha256).hexdigest()


def csrf_valid(cookie_token: str | None, sent: str | None) -> bool:
    if not cookie_token or not sent:
        return False
    return hmac.compare_digest(csrf_token(cookie_token), sent)


def set_cookie(response: HTTPResponse, request: Request, config: Config, name: str, value: str,
               max_age: int | None) -> None:
    response.add_cookie(name, value, path="/", secure=behind_tls(request, config), httponly=True,
                        samesite="Lax", max_age=max_age)


def drop_cookie(response: HTTPResponse, request: Request, config: Config, name: str) -> None:
    response.add_cookie(name, "", path="/", secure=behind_tls(request, config), httponly=True,
                        samesite="Lax", max_age=0)
