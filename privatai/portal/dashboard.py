"""The dashboard: an account's plan and status, API keys, usage and team.

Every account page first finds the visitor's membership of the account in
the URL; without one the answer is 404, the same as for an account that does
not exist, so ids cannot be probed. Owners and admins manage keys and
people; members see usage and the keys' list.
"""
from __future__ import annotations

import csv
import io
from datetime import datetime, time, timedelta, timezone
from typing import Any

from sanic import Request
from sanic.response import HTTPResponse, raw

from privatai.billing.errors import SubscriptionsNotCancelled
from privatai.config import PlanConfig
from privatai.config_types import Language
from privatai.portal.chart import Bar, bar_chart, days
from privatai.portal.plan_panel import PlanView, plan_panels
from privatai.portal.web import NO_STORE, Visitor, Web
from privatai.store.names import LABEL_MAX, AdminError, checked
from privatai.store.people import EMAIL_MAX, EmailInvalid, User
from privatai.store.records import Account, utc_now
from privatai.store.teams import MANAGERS, SeatsTaken

CHART_DAYS = 30


def plan_of(plans: list[PlanConfig], name: str) -> PlanConfig | None:
    return next((plan for plan in plans if plan.name == name), None)


class Dashboard:
    def __init__(self, web: Web) -> None:
        self.web = web

    async def _member(self, request: Request, lang: Language, account_id: int
                      ) -> tuple[Visitor, User, Account, str] | HTTPResponse:
        web = self.web
        visitor = await web.visitor(request)
        if visitor.user is None:
            return web.to_login(request, lang) if request.method == "GET" else web.forbidden(request, visitor, lang)
        found = await web.stores.teams.membership(visitor.user.id, account_id)
        if found is None:
            return web.not_found(request, visitor, lang)
        return visitor, visitor.user, found[0], found[1]

    async def _posted(self, request: Request, lang: Language, account_id: int, *, manage: bool = True
                      ) -> tuple[Visitor, User, Account, str, dict[str, str]] | HTTPResponse:
        """A state-changing form on an account: CSRF first, then membership and role."""
        found = await self._member(request, lang, account_id)
        if isinstance(found, HTTPResponse):
            return found
        visitor, user, account, role = found
        form = self.web.posted(request, visitor)
        if form is None:
            return self.web.forbidden(request, visitor, lang)
        if manage and role not in MANAGERS:
            return self.web.notice(request, visitor, lang, "not_allowed", status=403)
        return visitor, user, account, role, form

    # ------------------------------------------------------------------ pages

    async def index(self, request: Request, lang: Language) -> HTTPResponse:
        web = self.web
        visitor = await web.visitor(request)
        if visitor.user is None:
            return web.to_login(request, lang)
        memberships = await web.stores.teams.accounts_of(visitor.user.id)
        if len(memberships) == 1 and not request.args.get("done"):
            return web.to("dashboard", lang, f"/{memberships[0][0].id}")
        return web.page(request, visitor, "dashboard.html", "dashboard", lang, memberships=memberships,
                        done=request.args.get("done"))

    async def account(self, request: Request, lang: Language, account_id: int, *, status: int = 200,
                      **extra: Any) -> HTTPResponse:
        found = await self._member(request, lang, account_id)
        if isinstance(found, HTTPResponse):
            return found
        visitor, user, account, role = found
        return await self._account_page(request, lang, visitor, user, account, role, status=status, **extra)

    async def _account_page(self, request: Request, lang: Language, visitor: Visitor, user: User,
                            account: Account, role: str, *, status: int = 200, **extra: Any) -> HTTPResponse:
        web = self.web
        stores = web.stores
        today = utc_now().date()
        since = today - timedelta(days=CHART_DAYS - 1)
        daily = await stores.usage.daily(account.id, since)
        per_day: dict[str, int] = {}
        per_key_model: dict[tuple[str, str, str], list[int]] = {}
        for row in daily:
            per_day[row.day] = per_day.get(row.day, 0) + row.prompt_tokens + row.completion_tokens
            sums = per_key_model.setdefault((row.key_prefix, row.key_label, row.model), [0, 0, 0])
            sums[0] += row.requests
            sums[1] += row.prompt_tokens
            sums[2] += row.completion_tokens
        t = web.site.catalogs[lang]
        chart = bar_chart([Bar(day, per_day.get(day, 0)) for day in days(today, CHART_DAYS)], t.dash.chart_title)
        plan = plan_of(web.config.plans, account.plan)
        view = PlanView(account, role, plan, lang, visitor.csrf, web.state)
        manage = role in MANAGERS
        context: dict[str, Any] = {
            "account": account, "role": role, "manage": manage, "plan": plan,
            "plan_title": _plan_title(plan, account.plan, lang), "panels": plan_panels(view),
            "keys": await stores.store.list_keys(account.name), "chart": chart,
            "usage_rows": [(prefix, label, model, *sums) for (prefix, label, model), sums in per_key_model.items()],
            "members": await stores.teams.members(account.id),
            "invites": await stores.teams.open_invites(account.id) if manage else [],
            "seats": plan.seats if plan is not None else None, "me": user.id,
            "base": f"{_dashboard_path(lang)}/{account.id}", "new_key": None, "error": None, "values": {},
            "done": request.args.get("done") if request.method == "GET" else None,
        }
        context.update(extra)
        return web.page(request, visitor, "account.html", "dashboard", lang, status=status, **context)

    # ------------------------------------------------------------------ keys

    async def create_key(self, request: Request, lang: Language, account_id: int) -> HTTPResponse:
        posted = await self._posted(request, lang, account_id)
        if isinstance(posted, HTTPResponse):
            return posted
        visitor, user, account, role, form = posted
        values = {"label": form.get("label", "")[:LABEL_MAX], "expires": form.get("expires", "")[:10]}

        async def again(error: str) -> HTTPResponse:
            return await self._account_page(request, lang, visitor, user, account, role, status=400,
                                            error=error, values=values)

        if account.status not in ("active", "past_due"):
            return await again("account_not_active")
        try:
            label = checked(form.get("label", ""), "key label", LABEL_MAX, required=False)
        except AdminError:
            return await again("label_invalid")
        expires = None
        if form.get("expires", "").strip():
            try:
                day = datetime.strptime(form["expires"].strip(), "%Y-%m-%d").date()
            except ValueError:
                return await again("expires_invalid")
            if day <= utc_now().date():
                return await again("expires_past")
            expires = datetime.combine(day, time(), tzinfo=timezone.utc)
        new = await self.web.stores.store.create_key(account.name, label=label, expires_at=expires)
        return await self._account_page(request, lang, visitor, user, account, role, new_key=new)

    async def revoke_key(self, request: Request, lang: Language, account_id: int, key_id: int) -> HTTPResponse:
        posted = await self._posted(request, lang, account_id)
        if isinstance(posted, HTTPResponse):
            return posted
        visitor, _, account, _, _ = posted
        store = self.web.stores.store
        try:
            key = await store.find_key(str(key_id))
        except AdminError:
            return self.web.not_found(request, visitor, lang)
        if key.account_id != account.id:
            return self.web.not_found(request, visitor, lang)
        if key.revoked_at is None:
            await store.revoke_key(str(key.id))
        return self.web.to("dashboard", lang, f"/{account.id}", done="key_revoked")

    async def usage_csv(self, request: Request, lang: Language, account_id: int) -> HTTPResponse:
        found = await self._member(request, lang, account_id)
        if isinstance(found, HTTPResponse):
            return found
        account = found[2]
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\r\n")
        writer.writerow(["day", "key_prefix", "key_label", "model", "requests", "prompt_tokens",
                         "completion_tokens"])
        for row in await self.web.stores.usage.daily(account.id):
            # A label starting with = + - @ would be a formula to a spreadsheet.
            label = "'" + row.key_label if row.key_label[:1] in ("=", "+", "-", "@", "\t", "\r") else row.key_label
            writer.writerow([row.day, row.key_prefix, label, row.model, row.requests, row.prompt_tokens,
                             row.completion_tokens])
        return raw(out.getvalue().encode("utf-8"), content_type="text/csv; charset=utf-8", headers={
            **self.web.headers(lang), "Cache-Control": NO_STORE,
            "Content-Disposition": f'attachment; filename="privatai-usage-{account.id}.csv"'})

    # ------------------------------------------------------------------ team

    async def invite(self, request: Request, lang: Language, account_id: int) -> HTTPResponse:
        posted = await self._posted(request, lang, account_id)
        if isinstance(posted, HTTPResponse):
            return posted
        visitor, user, account, role, form = posted
        web = self.web
        values = {"email": form.get("email", "")[:EMAIL_MAX]}
        invite_role = form.get("role", "member")
        if invite_role not in ("admin", "member"):
            return await self._account_page(request, lang, visitor, user, account, role, status=400,
                                            error="role_invalid", values=values)
        plan = plan_of(web.config.plans, account.plan)
        try:
            token = await web.stores.teams.invite(account.id, form.get("email", ""), invite_role,
                                                  web.config.accounts.invite_lifetime,
                                                  plan.seats if plan is not None else None)
        except EmailInvalid:
            error = "email_invalid"
        except SeatsTaken:
            error = "seats_taken"
        except AdminError:
            error = "already_member"
        else:
            web.mail(values["email"].strip().lower(), lang, "invite", account=account.name,
                     link=web.link("invitation", lang, token=token))
            return web.to("dashboard", lang, f"/{account.id}", done="invited")
        return await self._account_page(request, lang, visitor, user, account, role, status=400,
                                        error=error, values=values)

    async def member_action(self, request: Request, lang: Language, account_id: int, user_id: int,
                            action: str) -> HTTPResponse:
        posted = await self._posted(request, lang, account_id)
        if isinstance(posted, HTTPResponse):
            return posted
        visitor, user, account, role, form = posted
        teams = self.web.stores.teams
        if action == "remove":
            done = await teams.remove_member(account.id, user_id)
        else:
            new_role = form.get("role", "")
            if new_role not in ("admin", "member"):
                return await self._account_page(request, lang, visitor, user, account, role, status=400,
                                                error="role_invalid")
            done = await teams.set_role(account.id, user_id, new_role)
        if not done:
            return self.web.not_found(request, visitor, lang)
        return self.web.to("dashboard", lang, f"/{account.id}", done=f"member_{action}")

    async def cancel_invite(self, request: Request, lang: Language, account_id: int, invite_id: int) -> HTTPResponse:
        posted = await self._posted(request, lang, account_id)
        if isinstance(posted, HTTPResponse):
            return posted
        visitor, _, account, _, _ = posted
        if not await self.web.stores.teams.cancel_invite(account.id, invite_id):
            return self.web.not_found(request, visitor, lang)
        return self.web.to("dashboard", lang, f"/{account.id}", done="invite_cancelled")

    async def invitation(self, request: Request, lang: Language) -> HTTPResponse:
        """The mailed link: shows the invitation; POST (logged in as the invited address) joins."""
        web = self.web
        visitor = await web.visitor(request)
        teams = web.stores.teams
        if request.method == "GET":
            token = request.args.get("token", "")[:100]
        else:
            form = web.posted(request, visitor)
            if form is None:
                return web.forbidden(request, visitor, lang)
            token = form.get("token", "")[:100]
        invite = await teams.invitation(token) if token else None
        if invite is None:
            return web.notice(request, visitor, lang, "link_invalid", status=400, name="invitation")
        account = await teams.account_by_id(invite.account_id)
        if account is None:
            return web.notice(request, visitor, lang, "link_invalid", status=400, name="invitation")
        user = visitor.user
        matches = user is not None and user.email == invite.email
        if request.method == "POST" and matches:
            try:
                await teams.accept(invite, user.id)
            except AdminError:
                return web.notice(request, visitor, lang, "link_invalid", status=400, name="invitation")
            return web.to("dashboard", lang, f"/{account.id}", done="joined")
        back = f"{request.path}?token={token}"
        return web.page(request, visitor, "invitation.html", "invitation", lang, invite=invite, account=account,
                        token=token, matches=matches, back=back)

    async def delete_account(self, request: Request, lang: Language, account_id: int) -> HTTPResponse:
        posted = await self._posted(request, lang, account_id)
        if isinstance(posted, HTTPResponse):
            return posted
        visitor, user, account, role, form = posted
        if role != "owner":
            return self.web.notice(request, visitor, lang, "not_allowed", status=403)
        if form.get("confirm_name", "").strip() != account.name:
            return await self._account_page(request, lang, visitor, user, account, role, status=400,
                                            error="confirm_name")
        stores = self.web.stores
        billing = self.web.state.billing
        try:
            if billing is not None:
                await billing.end_subscriptions([account.id])
        except SubscriptionsNotCancelled:
            return await self._account_page(request, lang, visitor, user, account, role, status=503,
                                            error="stripe_cancel_failed")
        await stores.store.delete_account(account.name)
        await stores.audit.record(f"user:{user.id}", "delete_account", f"account:{account.id}")
        return self.web.to("dashboard", lang, done="account_deleted")


def _dashboard_path(lang: Language) -> str:
    from privatai.portal.pages import BY_NAME
    return BY_NAME["dashboard"].paths[lang]


def _plan_title(plan: PlanConfig | None, name: str, lang: Language) -> str:
    from privatai.portal.i18n import localize
    return localize(plan.title, lang) if plan is not None and plan.title is not None else name
