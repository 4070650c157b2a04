"""The operator's pages: every account with its status, people and usage,
the backends' health, and the audit log; approve, suspend, reactivate or
delete an account. Only people the CLI made admins (``privatai admins
grant``) see them; anybody else gets 404. Every action is audited."""
from __future__ import annotations

from datetime import timedelta

from sanic import Request
from sanic.response import HTTPResponse

from privatai.billing.errors import SubscriptionsNotCancelled
from privatai.config_types import Language
from privatai.portal.web import Web
from privatai.store.records import utc_now

USAGE_DAYS = 30
# Action -> (the status it sets, the statuses it applies to).
STATUS_ACTIONS = {"approve": ("active", ("pending",)),
                  "suspend": ("suspended", ("active", "past_due", "inactive", "pending")),
                  "activate": ("active", ("suspended",))}


class AdminPages:
    def __init__(self, web: Web) -> None:
        self.web = web

    async def overview(self, request: Request, lang: Language, *, status: int = 200,
                       error: str | None = None) -> HTTPResponse:
        web = self.web
        visitor = await web.visitor(request)
        if visitor.user is None:
            return web.to_login(request, lang)
        if not visitor.user.is_admin:
            return web.not_found(request, visitor, lang)
        stores = web.stores
        since = utc_now().date() - timedelta(days=USAGE_DAYS - 1)
        totals = await stores.usage.totals(since)
        rows = []
        for account in await stores.store.list_accounts():
            members = await stores.teams.members(account.id)
            rows.append((account, len(members), totals.get(account.id)))
        state = web.state
        router = state.router
        backends = [(name, router.health(backend) if state.backends_checked else "unknown")
                    for name, backend in router.backends.items()]
        return web.page(request, visitor, "admin.html", "admin", lang, status=status, rows=rows,
                        backends=backends, audit=await stores.audit.recent(50), days=USAGE_DAYS,
                        error=error, done=request.args.get("done") if request.method == "GET" else None)

    async def act(self, request: Request, lang: Language, account_id: int, action: str) -> HTTPResponse:
        web = self.web
        visitor = await web.visitor(request)
        if web.posted(request, visitor) is None:
            return web.forbidden(request, visitor, lang)
        if visitor.user is None or not visitor.user.is_admin:
            return web.not_found(request, visitor, lang)
        stores = web.stores
        account = await stores.teams.account_by_id(account_id)
        if account is None or (action not in STATUS_ACTIONS and action != "delete"):
            return web.not_found(request, visitor, lang)
        if action == "delete":
            billing = web.state.billing
            try:
                if billing is not None:
                    await billing.end_subscriptions([account.id])
            except SubscriptionsNotCancelled:
                return await self.overview(request, lang, status=503, error="stripe_cancel_failed")
            await stores.store.delete_account(account.name)
            await stores.audit.record(f"user:{visitor.user.id}", "delete_account", f"account:{account.id}")
            return web.to("admin", lang, done="deleted")
        status, applies = STATUS_ACTIONS[action]
        if account.status not in applies:
            return await self.overview(request, lang, status=409, error="status_conflict")
        await stores.store.set_account_status(account.name, status)  # type: ignore[arg-type]
        await stores.audit.record(f"user:{visitor.user.id}", action, f"account:{account.id}")
        return web.to("admin", lang, done=action)
