"""The account pages' routes, in both languages: each page's German and
English address (:data:`privatai.portal.pages.PAGES`) and, under the
dashboard's, the account actions."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Awaitable, Callable
from urllib.parse import urlencode

from sanic import Request, Sanic
from sanic.response import HTTPResponse, redirect

from privatai.config_types import Language
from privatai.portal.i18n import LANGUAGES
from privatai.portal.admin_pages import AdminPages
from privatai.portal.auth_pages import AuthPages
from privatai.portal.dashboard import Dashboard
from privatai.portal.pages import BY_NAME
from privatai.portal.self_service import SelfService
from privatai.portal.web import BadForm, Web

if TYPE_CHECKING:
    from privatai.portal.routes import Site

View = Callable[..., Awaitable[HTTPResponse]]


def register_account_pages(app: Sanic, site: Site) -> None:
    web = Web(site)
    auth, dashboard, me, admin = AuthPages(web), Dashboard(web), SelfService(web), AdminPages(web)
    both = ["GET", "POST"]
    # (page, path under it, methods, view)
    routes: list[tuple[str, str, list[str], View]] = [
        ("signup", "", both, auth.signup),
        ("login", "", both, auth.login),
        ("second_factor", "", both, auth.second_factor),
        ("logout", "", ["POST"], auth.logout),
        ("confirm", "", both, auth.confirm),
        ("forgot", "", both, auth.forgot),
        ("reset", "", both, auth.reset),
        ("invitation", "", both, dashboard.invitation),
        ("dashboard", "", ["GET"], dashboard.index),
        ("dashboard", "/<account_id:int>", ["GET"], dashboard.account),
        ("dashboard", "/<account_id:int>/keys", ["POST"], dashboard.create_key),
        ("dashboard", "/<account_id:int>/keys/<key_id:int>/revoke", ["POST"], dashboard.revoke_key),
        ("dashboard", "/<account_id:int>/usage.csv", ["GET"], dashboard.usage_csv),
        ("dashboard", "/<account_id:int>/invite", ["POST"], dashboard.invite),
        ("dashboard", "/<account_id:int>/invites/<invite_id:int>/cancel", ["POST"], dashboard.cancel_invite),
        ("dashboard", "/<account_id:int>/members/<user_id:int>/<action:remove|role>", ["POST"],
         dashboard.member_action),
        ("dashboard", "/<account_id:int>/delete", ["POST"], dashboard.delete_account),
        ("security", "", ["GET"], me.security),
        ("security", "/totp", ["POST"], me.totp_on),
        ("security", "/totp/off", ["POST"], me.totp_off),
        ("security", "/password", ["POST"], me.password),
        ("my_data", "", ["GET"], me.my_data),
        ("my_data", "/export.json", ["GET"], me.export),
        ("my_data", "/delete", ["POST"], me.delete_me),
        ("admin", "", ["GET"], admin.overview),
        ("admin", "/accounts/<account_id:int>/<action:approve|suspend|activate|delete>", ["POST"], admin.act),
    ]
    if site.state.config.billing.mode == "stripe":
        # Imported only then: it brings stripe-python.
        from privatai.billing.portal import payment_routes
        routes += payment_routes(web)
    for index, (page, suffix, methods, view) in enumerate(routes):
        for lang, path in BY_NAME[page].paths.items():
            app.add_route(_bound(web, view, page, lang), (path + suffix).rstrip("/") or "/", methods=methods,
                          name=f"portal_account_{index}_{lang}")


def _bound(web: Web, view: View, page: str, lang: Language) -> Callable[..., Awaitable[HTTPResponse]]:
    prefix = BY_NAME[page].paths[lang]

    async def handler(request: Request, **params: Any) -> HTTPResponse:
        wanted = request.args.get("lang")
        if request.method == "GET" and wanted in LANGUAGES and wanted != lang:
            # ?lang= switches to the same page in that language, as on the public pages.
            query = urlencode([(k, v) for k, v in request.query_args if k != "lang"])
            target = BY_NAME[page].paths[wanted] + request.path[len(prefix):]
            return redirect(target + (f"?{query}" if query else ""), headers={"Cache-Control": "no-store"})
        try:
            return await view(request, lang, **params)
        except BadForm:
            # A field sent twice or far too long: no page of ours sends that.
            return web.notice(request, await web.visitor(request), lang, "bad_form", status=400, name=page)
    return handler
