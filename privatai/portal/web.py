"""What every account page shares: the visitor's session, forms with their
CSRF check, rendering with the site's templates, mails and links.

Account pages never cache (``no-store``): they show keys, usage and people.
Bad input is answered on the page, in the visitor's language, and changes
nothing; the values typed are never logged.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from sanic import Request
from sanic.response import HTTPResponse, html, redirect

from privatai.billing.errors import SubscriptionsNotCancelled
from privatai.config import Config
from privatai.config_types import Language
from privatai.portal import mailer, web_session
from privatai.portal.pages import BY_NAME
from privatai.portal.throttle import Throttle
from privatai.state import AppState
from privatai.store.account_usage import AccountUsage
from privatai.store.audit_log import AuditLog
from privatai.store.database import Store
from privatai.store.erasure import OwnsSharedAccount, delete_person
from privatai.store.people import People, Session, new_token
from privatai.store.teams import Teams

if TYPE_CHECKING:
    from privatai.portal.routes import Site

log = logging.getLogger("privatai.portal")
NO_STORE = "no-store"
FIELD_MAX = 4096  # any single form value; each field has its own, smaller limit


class BadForm(Exception):
    """A form that is not one: a field twice, or far too long."""


@dataclass(frozen=True, slots=True)
class Visitor:
    """Who sent a request: a live session, or a form cookie (maybe a new one)."""

    session_token: str | None
    session: Session | None
    form_token: str
    new_form_cookie: bool

    @property
    def user(self) -> Any:
        return self.session.user if self.session is not None and not self.session.second_factor_pending else None

    @property
    def csrf(self) -> str:
        return web_session.csrf_token(self.session_token or self.form_token)

    def csrf_ok(self, sent: str | None) -> bool:
        return web_session.csrf_valid(self.session_token, sent) or web_session.csrf_valid(self.form_token, sent)


@dataclass(slots=True)
class Stores:
    """The store's parts the pages use, made once the store is open."""

    store: Store
    people: People
    teams: Teams
    audit: AuditLog
    usage: AccountUsage


class Web:
    def __init__(self, site: Site) -> None:
        self.site = site
        self.state: AppState = site.state
        config = self.state.config
        self._throttle = Throttle(config.accounts, config.web_chat.trusted_proxies)
        self._stores: Stores | None = None

    @property
    def throttle(self) -> Throttle:
        # The limits follow a reload; the attempts counted so far stay.
        self._throttle.config = self.config.accounts
        return self._throttle

    @property
    def config(self) -> Config:
        return self.state.config

    @property
    def stores(self) -> Stores:
        store = self.state.store
        assert store is not None, "the store opens before the server serves"
        if self._stores is None or self._stores.store is not store:
            db = store._db
            self._stores = Stores(store, People(db), Teams(db), AuditLog(db), AccountUsage(db))
        return self._stores

    # ------------------------------------------------------------------ visitors and forms

    async def visitor(self, request: Request) -> Visitor:
        session_token = request.cookies.get(web_session.SESSION_COOKIE)
        session = None
        if session_token:
            session = await self.stores.people.session(session_token, self.config.accounts.session_idle)
            if session is None:
                session_token = None
        form_token = request.cookies.get(web_session.FORM_COOKIE)
        new = not form_token or len(form_token) > 64
        return Visitor(session_token, session, new_token() if new else form_token, new)

    @staticmethod
    def form(request: Request) -> dict[str, str]:
        """The posted fields, one value each; BadForm otherwise."""
        fields: dict[str, str] = {}
        for name, values in (request.form or {}).items():
            if len(values) != 1 or len(values[0]) > FIELD_MAX:
                raise BadForm(name)
            fields[name] = values[0]
        return fields

    def posted(self, request: Request, visitor: Visitor) -> dict[str, str] | None:
        """A state-changing form's fields, or None when it lacks this visitor's
        CSRF token (the caller answers 403 and changes nothing). BadForm for a
        field sent twice or far too long (the routes answer 400)."""
        if not visitor.csrf_ok((request.form or {}).get("csrf")):
            return None
        return self.form(request)

    # ------------------------------------------------------------------ responses

    def page(self, request: Request, visitor: Visitor, template: str, name: str, lang: Language,
             *, status: int = 200, **context: Any) -> HTTPResponse:
        body = self.site.render_template(template, name, lang, {
            "csrf": visitor.csrf, "user": visitor.user, **context})
        response = html(body, status=status, headers=self.headers(lang))
        self.keep_form_cookie(response, request, visitor)
        return response

    def keep_form_cookie(self, response: HTTPResponse, request: Request, visitor: Visitor) -> None:
        if visitor.new_form_cookie:
            web_session.set_cookie(response, request, self.config, web_session.FORM_COOKIE,
                                   visitor.form_token, None)

    @staticmethod
    def headers(lang: Language) -> dict[str, str]:
        from privatai.portal.routes import PAGE_HEADERS
        return {**PAGE_HEADERS, "Cache-Control": NO_STORE, "Content-Language": lang}

    def notice(self, request: Request, visitor: Visitor, lang: Language, key: str, *, status: int = 200,
               name: str = "dashboard", **context: Any) -> HTTPResponse:
        """A page that only says something (catalog text ``notices.<key>``)."""
        return self.page(request, visitor, "notice.html", name, lang, status=status, notice=key, **context)

    def forbidden(self, request: Request, visitor: Visitor, lang: Language) -> HTTPResponse:
        """A form without its CSRF token, or with another session's: 403, nothing done."""
        return self.notice(request, visitor, lang, "csrf", status=403)

    def not_found(self, request: Request, visitor: Visitor, lang: Language) -> HTTPResponse:
        return self.notice(request, visitor, lang, "not_found", status=404)

    def to(self, name: str, lang: Language, suffix: str = "", **query: str) -> HTTPResponse:
        """A redirect (303: the browser follows with GET) to one of our pages."""
        target = BY_NAME[name].paths[lang] + suffix
        if query:
            target += "?" + urlencode(query)
        return redirect(target, status=303, headers={"Cache-Control": NO_STORE})

    def to_login(self, request: Request, lang: Language) -> HTTPResponse:
        return self.to("login", lang, next=request.path)

    # ------------------------------------------------------------------ sessions

    async def log_in(self, request: Request, visitor: Visitor, user_id: int, target: str,
                     *, second_factor_pending: bool = False) -> HTTPResponse:
        """A new session (never the old one: a token known before login is
        worthless after it) and a redirect to ``target``."""
        people = self.stores.people
        await self.prune()
        if visitor.session_token is not None:
            await people.close_session(visitor.session_token)
        accounts = self.config.accounts
        lifetime = 600.0 if second_factor_pending else accounts.session_lifetime
        token = await people.open_session(user_id, lifetime, second_factor_pending=second_factor_pending)
        response = redirect(target, status=303, headers={"Cache-Control": NO_STORE})
        web_session.set_cookie(response, request, self.config, web_session.SESSION_COOKIE, token,
                               int(lifetime))
        # A fresh form cookie too: the one from before login is not carried over.
        web_session.set_cookie(response, request, self.config, web_session.FORM_COOKIE, new_token(), None)
        return response

    async def prune(self) -> None:
        """Whenever someone logs in: no table of people grows without bound."""
        stores = self.stores
        accounts = self.config.accounts
        billing = self.state.billing
        for user in await stores.people.prune(accounts.unconfirmed_days, accounts.audit_retention_days):
            try:
                # Unconfirmed people never logged in to subscribe; should one have, Stripe cancels first.
                await delete_person(stores.store, stores.people, stores.teams, user,
                                    billing.end_subscriptions if billing is not None else None)
            except (OwnsSharedAccount, SubscriptionsNotCancelled):
                continue  # cannot happen without a login; left for the operator (or the next login) if it does

    async def log_out(self, request: Request, visitor: Visitor, lang: Language) -> HTTPResponse:
        if visitor.session_token is not None:
            await self.stores.people.close_session(visitor.session_token)
        response = redirect(BY_NAME["home"].paths[lang] if lang != "de" else "/?lang=de", status=303)
        web_session.drop_cookie(response, request, self.config, web_session.SESSION_COOKIE)
        return response

    # ------------------------------------------------------------------ mail

    def link(self, name: str, lang: Language, **query: str) -> str:
        """An absolute link for a mail. Its origin is ``portal.public_url``, or
        the address the server listens on: never the request's Host header,
        which a visitor could set to their own site to catch a reset link."""
        base = self.config.portal.public_url
        if base is None:
            server = self.config.server
            host = f"[{server.host}]" if ":" in server.host else server.host
            base = f"http://{host}:{server.port}"
        return base + BY_NAME[name].paths[lang] + (f"?{urlencode(query)}" if query else "")

    def mail(self, to: str, lang: Language, kind: str, **values: str) -> None:
        """Send one of the catalog's mails (``mail.<kind>``) in the background."""
        texts = getattr(self.site.catalogs[lang].mail, kind)
        smtp = self.config.accounts.smtp
        message = mailer.message(smtp, to, texts.subject, texts.body.format(**values))
        self.state.spawn(mailer.send(smtp, message, kind))
