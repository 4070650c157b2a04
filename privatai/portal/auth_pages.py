"""Sign-up, confirmation, login (with the optional TOTP step), logout and
password reset.

No answer tells whether an address is registered: sign-up says "check your
mail" either way (an existing address gets a mail saying someone tried),
login says "address or password wrong", reset says "if the address is
registered, a mail is on its way". Attempts are throttled per address and
per client before any lookup.
"""
from __future__ import annotations

import secrets
import time

import pyotp
from sanic import Request
from sanic.response import HTTPResponse

from privatai.config import signup_plan
from privatai.config_types import Language
from privatai.portal.pages import BY_NAME
from privatai.portal.passwords import PASSWORD_MAX, hash_password, password_problem, verify_password
from privatai.portal.web import BadForm, Visitor, Web
from privatai.store.names import NAME_MAX, AdminError, checked
from privatai.store.people import EMAIL_MAX, EmailInvalid, normalized_email

TOTP_WINDOW = 1  # one 30 s step either side: clocks drift


def safe_next(value: str | None, lang: Language) -> str:
    """Where to go after login: a path on this site, else the dashboard. A
    full URL, ``//host`` or ``/\\host`` (which browsers read as another host)
    is refused, so a link cannot send someone elsewhere after they log in."""
    fallback = BY_NAME["dashboard"].paths[lang]
    if not value or len(value) > 512 or not value.isascii() or not value.startswith("/"):
        return fallback
    # No escapes either: none of our pages needs one, and a decoding proxy could turn %2F into "/".
    if value[1:2] in ("/", "\\") or any(ch in value for ch in "\\%\r\n\t") or not value.isprintable():
        return fallback
    return value


def totp_step(secret: str, code: str) -> int | None:
    """The time step a code belongs to (within the window), or None."""
    code = code.strip().replace(" ", "")
    if len(code) != 6 or not code.isdigit():
        return None
    totp = pyotp.TOTP(secret)
    now = time.time()
    for offset in range(-TOTP_WINDOW, TOTP_WINDOW + 1):
        moment = now + offset * totp.interval
        if secrets.compare_digest(totp.at(moment), code):
            return int(moment // totp.interval)
    return None


class AuthPages:
    def __init__(self, web: Web) -> None:
        self.web = web

    def _keys(self, request: Request, email: str | None) -> tuple[str, str | None]:
        forwarded = ",".join(request.headers.getall("x-forwarded-for", []))
        throttle = self.web.throttle
        return throttle.client(request.ip or "", forwarded or None), throttle.address(email) if email else None

    def _throttled(self, request: Request, email: str | None) -> float | None:
        """Count an attempt of sign-up or reset; the wait when there were too many."""
        return self.web.throttle.attempt(*self._keys(request, email))

    def _too_many(self, request: Request, visitor: Visitor, lang: Language, name: str,
                  wait: float) -> HTTPResponse:
        minutes = max(1, int(wait // 60) + 1)
        response = self.web.notice(request, visitor, lang, "throttled", status=429, name=name, minutes=minutes)
        response.headers["Retry-After"] = str(int(wait) + 1)
        return response

    # ------------------------------------------------------------------ sign-up

    async def signup(self, request: Request, lang: Language) -> HTTPResponse:
        web = self.web
        visitor = await web.visitor(request)
        if request.method == "GET":
            return web.page(request, visitor, "signup.html", "signup", lang, values={}, error=None)
        try:
            form = web.posted(request, visitor)
        except BadForm:
            return web.page(request, visitor, "signup.html", "signup", lang, status=400, values={},
                            error="bad_form")
        if form is None:
            return web.forbidden(request, visitor, lang)
        values = {"email": form.get("email", "")[:EMAIL_MAX], "account_name": form.get("account_name", "")[:NAME_MAX]}

        def again(error: str) -> HTTPResponse:
            return web.page(request, visitor, "signup.html", "signup", lang, status=400, values=values, error=error)

        try:
            email = normalized_email(form.get("email", ""))
        except EmailInvalid:
            return again("email_invalid")
        password = form.get("password", "")
        problem = password_problem(password, email)
        if problem:
            return again(problem)
        name = form.get("account_name", "").strip() or f"account-{secrets.token_hex(4)}"
        try:
            name = checked(name, "account name", NAME_MAX)
        except AdminError:
            return again("account_name_invalid")
        if form.get("terms") != "yes":
            return again("terms")
        wait = self._throttled(request, email)
        if wait is not None:
            return self._too_many(request, visitor, lang, "signup", wait)
        accounts = web.config.accounts
        # With Stripe, an account is active once its subscription is paid.
        paid_later = web.config.billing.mode == "stripe"
        status = "pending" if accounts.approval else "inactive" if paid_later else "active"
        try:
            user = await web.stores.people.sign_up(email, await hash_password(password), name,
                                                      signup_plan(web.config), status)
        except AdminError:
            return again("account_name_taken")
        if user is None:
            web.mail(email, lang, "already", link=web.link("forgot", lang))
        else:
            token = await web.stores.people.issue_link(user.id, "confirm", accounts.link_lifetime)
            web.mail(email, lang, "confirm", link=web.link("confirm", lang, token=token))
        return web.notice(request, visitor, lang, "check_mail", name="signup")

    async def confirm(self, request: Request, lang: Language) -> HTTPResponse:
        """GET shows a button (mail scanners fetch links); POST confirms."""
        web = self.web
        visitor = await web.visitor(request)
        if request.method == "GET":
            token = request.args.get("token", "")[:100]
            valid = bool(token) and await web.stores.people.link_valid(token, "confirm")
            if not valid:
                return web.notice(request, visitor, lang, "link_invalid", status=400, name="confirm")
            return web.page(request, visitor, "confirm.html", "confirm", lang, token=token)
        form = web.posted(request, visitor)
        if form is None:
            return web.forbidden(request, visitor, lang)
        user_id = await web.stores.people.redeem_link(form.get("token", "")[:100], "confirm")
        if user_id is None:
            return web.notice(request, visitor, lang, "link_invalid", status=400, name="confirm")
        await web.stores.people.confirm(user_id)
        return web.to("login", lang, done="confirmed")

    # ------------------------------------------------------------------ login

    async def login(self, request: Request, lang: Language) -> HTTPResponse:
        web = self.web
        visitor = await web.visitor(request)
        target = safe_next(request.args.get("next"), lang)
        if request.method == "GET":
            if visitor.user is not None:
                return web.to("dashboard", lang)
            return web.page(request, visitor, "login.html", "login", lang, values={}, error=None,
                            next=target, done=request.args.get("done"))
        try:
            form = web.posted(request, visitor)
        except BadForm:
            return web.page(request, visitor, "login.html", "login", lang, status=400, values={},
                            error="bad_form", next=target, done=None)
        if form is None:
            return web.forbidden(request, visitor, lang)
        target = safe_next(form.get("next"), lang)
        email = form.get("email", "")[:EMAIL_MAX]
        password = form.get("password", "")

        def again(error: str, status: int = 400) -> HTTPResponse:
            return web.page(request, visitor, "login.html", "login", lang, status=status,
                            values={"email": email}, error=error, next=target, done=None)

        if not email.strip() or not password:
            return again("login_empty")
        # Failed logins count; a successful one costs nothing, so a person who
        # logs in often is never locked out by their own logins.
        keys = self._keys(request, email)
        wait = web.throttle.blocked(*keys)
        if wait is not None:
            return self._too_many(request, visitor, lang, "login", wait)
        people = web.stores.people
        user = await people.user_by_email(email) if len(password) <= PASSWORD_MAX else None
        if not await verify_password(user.password_hash if user else None, password[:PASSWORD_MAX]) or user is None:
            web.throttle.count(*keys)
            return again("login_wrong", 401)
        if not user.confirmed:
            token = await people.issue_link(user.id, "confirm", web.config.accounts.link_lifetime)
            web.mail(user.email, lang, "confirm", link=web.link("confirm", lang, token=token))
            return again("not_confirmed", 403)
        if user.totp_secret is not None:
            return await web.log_in(request, visitor, user.id,
                                    BY_NAME["second_factor"].paths[lang] + "?next=" + _quote(target),
                                    second_factor_pending=True)
        return await web.log_in(request, visitor, user.id, target)

    async def second_factor(self, request: Request, lang: Language) -> HTTPResponse:
        web = self.web
        visitor = await web.visitor(request)
        session = visitor.session
        if session is None or not session.second_factor_pending:
            return web.to("login", lang)
        target = safe_next(request.args.get("next"), lang)
        if request.method == "GET":
            return web.page(request, visitor, "second_factor.html", "second_factor", lang, error=None, next=target)
        form = web.posted(request, visitor)
        if form is None:
            return web.forbidden(request, visitor, lang)
        target = safe_next(form.get("next"), lang)
        keys = self._keys(request, session.user.email)
        wait = web.throttle.blocked(*keys)
        if wait is not None:
            return self._too_many(request, visitor, lang, "second_factor", wait)
        user = session.user
        step = totp_step(user.totp_secret or "", form.get("code", "")[:20]) if user.totp_secret else None
        if step is None or not await web.stores.people.use_totp_step(user.id, step):
            web.throttle.count(*keys)
            return web.page(request, visitor, "second_factor.html", "second_factor", lang, status=401,
                            error="code_wrong", next=target)
        return await web.log_in(request, visitor, user.id, target)

    async def logout(self, request: Request, lang: Language) -> HTTPResponse:
        web = self.web
        visitor = await web.visitor(request)
        if web.posted(request, visitor) is None:
            return web.forbidden(request, visitor, lang)
        return await web.log_out(request, visitor, lang)

    # ------------------------------------------------------------------ password reset

    async def forgot(self, request: Request, lang: Language) -> HTTPResponse:
        web = self.web
        visitor = await web.visitor(request)
        if request.method == "GET":
            return web.page(request, visitor, "forgot.html", "forgot", lang, values={}, error=None)
        try:
            form = web.posted(request, visitor)
        except BadForm:
            return web.page(request, visitor, "forgot.html", "forgot", lang, status=400, values={}, error="bad_form")
        if form is None:
            return web.forbidden(request, visitor, lang)
        try:
            email = normalized_email(form.get("email", ""))
        except EmailInvalid:
            return web.page(request, visitor, "forgot.html", "forgot", lang, status=400,
                            values={"email": form.get("email", "")[:EMAIL_MAX]}, error="email_invalid")
        wait = self._throttled(request, email)
        if wait is not None:
            return self._too_many(request, visitor, lang, "forgot", wait)
        user = await web.stores.people.user_by_email(email)
        if user is not None:
            token = await web.stores.people.issue_link(user.id, "reset", web.config.accounts.link_lifetime)
            web.mail(user.email, lang, "reset", link=web.link("reset", lang, token=token))
        return web.notice(request, visitor, lang, "reset_sent", name="forgot")

    async def reset(self, request: Request, lang: Language) -> HTTPResponse:
        web = self.web
        visitor = await web.visitor(request)
        people = web.stores.people
        if request.method == "GET":
            token = request.args.get("token", "")[:100]
            if not token or not await people.link_valid(token, "reset"):
                return web.notice(request, visitor, lang, "link_invalid", status=400, name="reset")
            return web.page(request, visitor, "reset.html", "reset", lang, token=token, error=None)
        form = web.posted(request, visitor)
        if form is None:
            return web.forbidden(request, visitor, lang)
        token = form.get("token", "")[:100]
        password = form.get("password", "")
        problem = password_problem(password, "")
        if problem:
            if not await people.link_valid(token, "reset"):
                return web.notice(request, visitor, lang, "link_invalid", status=400, name="reset")
            return web.page(request, visitor, "reset.html", "reset", lang, status=400, token=token, error=problem)
        user_id = await people.redeem_link(token, "reset")
        if user_id is None:
            return web.notice(request, visitor, lang, "link_invalid", status=400, name="reset")
        await people.set_password(user_id, await hash_password(password))
        user = await people.user(user_id)
        if user is not None and not user.confirmed:
            await people.confirm(user_id)  # the link reached the mailbox: the address is confirmed
        return web.to("login", lang, done="password_set")


def _quote(path: str) -> str:
    from urllib.parse import quote
    return quote(path, safe="/")
