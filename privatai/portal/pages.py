"""The website's pages and their addresses in each language.

German pages sit at the root with German paths, English ones under ``/en/``:
every address names its language, so a shared link shows the same page to
everyone and no cookie is needed. Only ``/`` itself, where visitors arrive
by typing the domain, follows the browser's ``Accept-Language``.
"""
from __future__ import annotations

from dataclasses import dataclass

from privatai.config_types import Language


@dataclass(frozen=True, slots=True)
class Page:
    name: str
    template: str
    paths: dict[Language, str]
    # Served by the account pages (login, dashboard...), not from the template alone.
    dynamic: bool = False


PAGES: tuple[Page, ...] = (
    Page("home", "home.html", {"de": "/", "en": "/en/"}),
    Page("pricing", "pricing.html", {"de": "/preise", "en": "/en/pricing"}),
    Page("docs", "docs.html", {"de": "/dokumentation", "en": "/en/docs"}),
    Page("imprint", "legal.html", {"de": "/impressum", "en": "/en/imprint"}),
    Page("privacy", "legal.html", {"de": "/datenschutz", "en": "/en/privacy"}),
    # With accounts off (accounts.enabled: false) these two say that sign-up opens soon.
    Page("login", "soon.html", {"de": "/anmelden", "en": "/en/login"}, dynamic=True),
    Page("signup", "soon.html", {"de": "/registrieren", "en": "/en/signup"}, dynamic=True),
    Page("logout", "", {"de": "/abmelden", "en": "/en/logout"}, dynamic=True),
    Page("second_factor", "", {"de": "/anmelden/code", "en": "/en/login/code"}, dynamic=True),
    Page("confirm", "", {"de": "/bestaetigen", "en": "/en/confirm"}, dynamic=True),
    Page("forgot", "", {"de": "/passwort-vergessen", "en": "/en/forgot-password"}, dynamic=True),
    Page("reset", "", {"de": "/passwort-neu", "en": "/en/new-password"}, dynamic=True),
    Page("invitation", "", {"de": "/einladung", "en": "/en/invitation"}, dynamic=True),
    Page("dashboard", "", {"de": "/konto", "en": "/en/account"}, dynamic=True),
    Page("security", "", {"de": "/konto/sicherheit", "en": "/en/account/security"}, dynamic=True),
    Page("my_data", "", {"de": "/konto/daten", "en": "/en/account/data"}, dynamic=True),
    Page("admin", "", {"de": "/admin", "en": "/en/admin"}, dynamic=True),
)
BY_NAME = {page.name: page for page in PAGES}


def href(name: str, lang: Language) -> str:
    """Where a link to a page in a language points. The German home page
    carries ``?lang=de``: a plain ``/`` would follow the browser's language
    and could switch a visitor who chose German back to English."""
    path = BY_NAME[name].paths[lang]
    return "/?lang=de" if path == "/" else path
