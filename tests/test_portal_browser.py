"""A visitor walks the website in headless Chromium: landing page -> pricing ->
documentation -> web chat -> imprint, in German and English, on a phone and a
desktop, with a screenshot of each page in ``test-artifacts/``.

The real gateway serves the site (in front of a fake backend: the walk needs
no model); the legal directory holds the shipped templates from
``deploy/legal/``, as an operator who copied them would have it.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.conftest import CHROMIUM
from tests.fakes import FAKES
from tests.gateway import Gateway
from tests.portal_helpers import site_gateway

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium")]

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
PHONE = {"viewport": {"width": 390, "height": 844}, "device_scale_factor": 2, "is_mobile": True,
         "has_touch": True}
DESKTOP = {"viewport": {"width": 1280, "height": 900}}
# Recorded before any page script could run (devtools scripts are exempt from the CSP).
WATCH_CSP = """
window.__cspViolations = [];
document.addEventListener('securitypolicyviolation', (e) => {
  window.__cspViolations.push(e.violatedDirective + ' ' + e.blockedURI);
});
"""


@dataclass(frozen=True)
class Words:
    """What the visitor reads and clicks, per language."""

    locale: str
    home: str
    nav: str
    pricing: str
    pricing_title: str
    docs: str
    docs_title: str
    webchat: str
    footer: str
    imprint: str
    template_marker: str


GERMAN = Words("de-DE", "/", "Hauptnavigation", "Preise", "Einfache Preise", "Dokumentation",
               "API-Dokumentation", "Web-Chat", "Rechtliches", "Impressum", "VORLAGE: ersetzen.")
ENGLISH = Words("en-US", "/en/", "Main navigation", "Pricing", "Simple pricing", "Documentation",
                "API documentation", "Web chat", "Legal", "Imprint", "TEMPLATE (VORLAGE): replace.")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    workdir = tmp_path_factory.mktemp("portal-browser")
    shutil.copytree(ROOT / "deploy" / "legal", workdir / "legal")
    with FAKES["llamacpp"]() as fake:
        with site_gateway(workdir, fake) as gateway:
            yield gateway


class Visit:
    def __init__(self, browser: Any, site: Gateway, words: Words, device: str) -> None:
        options = PHONE if device == "phone" else DESKTOP
        self.context = browser.new_context(locale=words.locale, **options)
        self.page = self.context.new_page()
        self.page.set_default_timeout(15_000)
        self.page.add_init_script(WATCH_CSP)
        self.problems: list[str] = []
        self.page.on("console", lambda m: self.problems.append(f"{m.type}: {m.text}")
                     if m.type in ("error", "warning") else None)
        self.page.on("pageerror", lambda e: self.problems.append(f"pageerror: {e}"))
        self.page.on("request", lambda r: None if r.url.startswith((site.url, "data:"))
                     else self.problems.append(f"request to another host: {r.url}"))
        self.site, self.words, self.name = site, words, f"{words.locale[:2]}-{device}"
        self.step = 0

    def shot(self, what: str) -> None:
        """A full-page screenshot, after checking the page fits the screen's width."""
        self.step += 1
        ARTIFACTS.mkdir(exist_ok=True)
        self.page.screenshot(path=str(ARTIFACTS / f"portal-{self.name}-{self.step}-{what}.png"), full_page=True)
        width = self.page.evaluate("document.documentElement.scrollWidth")
        viewport = self.page.evaluate("window.innerWidth")
        assert width <= viewport, f"{what}: the page is {width}px wide on a {viewport}px screen"
        violations = self.page.evaluate("window.__cspViolations || []")
        assert not violations, violations

    def nav(self, name: str) -> None:
        self.page.get_by_role("navigation", name=self.words.nav).get_by_role("link", name=name,
                                                                            exact=True).click()


@pytest.mark.parametrize("device", ["phone", "desktop"])
@pytest.mark.parametrize("words", [GERMAN, ENGLISH], ids=["de", "en"])
def test_visitor_walks_the_site(browser: Any, site: Gateway, words: Words, device: str) -> None:
    visit = Visit(browser, site, words, device)
    page = visit.page
    lang = words.locale[:2]
    try:
        # The browser's language decides where / leads.
        page.goto(site.url + "/")
        assert page.evaluate("document.documentElement.lang") == lang
        assert page.url == site.url + words.home
        assert page.locator("h1").inner_text() in ("LLM API für Entwickler", "LLM API for developers")
        quick = page.locator("[data-example='chat-stream.curl.sh']")
        assert f"{site.url}/api/v1/chat/completions" in quick.inner_text()
        visit.shot("home")

        visit.nav(words.pricing)
        page.wait_for_selector("h1")
        assert page.locator("h1").inner_text() == words.pricing_title
        assert page.locator("[data-plan]").count() == 2
        assert page.locator("[data-plan='pro'] h2").inner_text() == "Pro"
        assert page.locator("[data-plan='enterprise'] h2").inner_text() == "Enterprise"
        visit.shot("pricing")

        visit.nav(words.docs)
        assert page.locator("h1").inner_text() == words.docs_title
        code = page.locator("[data-example='chat-stream.fetch.mjs']")
        assert f'fetch("{site.url}/api/v1/chat/completions"' in code.inner_text()
        # A long code line scrolls inside its box rather than widening the page.
        visit.shot("docs")

        visit.nav(words.webchat)
        page.wait_for_url(site.url + "/webchat")
        page.wait_for_selector("[data-testid=prompt]")
        visit.shot("webchat")
        page.go_back()
        page.wait_for_selector("h1")

        page.get_by_role("navigation", name=words.footer).get_by_role("link", name=words.imprint).click()
        assert page.locator("h1").inner_text() == words.imprint
        # The shipped template says plainly that it is one.
        assert words.template_marker in page.locator(".legal-text").inner_text()
        visit.shot("imprint")

        # The switch in the header leads to the same page in the other language.
        page.locator("header a.lang").click()
        other = "en" if lang == "de" else "de"
        assert page.evaluate("document.documentElement.lang") == other
        assert page.locator("h1").inner_text() in ("Impressum", "Imprint")
        assert not visit.problems, visit.problems
    finally:
        visit.context.close()
