"""A person's own settings: second factor (TOTP), password, and the DSGVO
rights: the export of everything stored (Art. 15/20) and erasure (Art. 17)."""
from __future__ import annotations

import re

import orjson
import pyotp
from sanic import Request
from sanic.response import HTTPResponse, raw

from privatai.billing.errors import SubscriptionsNotCancelled
from privatai.config_types import Language
from privatai.portal.auth_pages import totp_step
from privatai.portal.passwords import PASSWORD_MAX, hash_password, password_problem, verify_password
from privatai.portal.web import NO_STORE, Visitor, Web
from privatai.store.erasure import OwnsSharedAccount, delete_person, export_person
from privatai.store.people import User

SECRET = re.compile(r"[A-Z2-7]{32}")
ISSUER = "PrivatAI"


class SelfService:
    def __init__(self, web: Web) -> None:
        self.web = web

    async def _posted(self, request: Request, lang: Language
                      ) -> tuple[Visitor, User, dict[str, str]] | HTTPResponse:
        web = self.web
        visitor = await web.visitor(request)
        form = web.posted(request, visitor)
        if form is None or visitor.user is None:
            return web.forbidden(request, visitor, lang)
        return visitor, visitor.user, form

    def _security(self, request: Request, visitor: Visitor, user: User, lang: Language, *,
                  status: int = 200, error: str | None = None, secret: str | None = None,
                  done: str | None = None) -> HTTPResponse:
        secret = secret or pyotp.random_base32(32)
        uri = pyotp.TOTP(secret).provisioning_uri(name=user.email, issuer_name=ISSUER)
        return self.web.page(request, visitor, "security.html", "security", lang, status=status, error=error,
                             secret=secret, uri=uri, totp_on=user.totp_secret is not None, done=done)

    async def security(self, request: Request, lang: Language) -> HTTPResponse:
        visitor = await self.web.visitor(request)
        if visitor.user is None:
            return self.web.to_login(request, lang)
        return self._security(request, visitor, visitor.user, lang, done=request.args.get("done"))

    async def totp_on(self, request: Request, lang: Language) -> HTTPResponse:
        posted = await self._posted(request, lang)
        if isinstance(posted, HTTPResponse):
            return posted
        visitor, user, form = posted
        secret = form.get("secret", "")
        if not SECRET.fullmatch(secret):
            return self._security(request, visitor, user, lang, status=400, error="bad_form")
        step = totp_step(secret, form.get("code", "")[:20])
        if step is None:
            return self._security(request, visitor, user, lang, status=400, error="code_wrong", secret=secret)
        people = self.web.stores.people
        await people.set_totp(user.id, secret)
        await people.use_totp_step(user.id, step)
        return self.web.to("security", lang, done="totp_on")

    async def totp_off(self, request: Request, lang: Language) -> HTTPResponse:
        posted = await self._posted(request, lang)
        if isinstance(posted, HTTPResponse):
            return posted
        visitor, user, form = posted
        step = totp_step(user.totp_secret, form.get("code", "")[:20]) if user.totp_secret else None
        if step is None or not await self.web.stores.people.use_totp_step(user.id, step):
            return self._security(request, visitor, user, lang, status=400, error="code_wrong")
        await self.web.stores.people.set_totp(user.id, None)
        return self.web.to("security", lang, done="totp_off")

    async def password(self, request: Request, lang: Language) -> HTTPResponse:
        posted = await self._posted(request, lang)
        if isinstance(posted, HTTPResponse):
            return posted
        visitor, user, form = posted
        current, new = form.get("current", ""), form.get("password", "")
        if len(current) > PASSWORD_MAX or not await verify_password(user.password_hash, current):
            return self._security(request, visitor, user, lang, status=400, error="current_wrong")
        problem = password_problem(new, user.email)
        if problem:
            return self._security(request, visitor, user, lang, status=400, error=problem)
        # Every session ends with the old password; this browser gets a new one.
        await self.web.stores.people.set_password(user.id, await hash_password(new))
        return await self.web.log_in(request, visitor, user.id, self._path("security", lang) + "?done=password_set")

    # ------------------------------------------------------------------ DSGVO

    async def my_data(self, request: Request, lang: Language) -> HTTPResponse:
        visitor = await self.web.visitor(request)
        if visitor.user is None:
            return self.web.to_login(request, lang)
        return self.web.page(request, visitor, "my_data.html", "my_data", lang, error=None)

    async def export(self, request: Request, lang: Language) -> HTTPResponse:
        web = self.web
        visitor = await web.visitor(request)
        if visitor.user is None:
            return web.to_login(request, lang)
        stores = web.stores
        data = await export_person(stores.store, stores.people, stores.teams, stores.audit, visitor.user)
        return raw(orjson.dumps(data, option=orjson.OPT_INDENT_2), content_type="application/json", headers={
            **web.headers(lang), "Cache-Control": NO_STORE,
            "Content-Disposition": 'attachment; filename="privatai-export.json"'})

    async def delete_me(self, request: Request, lang: Language) -> HTTPResponse:
        posted = await self._posted(request, lang)
        if isinstance(posted, HTTPResponse):
            return posted
        visitor, user, form = posted
        web = self.web
        password = form.get("password", "")
        if len(password) > PASSWORD_MAX or not await verify_password(user.password_hash, password):
            return web.page(request, visitor, "my_data.html", "my_data", lang, status=400, error="current_wrong")
        stores = web.stores
        billing = web.state.billing
        try:
            erased = await delete_person(stores.store, stores.people, stores.teams, user,
                                         billing.end_subscriptions if billing is not None else None)
        except OwnsSharedAccount:
            return web.page(request, visitor, "my_data.html", "my_data", lang, status=409, error="owns_shared")
        except SubscriptionsNotCancelled:
            return web.page(request, visitor, "my_data.html", "my_data", lang, status=503,
                            error="stripe_cancel_failed")
        for account in erased:
            await stores.audit.record(f"user:{user.id}", "delete_account", f"account:{account.id}")
        await stores.audit.record(f"user:{user.id}", "delete_person", f"user:{user.id}")
        response = await web.log_out(request, visitor, lang)
        return response

    @staticmethod
    def _path(name: str, lang: Language) -> str:
        from privatai.portal.pages import BY_NAME
        return BY_NAME[name].paths[lang]
