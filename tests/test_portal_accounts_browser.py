"""A new visitor in headless Chromium, as the issue walks it: landing page ->
sign up -> the confirmation mail arrives at the local SMTP server -> confirm
-> log in -> create a key -> the key answers a chat completion through the
OpenAI SDK -> the dashboard shows the usage -> invite a member, who accepts
and sees the usage -> export -> delete the account -> the key gets 401.
A screenshot of each page goes to ``test-artifacts/``."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterator

import openai
import pytest

from tests.conftest import CHROMIUM
from tests.fakes import FAKES
from tests.gateway import Gateway
from tests.mailbox import Mailbox, mailbox  # noqa: F401 - the fixture
from tests.portal_helpers import MODEL, site_gateway

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium")]

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
PASSWORD = "ein sehr geheimes Passwort"
WATCH_CSP = """
window.__cspViolations = [];
document.addEventListener('securitypolicyviolation', (e) => {
  window.__cspViolations.push(e.violatedDirective + ' ' + e.blockedURI);
});
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, mailbox: Mailbox) -> Iterator[Gateway]:
    with FAKES["llamacpp"]() as fake:
        gateway = site_gateway(tmp_path_factory.mktemp("accounts-browser"), fake,
                               plans=[{"name": "team", "title": "Team", "price": "49 €", "seats": 3}],
                               accounts={"smtp": mailbox.smtp}, store={"flush_interval": 0.2})
        with gateway:
            yield gateway


class Person:
    def __init__(self, browser: Any, site: Gateway, name: str) -> None:
        self.context = browser.new_context(locale="de-DE", viewport={"width": 1280, "height": 900},
                                           accept_downloads=True)
        self.page = self.context.new_page()
        self.page.set_default_timeout(20_000)
        self.page.add_init_script(WATCH_CSP)
        self.problems: list[str] = []
        self.page.on("pageerror", lambda e: self.problems.append(f"pageerror: {e}"))
        self.page.on("request", lambda r: None if r.url.startswith((site.url, "data:"))
                     else self.problems.append(f"request to another host: {r.url}"))
        self.name, self.step = name, 0

    def shot(self, what: str) -> None:
        self.step += 1
        ARTIFACTS.mkdir(exist_ok=True)
        self.page.screenshot(path=str(ARTIFACTS / f"accounts-{self.name}-{self.step:02d}-{what}.png"),
                             full_page=True)
        assert not self.page.evaluate("window.__cspViolations || []")

    def fill(self, label: str, value: str) -> None:
        self.page.get_by_label(label, exact=False).first.fill(value)

    def button(self, name: str) -> None:
        self.page.get_by_role("button", name=name).first.click()
        self.page.wait_for_load_state()

    def sign_up_and_log_in(self, site: Gateway, mailbox: Mailbox, email: str, mail_number: int = 1) -> None:
        page = self.page
        page.goto(site.url + "/")
        self.shot("landing")
        page.get_by_role("navigation", name="Hauptnavigation").get_by_role("link", name="Registrieren").click()
        self.fill("E-Mail-Adresse", email)
        self.fill("Passwort", PASSWORD)
        page.get_by_role("checkbox").check()
        self.shot("signup")
        self.button("Konto erstellen")
        assert "Fast geschafft" in page.locator("main").inner_text()
        self.shot("check-mail")
        page.goto(mailbox.link(email, mail_number))
        self.shot("confirm")
        self.button("E-Mail-Adresse bestätigen")
        assert "bestätigt" in page.locator("main").inner_text()
        self.fill("E-Mail-Adresse", email)
        self.fill("Passwort", PASSWORD)
        self.shot("login")
        self.button("Anmelden")


def test_a_visitor_signs_up_uses_a_key_builds_a_team_and_leaves(browser: Any, site: Gateway,
                                                                 mailbox: Mailbox) -> None:
    owner = Person(browser, site, "owner")
    member = Person(browser, site, "member")
    try:
        page = owner.page
        owner.sign_up_and_log_in(site, mailbox, "owner@walk.test")
        assert re.fullmatch(rf"{site.url}/konto/\d+", page.url)
        account_url = page.url
        owner.shot("dashboard")

        owner.fill("Bezeichnung", "Laptop")
        owner.button("Schlüssel erstellen")
        key = page.locator("#new-key").inner_text()
        assert key.startswith("privat_")
        owner.shot("key-created")

        api = openai.OpenAI(base_url=site.base_url, api_key=key, max_retries=0, timeout=30)
        answer = api.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hallo"}])
        assert answer.choices[0].message.content
        for _ in range(50):
            page.goto(account_url)
            if page.locator("table.usage").count():
                break
            page.wait_for_timeout(200)
        row = page.locator("table.usage tbody tr").first.inner_text()
        assert "Laptop" in row and MODEL in row and str(answer.usage.prompt_tokens) in row
        assert page.locator("svg.chart rect.bar").count() == 30
        owner.shot("usage")

        owner.fill("E-Mail-Adresse", "member@walk.test")
        owner.button("Einladen")
        assert "verschickt" in page.locator("main").inner_text()
        owner.shot("invited")

        invitation = mailbox.link("member@walk.test")
        member.sign_up_and_log_in(site, mailbox, "member@walk.test", mail_number=2)
        member.page.goto(invitation)
        member.shot("invitation")
        member.button("Dem Konto beitreten")
        assert member.page.url.startswith(account_url)
        text = member.page.locator("main").inner_text()
        assert "Laptop" in text and "Mitglied" in text
        assert member.page.get_by_role("button", name="Schlüssel erstellen").count() == 0
        member.shot("member-dashboard")

        page.goto(site.url + "/konto/daten")
        owner.shot("my-data")
        with page.expect_download() as download:
            page.get_by_role("link", name="Alles als JSON herunterladen").click()
        export = json.loads(Path(download.value.path()).read_text())
        assert export["person"]["email"] == "owner@walk.test"
        assert [a["keys"][0]["label"] for a in export["accounts"]] == ["Laptop"]

        page.goto(account_url)
        name = page.locator("h1").inner_text()
        owner.fill("Namen des Kontos", name)
        owner.shot("delete")
        owner.button("Konto mit allen Schlüsseln und Nutzungsdaten löschen")
        assert "gelöscht" in page.locator("main").inner_text()
        owner.shot("deleted")
        with pytest.raises(openai.AuthenticationError):
            api.models.list()
        member.page.goto(account_url)
        assert "keinen Zugriff" in member.page.locator("main").inner_text()
        assert not owner.problems and not member.problems, owner.problems + member.problems
    finally:
        owner.context.close()
        member.context.close()
