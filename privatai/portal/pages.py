"""The website's pages and their addresses in each language.

German pages sit at the root with German paths, English ones under ``/en/``:
every address names its language, so a shared link shows the same page to
everyone and no cookie is needed. Only ``/`` itself, where visitors arrive
by typing the domain, follows the browser's ``Accept-Language``.
"""
from __future__ import annotations

from dataclasses import dataclass

from privatai.config import Language


@dataclass(frozen=True, slots=True)
class Page:
    name: str
    template: str
    paths: dict[Language, str]


PAGES: tuple[Page, ...] = (
    Page("home", "home.html", {"de": "/", "en": "/en/"}),
    Page("pricing", "pricing.html", {"de": "/preise", "en": "/en/pricing"}),
    Page("docs", "docs.html", {"de": "/dokumentation", "en": "/en/docs"}),
    Page("imprint", "legal.html", {"de": "/impressum", "en": "/en/imprint"}),
    Page("privacy", "legal.html", {"de": "/datenschutz", "en": "/en/privacy"}),
    # Accounts come in a later step; until then these say that sign-up opens soon.
    Page("login", "soon.html", {"de": "/anmelden", "en": "/en/login"}),
    Page("signup", "soon.html", {"de": "/registrieren", "en": "/en/signup"}),
)
BY_NAME = {page.name: page for page in PAGES}


def href(name: str, lang: Language) -> str:
    """Where a link to a page in a language points. The German home page
    carries ``?lang=de``: a plain ``/`` would follow the browser's language
    and could switch a visitor who chose German back to English."""
    path = BY_NAME[name].paths[lang]
    return "/?lang=de" if path == "/" else path
