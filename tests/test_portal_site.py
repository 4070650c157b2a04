"""The public website over HTTP, from the real gateway process.

The gateway runs in front of a fake backend (the site needs no model); its
configuration carries hostile operator text (plans, notes, legal files) to
show that nothing an operator types can put markup into a page.
"""
from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

import httpx
import pytest
import yaml

from tests.fakes import FAKES
from tests.gateway import Gateway, LocalGateway
from tests.portal_helpers import CSP, MODEL, PAGES, PATHS, example_files, parse, site_config, site_gateway, urls

HOSTILE = '<script>alert("x")</script>'
ESCAPED = "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;"
CONTACT = "hallo@example.de"
PLANS = [
    {"name": "starter", "title": {"de": "Starter " + HOSTILE, "en": "Starter EN"},
     "price": {"de": "9 €", "en": "€9"}, "price_note": {"de": "pro Monat", "en": "per month"},
     "features": ["API " + HOSTILE, {"de": "Nur auf Deutsch"}, {"de": "Streaming", "en": "Streaming EN"}],
     "highlight": True},
    {"name": "team", "title": "Team", "price": "Individuell", "description": "Für Teams",
     "features": ["Alles aus Starter"], "contact": True},
]
VAT = {"de": "Preise zzgl. 19 % USt. " + HOSTILE, "en": "Prices plus 19% VAT."}
# Elements that could run, load or send anything; a page never has them.
ACTIVE = {"script", "img", "iframe", "style", "form", "input", "object", "embed", "frame", "base", "meta"}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    workdir = tmp_path_factory.mktemp("portal-site")
    (workdir / "legal").mkdir()
    with FAKES["llamacpp"]() as fake:
        # Every logger at DEBUG: what visitors send must not reach a log even then.
        gateway = site_gateway(workdir, fake, plans=PLANS,
                               portal={"legal_dir": "legal", "contact_email": CONTACT, "vat_note": VAT},
                               logging={"level": "DEBUG", "third_party_level": "DEBUG"})
        with gateway:
            yield gateway


@pytest.fixture
def legal(site: Gateway) -> Iterator[Path]:
    """The operator's legal directory, empty before and after each test."""
    directory = site.workdir / "legal"

    def clear() -> None:
        for path in directory.iterdir():
            path.unlink()

    clear()
    yield directory
    clear()


def assert_inert(html: str) -> None:
    """Whatever an operator wrote, the page has no element or attribute that acts."""
    for tag, attributes in parse(html).tags:
        assert tag not in ACTIVE or (tag == "meta" and "http-equiv" not in attributes), tag
        assert not [name for name in attributes if name.startswith("on")], (tag, attributes)
    for tag, name, value in urls(html):
        assert urlsplit(value).scheme in ("", "http", "https", "mailto") or value == "data:,", value


# One SSL context for all the one-off requests (each its own client, so no
# cookie carries over): httpx builds one per client otherwise, ~50 ms of CPU.
SSL = httpx.create_ssl_context()


def get(site: Gateway, path: str, **headers: str) -> httpx.Response:
    return httpx.get(site.url + path, headers=headers, timeout=30, verify=SSL)


def page(site: Gateway, path: str) -> str:
    """A page as a German-speaking browser gets it."""
    response = get(site, path, **{"Accept-Language": "de-DE,de;q=0.9"})
    assert response.status_code == 200, (path, response.status_code, response.text[:300])
    return response.text


# ---------------------------------------------------------------------------
# Every page


@pytest.mark.parametrize("path", PATHS)
def test_every_page_has_the_csp_security_headers_and_a_phone_viewport(site: Gateway, path: str) -> None:
    response = get(site, path)
    assert response.status_code == 200, response.text[:300]
    lang = "en" if path.startswith("/en/") else "de"
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.headers["content-security-policy"] == CSP
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["content-language"] == lang
    # Account pages carry a form cookie and its token: never stored by a cache.
    account_page = path in ("/anmelden", "/en/login", "/registrieren", "/en/signup")
    assert response.headers["cache-control"] == ("no-store" if account_page else "no-cache")
    html = response.text
    assert html.startswith("<!doctype html>")
    assert f'<html lang="{lang}">' in html
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in html
    assert '<link rel="stylesheet" href="/static/site.css">' in html
    tags = parse(html).tags
    # The CSP forbids inline scripts and styles: there must be none to block.
    assert not [t for t, _ in tags if t in ("script", "style")]
    assert not [a for _, a in tags if "style" in a or any(n.startswith("on") for n in a)]
    # Every page has the navigation with the later account entries and the legal links.
    hrefs = {a.get("href") for t, a in tags if t == "a"}
    expected = {"/preise", "/dokumentation", "/anmelden", "/registrieren", "/impressum", "/datenschutz",
                "/webchat"} if lang == "de" else {
        "/en/pricing", "/en/docs", "/en/login", "/en/signup", "/en/imprint", "/en/privacy", "/webchat"}
    assert expected <= hrefs


def test_no_page_refers_to_another_host(site: Gateway, legal: Path) -> None:
    (legal / "impressum.de.md").write_text("Muster GmbH\\\nMusterstraße 1\n\n" + HOSTILE
                                           + '\n\n<img src="https://evil.example/p.png">\n')
    (legal / "datenschutz.de.html").write_text(
        '<p>Text</p><img src="//evil.example/p.png"><link rel="stylesheet" href="https://evil.example/x.css">'
        '<iframe src="https://evil.example/"></iframe>')
    for path in PATHS:
        for tag, name, value in urls(page(site, path)):
            parts = urlsplit(value)
            if parts.scheme == "mailto":
                assert value == f"mailto:{CONTACT}"
            elif parts.scheme == "data":
                assert (tag, value) == ("link", "data:,"), "only the empty favicon"
            else:
                assert not parts.scheme and not parts.netloc, f"{path}: <{tag} {name}={value!r}>"
    css = get(site, "/static/site.css").text
    assert "url(" not in css and "@import" not in css


def test_every_link_on_every_page_leads_somewhere(site: Gateway) -> None:
    """No dead links: each internal address answers 200 (after a language
    redirect), and each #fragment names an element on its page."""
    seen: dict[str, int] = {}
    for path in PATHS:
        html = page(site, path)
        ids = {a["id"] for _, a in parse(html).tags if a.get("id")}
        for tag, name, value in urls(html):
            if value.startswith("#"):
                assert value[1:] in ids, f"{path}: {value}"
            elif value.startswith("/") and value not in seen:
                response = httpx.get(site.url + value, follow_redirects=True, timeout=30, verify=SSL)
                seen[value] = response.status_code
    assert seen and all(status == 200 for status in seen.values()), seen


# ---------------------------------------------------------------------------
# Languages


def test_root_follows_the_browsers_language_unless_the_visitor_chose(site: Gateway) -> None:
    german = get(site, "/")
    assert german.status_code == 200 and '<html lang="de">' in german.text
    assert german.headers["vary"] == "Accept-Language"
    assert ">Preise</a>" in german.text
    for header in ("en-US,en;q=0.9,de;q=0.8", "en", "fr-FR, en;q=0.5, de;q=0.3"):
        english = get(site, "/", **{"Accept-Language": header})
        assert english.status_code == 302 and english.headers["location"] == "/en/", header
        assert english.headers["vary"] == "Accept-Language"
    for header in ("de-DE", "fr, de;q=0.5, en;q=0.3", "en;q=0.1, de", "*"):
        assert '<html lang="de">' in get(site, "/", **{"Accept-Language": header}).text, header
    # A visitor who chose German keeps it, whatever the browser prefers.
    chosen = get(site, "/?lang=de", **{"Accept-Language": "en"})
    assert chosen.status_code == 200 and '<html lang="de">' in chosen.text
    assert ">Pricing</a>" in get(site, "/en/", **{"Accept-Language": "de"}).text


@pytest.mark.parametrize(("name", "de", "en"), PAGES)
def test_the_language_switch_leads_to_the_same_page_in_the_other_language(
        site: Gateway, name: str, de: str, en: str) -> None:
    with httpx.Client(base_url=site.url, follow_redirects=True, timeout=30,
                      headers={"Accept-Language": "en"}) as browser:
        for start, target_lang, target in ((de + "?lang=de" if de == "/" else de, "en", en),
                                           (en, "de", de)):
            html = browser.get(start).text
            switch = [a["href"] for t, a in parse(html).tags if t == "a" and a.get("class") == "lang"]
            assert len(switch) == 1, start
            landed = browser.get(switch[0])
            assert landed.status_code == 200
            assert f'<html lang="{target_lang}">' in landed.text, (start, switch[0])
            assert landed.url.path == target, (start, landed.url)
    # ?lang= on any page switches it as well.
    switched = get(site, de + "?lang=en")
    assert switched.status_code == 302 and switched.headers["location"] == en
    back = get(site, en + "?lang=de")
    assert back.status_code == 302 and back.headers["location"] == ("/?lang=de" if de == "/" else de)


# ---------------------------------------------------------------------------
# Pricing


def plan_cards(html: str) -> list[str]:
    return re.findall(r'<li class="plan[^"]*" data-plan="[^"]+">.*?</a>\s*</li>', html, re.S)


def test_pricing_shows_the_configured_plans_escaped_in_both_languages(site: Gateway) -> None:
    html = page(site, "/preise")
    assert_inert(html)
    cards = plan_cards(html)
    assert [re.search(r'data-plan="([^"]+)"', c).group(1) for c in cards] == ["starter", "team"]
    starter, team = cards
    assert 'class="plan highlight"' in starter and "Empfohlen" in starter
    assert f"<h2>Starter {ESCAPED}</h2>" in starter
    assert '<span class="amount">9 €</span> <span class="note">pro Monat</span>' in starter
    assert f"<li>API {ESCAPED}</li>" in starter and "<li>Nur auf Deutsch</li>" in starter
    assert 'href="/registrieren">Registrieren</a>' in starter
    assert "highlight" not in team.split(">")[0]
    assert "<p>Für Teams</p>" in team and '<span class="amount">Individuell</span>' in team
    assert f'href="mailto:{CONTACT}">Kontakt aufnehmen</a>' in team
    assert f'<p class="vat">Preise zzgl. 19 % USt. {ESCAPED}</p>' in html

    english = page(site, "/en/pricing")
    starter, team = plan_cards(english)
    assert "<h2>Starter EN</h2>" in starter and "€9" in starter and "per month" in starter
    # A feature written in German only shows in German on the English page too.
    assert "<li>Nur auf Deutsch</li>" in starter and "<li>Streaming EN</li>" in starter
    assert 'href="/en/signup">Sign up</a>' in starter
    assert f'href="mailto:{CONTACT}">Get in touch</a>' in team
    assert '<p class="vat">Prices plus 19% VAT.</p>' in english


def test_pricing_follows_a_reload_and_defaults_to_the_seeds_offer(site: Gateway) -> None:
    original = site.config_path.read_text()
    config = yaml.safe_load(original)
    del config["plans"]
    config["portal"] = {"legal_dir": "legal"}
    try:
        site.config_path.write_text(yaml.safe_dump(config))
        site.cli("reload", "--pid", str(site.proc.pid))
        html = wait_for(site, "/preise", "Enterprise")
        pro, enterprise = plan_cards(html)
        assert "<h2>Pro</h2>" in pro and 'class="plan highlight"' in pro
        assert "Unbegrenzte API-Anfragen, nur durch die Serverkapazität begrenzt" in pro
        assert '<span class="amount">Individuell</span>' in enterprise
        for feature in ("Alles aus Pro", "Mehrere Plätze / Team-Zugang", "Dedizierte Infrastruktur",
                        "Individuelle Modell-Anpassung", "Prioritäts-Support"):
            assert f"<li>{feature}</li>" in enterprise
        assert "Maßgeschneiderte Lösungen für Ihr Unternehmen." in enterprise
        # Without a contact address, "get in touch" leads to the imprint.
        assert 'href="/impressum">Kontakt aufnehmen</a>' in enterprise
        assert '<p class="vat">Alle Preise zzgl. 19 % Umsatzsteuer.</p>' in html
        assert "<li>Several seats / team access</li>" in page(site, "/en/pricing")
    finally:
        site.config_path.write_text(original)
        site.cli("reload", "--pid", str(site.proc.pid))
        wait_for(site, "/preise", "Starter")


def wait_for(site: Gateway, path: str, text: str, timeout: float = 15) -> str:
    deadline = time.monotonic() + timeout
    while True:
        html = page(site, path)
        if text in html or time.monotonic() > deadline:
            assert text in html, f"{path} never showed {text!r}"
            return html
        time.sleep(0.1)


# ---------------------------------------------------------------------------
# Legal pages


@pytest.mark.parametrize(("path", "notice"), [
    ("/impressum", "Der Betreiber dieses Dienstes hat noch kein Impressum hinterlegt."),
    ("/datenschutz", "Der Betreiber dieses Dienstes hat noch keine Datenschutzerklärung hinterlegt."),
    ("/en/imprint", "The operator of this service has not supplied an imprint yet."),
    ("/en/privacy", "The operator of this service has not supplied a privacy policy yet."),
])
def test_a_missing_legal_text_is_announced(site: Gateway, legal: Path, path: str, notice: str) -> None:
    html = page(site, path)
    assert f"<strong>{notice}</strong>" in html
    assert "<code>portal.legal_dir</code>" in html


def test_markdown_legal_text_is_rendered_and_cannot_inject(site: Gateway, legal: Path) -> None:
    (legal / "impressum.de.md").write_text(
        "## Angaben gemäß § 5 DDG\n\n**Muster GmbH**\\\nMusterstraße 1\n\n"
        f"{HOSTILE}\n\n<img src=x onerror=alert(1)>\n\n[klick](javascript:alert(1))\n\n"
        "[Aufsicht](https://www.bfdi.bund.de/) und [Mail](mailto:info@example.de)\n", encoding="utf-8")
    html = page(site, "/impressum")
    assert "<h2>Angaben gemäß § 5 DDG</h2>" in html
    assert "<strong>Muster GmbH</strong><br>" in html
    assert_inert(html)
    # Raw HTML in Markdown is shown as text, never interpreted.
    assert '<p>&lt;script&gt;alert("x")&lt;/script&gt;</p>' in html
    # Links to other sites stay links (an imprint may name its authority), sealed off.
    assert ('<a href="https://www.bfdi.bund.de/" rel="noopener noreferrer nofollow">Aufsicht</a>'
            in html)
    assert '<a href="mailto:info@example.de" rel="noopener noreferrer nofollow">Mail</a>' in html

    # The English page falls back to the German text and says so.
    english = page(site, "/en/imprint")
    assert "This text is available in German only." in english
    assert '<div class="legal-text" lang="de">' in english and "<strong>Muster GmbH</strong>" in english

    # An edited file shows at once, without a restart; an English one wins on its page.
    (legal / "impressum.en.md").write_text("**Sample Ltd**\n", encoding="utf-8")
    english = page(site, "/en/imprint")
    assert "<strong>Sample Ltd</strong>" in english and "German only" not in english


def test_html_legal_text_is_sanitized(site: Gateway, legal: Path) -> None:
    (legal / "datenschutz.de.html").write_text(
        '<h1>Datenschutz</h1><h2>Verantwortlich</h2><p onclick="steal()">Muster GmbH</p>'
        f'{HOSTILE}<style>body{{display:none}}</style><iframe src="https://evil.example/"></iframe>'
        '<img src="https://evil.example/p.png" onerror="x()"><a href="javascript:alert(1)">klick</a>'
        '<form action="https://evil.example/"><input name="q"></form><table><tr><td>Zelle</td></tr></table>',
        encoding="utf-8")
    html = page(site, "/datenschutz")
    assert_inert(html)
    assert "<h2>Verantwortlich</h2><p>Muster GmbH</p>" in html
    assert "<td>Zelle</td>" in html and '<a rel="noopener noreferrer nofollow">klick</a>' in html
    # The page has one h1, its own.
    assert html.count("<h1") == 1 and "<h1>Datenschutzerklärung</h1>" in html
    assert "steal" not in html and "evil.example" not in html and "alert" not in html


# ---------------------------------------------------------------------------
# Account entries (the flows are in test_portal_accounts.py)


@pytest.mark.parametrize(("path", "title", "fields"), [
    ("/anmelden", "Anmelden", ["csrf", "next", "email", "password"]),
    ("/registrieren", "Registrieren", ["csrf", "email", "password", "account_name", "terms"]),
    ("/en/login", "Log in", ["csrf", "next", "email", "password"]),
    ("/en/signup", "Sign up", ["csrf", "email", "password", "account_name", "terms"]),
])
def test_login_and_signup_are_forms_posting_to_themselves(site: Gateway, path: str, title: str,
                                                          fields: list[str]) -> None:
    html = page(site, path)
    assert f"<h1>{title}</h1>" in html
    tags = parse(html).tags
    assert [a.get("action") for t, a in tags if t == "form"] == [path]
    assert [a.get("name") for t, a in tags if t == "input"] == fields


# ---------------------------------------------------------------------------
# Documentation


def test_docs_show_every_example_for_the_pages_own_origin(site: Gateway) -> None:
    for path in ("/dokumentation", "/en/docs"):
        examples = parse(page(site, path)).examples
        assert set(examples) == example_files()
        base = f"{site.url}/api/v1"
        assert f"curl {base}/chat/completions" in examples["chat.curl.sh"]
        assert f'OpenAI(base_url="{base}"' in examples["chat-stream.openai.py"]
        assert f'baseURL: "{base}"' in examples["chat-stream.openai.mjs"]
        assert f'fetch("{base}/chat/completions"' in examples["chat-stream.fetch.mjs"]
        assert f"curl {site.url}/healthz" in examples["health.curl.sh"]
        assert all("__" not in code for code in examples.values()), "a placeholder was left"
        assert f'"model": "{MODEL}"' in examples["chat.curl.sh"]
    # The landing page's quick start is the same source.
    home = parse(page(site, "/")).examples
    docs = parse(page(site, "/dokumentation")).examples
    assert set(home) == {"chat-stream.curl.sh", "chat-stream.openai.py"}
    assert all(home[name] == docs[name] for name in home)


def test_docs_follow_the_proxy_origin_and_refuse_a_bad_host(site: Gateway) -> None:
    proxied = get(site, "/dokumentation", Host="api.example.de", **{"X-Forwarded-Proto": "https"})
    examples = parse(proxied.text).examples
    assert "curl https://api.example.de/api/v1/chat/completions" in examples["chat.curl.sh"]
    for host in ("evil.example;$(id)", "a b", "x'y"):
        refused = get(site, "/dokumentation", Host=host)
        assert refused.status_code == 400, host
        assert refused.json()["error"]["type"] == "invalid_request_error"


async def test_public_url_names_the_origin(tmp_path: Path) -> None:
    async with FAKES["llamacpp"]() as fake, \
            LocalGateway(tmp_path, site_config(fake, portal={"public_url": "https://api.example.de"})) as gateway, \
            httpx.AsyncClient() as client:
        examples = parse((await client.get(gateway.url + "/en/docs")).text).examples
    assert "curl https://api.example.de/api/v1/chat/completions" in examples["chat.curl.sh"]
    assert "curl https://api.example.de/healthz" in examples["health.curl.sh"]


def test_what_visitors_send_never_reaches_the_log(site: Gateway) -> None:
    canary = "portal-canary-7f3a9c"
    for path in PATHS:
        get(site, f"{path}?lang={canary}&q={canary}", **{"Accept-Language": f"{canary};q=0.9",
                                                         "X-Forwarded-Proto": canary,
                                                         "User-Agent": canary, "Cookie": f"s={canary}"})
    assert get(site, "/dokumentation", Host=f"{canary}.example;$(id)").status_code == 400
    assert get(site, f"/static/{canary}.css").status_code == 404
    assert get(site, f"/en/{canary}").status_code == 404
    time.sleep(0.5)
    output = site.output()
    assert "route=/dokumentation status=400" in output  # the requests were logged, as lines without content
    assert canary not in output


# ---------------------------------------------------------------------------
# The stylesheet, and the portal switched off


def test_stylesheet_is_served_with_an_etag_and_nothing_else_is(site: Gateway) -> None:
    css = get(site, "/static/site.css")
    assert css.status_code == 200
    assert css.headers["content-type"] == "text/css; charset=utf-8"
    assert css.headers["x-content-type-options"] == "nosniff"
    assert get(site, "/static/site.css", **{"If-None-Match": css.headers["etag"]}).status_code == 304
    for path in ("/static/missing.css", "/static/..%2fportal%2froutes.py", "/static/../app.py"):
        assert get(site, path).status_code == 404, path


async def test_portal_off_leaves_the_root_to_the_web_chat(tmp_path: Path) -> None:
    async with FAKES["llamacpp"]() as fake, \
            LocalGateway(tmp_path, site_config(fake, portal={"enabled": False})) as gateway, \
            httpx.AsyncClient() as client:
        root = await client.get(gateway.url + "/")
        assert root.status_code == 302 and root.headers["location"] == "/webchat"
        for path in ("/preise", "/en/docs", "/static/site.css"):
            assert (await client.get(gateway.url + path)).status_code == 404, path
