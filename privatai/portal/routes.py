"""The portal's routes: every page in both languages, and its stylesheet.

Pages are rendered on the server with Jinja2 (autoescape on, undefined names
an error) and need no JavaScript. They carry the web chat's strict CSP and
security headers, so they load nothing from elsewhere and nothing inline;
only ``form-action`` differs: the portal's forms post to its own origin.
"""
from __future__ import annotations

import re
from functools import partial
from pathlib import Path
from typing import Any, Awaitable, Callable

import jinja2
from markupsafe import Markup, escape
from sanic import Request, Sanic
from sanic.response import HTTPResponse, html, redirect

from privatai.api.webchat import CSP, SECURITY_HEADERS, StaticFile, load_static, serve_static
from privatai.config_types import Language
from privatai.errors import NotFound
from privatai.portal.examples import Examples, load_examples
from privatai.portal.i18n import DEFAULT, LANGUAGES, load_catalogs, negotiate
from privatai.portal.pages import PAGES, Page, href
from privatai.portal.account_routes import register_account_pages
from privatai.portal.views import page_context
from privatai.state import AppState

PACKAGE_DIR = Path(__file__).resolve().parent
STATIC_PATH = "/static"
# Pages depend on the request's origin (the examples) and, at /, on
# Accept-Language: never reuse one visitor's copy for another without asking.
CACHE_CONTROL = "no-cache"

_CODE = re.compile(r"`([^`]+)`")

PORTAL_CSP = CSP.replace("form-action 'none'", "form-action 'self'")
PAGE_HEADERS = {"Content-Security-Policy": PORTAL_CSP, **SECURITY_HEADERS}

Handler = Callable[[Request], Awaitable[HTTPResponse]]


def inline_code(text: str) -> Markup:
    """A catalog text with `backticks` as <code>; escaped first, so the text
    cannot bring markup of its own."""
    return Markup(_CODE.sub(lambda match: f"<code>{match.group(1)}</code>", str(escape(text))))


def environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(PACKAGE_DIR / "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    env.filters["code"] = inline_code
    return env


class Site:
    """The rendered website: templates, catalogs, examples and the stylesheet,
    all loaded once when the app is built."""

    def __init__(self, state: AppState) -> None:
        self.state = state
        self.templates = environment()
        self.catalogs = load_catalogs()
        self.examples: Examples = load_examples()
        self.static: dict[str, StaticFile] = load_static(PACKAGE_DIR / "static", page=None)

    def render(self, page: Page, lang: Language, request: Request) -> str:
        return self.render_template(page.template, page.name, lang,
                                    page_context(page.name, lang, request, self.state, self.examples))

    def render_template(self, template: str, page: str, lang: Language, context: dict[str, Any]) -> str:
        """A template with what every page has (language, texts, links) and ``context``."""
        other = next(language for language in LANGUAGES if language != lang)
        config = self.state.config
        full: dict[str, Any] = {
            "lang": lang, "other": other, "t": self.catalogs[lang], "page": page,
            "href": partial(_href, lang), "languages": LANGUAGES,
            "web_chat": config.web_chat.enabled, "contact_email": config.portal.contact_email,
            "static": STATIC_PATH, "accounts": config.accounts.enabled, "user": None,
            **context,
        }
        return self.templates.get_template(template).render(full)

    def handler(self, page: Page, lang: Language) -> Handler:
        async def serve(request: Request) -> HTTPResponse:
            headers = {**PAGE_HEADERS, "Cache-Control": CACHE_CONTROL, "Content-Language": lang}
            wanted = request.args.get("lang")
            if wanted in LANGUAGES and wanted != lang:
                # ?lang= switches to the same page in that language.
                return redirect(href(page.name, wanted), headers=headers)
            if page.name == "home" and lang == DEFAULT:
                # Only / follows the browser's language, and only without a choice in ?lang=.
                headers["Vary"] = "Accept-Language"
                preferred = negotiate(request.headers.get("accept-language"))
                if wanted not in LANGUAGES and preferred != DEFAULT:
                    return redirect(href(page.name, preferred), headers=headers)
            return html(self.render(page, lang, request), headers=headers)

        return serve

    async def stylesheet(self, request: Request, name: str) -> HTTPResponse:
        file = self.static.get(name)
        if file is None:
            raise NotFound("Unknown file.")
        return serve_static(request, file)


def _href(lang: Language, name: str, language: Language | None = None) -> str:
    return href(name, language or lang)


def register(app: Sanic) -> None:
    """Add the website when ``portal.enabled`` (a change needs a restart)."""
    state: AppState = app.ctx.state
    if not state.config.portal.enabled:
        return
    site = Site(state)
    accounts = state.config.accounts.enabled
    for page in PAGES:
        if page.dynamic and accounts:
            continue  # served by the account pages below
        if page.dynamic and page.template != "soon.html":
            continue
        for lang, path in page.paths.items():
            # Sanic matches with or without a trailing slash: /en/ is /en.
            app.add_route(site.handler(page, lang), path.rstrip("/") or "/", methods=["GET"],
                          name=f"portal_{page.name}_{lang}")
    app.add_route(site.stylesheet, f"{STATIC_PATH}/<name>", methods=["GET"], name="portal_static")
    if accounts:
        register_account_pages(app, site)
