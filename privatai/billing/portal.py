"""The dashboard's payment buttons and their routes (billing.mode stripe).

An inactive account's owners and admins see the plans that can be bought
online, each a form posting to ``<account page>/billing/checkout``; an account
with a subscription sees "Manage payment" (``.../billing/portal``). Both
answer with a 303 to Stripe's page. The account pages' own rules apply:
membership of the account, the session's CSRF token, and the owner or admin
role (:meth:`~privatai.portal.dashboard.Dashboard._posted`).
"""
from __future__ import annotations

from typing import Any

from markupsafe import Markup
from sanic import Request
from sanic.response import HTTPResponse, redirect

from privatai.billing.service import Billing, BillingUnavailable
from privatai.config_types import Language
from privatai.errors import PrivatAIError
from privatai.portal.dashboard import Dashboard
from privatai.portal.i18n import localize
from privatai.portal.pages import BY_NAME
from privatai.portal.plan_panel import Panel, PlanView, register_plan_panel
from privatai.portal.web import NO_STORE, Web

_CSRF = Markup('<input type="hidden" name="csrf" value="{}">')
_MANAGE = Markup('<form method="post" action="{}/portal">{}<p>{}</p>'
                 '<button class="button" type="submit" data-billing="portal">{}</button></form>')
_PLAN = Markup('<li><strong>{}</strong> {} <form method="post" action="{}/checkout">{}'
               '<input type="hidden" name="plan" value="{}">'
               '<button class="button" type="submit" data-billing="checkout" data-plan="{}">{}</button></form></li>')
_CHOOSE = Markup('<h3>{}</h3><p>{}</p><ul class="cards">{}</ul><p class="vat-note">{}</p>')


def account_path(lang: Language, account_id: int) -> str:
    return f"{BY_NAME['dashboard'].paths[lang]}/{account_id}"


def payment_panel(catalogs: dict[Language, Any]) -> Panel:
    def panel(view: PlanView) -> Markup | None:
        billing: Billing | None = view.state.billing
        if billing is None or not view.can_manage:
            return None
        t = catalogs[view.lang].billing
        base = f"{account_path(view.lang, view.account.id)}/billing"
        csrf = _CSRF.format(view.csrf)
        if view.account.status in ("active", "past_due"):
            return _MANAGE.format(base, csrf, t.manage_text, t.manage)
        if view.account.status != "inactive":
            return None  # pending approval or suspended: the operator's turn, nothing to buy
        config = view.state.config
        items = Markup("").join(
            _PLAN.format(localize(plan.title, view.lang) if plan.title is not None else plan.name,
                         localize(plan.price, view.lang), base, csrf, plan.name, plan.name, t.subscribe)
            for plan in config.plans if plan.name in billing.config.plans)
        return _CHOOSE.format(t.choose, t.choose_text, items, localize(config.portal.vat_note, view.lang))
    return panel


class PaymentPages(Dashboard):
    """The two payment actions, with the dashboard's checks."""

    async def checkout(self, request: Request, lang: Language, account_id: int) -> HTTPResponse:
        return await self._to_stripe(request, lang, account_id, checkout=True)

    async def manage(self, request: Request, lang: Language, account_id: int) -> HTTPResponse:
        return await self._to_stripe(request, lang, account_id, checkout=False)

    async def _to_stripe(self, request: Request, lang: Language, account_id: int, *, checkout: bool) -> HTTPResponse:
        posted = await self._posted(request, lang, account_id)
        if isinstance(posted, HTTPResponse):
            return posted
        visitor, _, account, _, form = posted
        billing: Billing = self.web.site.state.billing
        back = account_path(lang, account.id)
        try:
            if checkout:
                url = await billing.checkout_url(account, form.get("plan", ""), back)
            else:
                url = await billing.portal_url(account, back)
        except BillingUnavailable:
            return self.web.notice(request, visitor, lang, "billing_unavailable", status=503)
        except PrivatAIError:
            return self.web.notice(request, visitor, lang, "billing_refused", status=400)
        return redirect(url, status=303, headers={"Cache-Control": NO_STORE})


def payment_routes(web: Web) -> list[tuple[str, str, list[str], Any]]:
    """The panel registered, and the routes for the account pages' table (page, path, methods, view)."""
    register_plan_panel(payment_panel(web.site.catalogs))
    pages = PaymentPages(web)
    return [("dashboard", "/<account_id:int>/billing/checkout", ["POST"], pages.checkout),
            ("dashboard", "/<account_id:int>/billing/portal", ["POST"], pages.manage)]
