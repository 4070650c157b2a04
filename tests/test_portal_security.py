"""The account pages' defences, against the real gateway process: CSRF,
session fixation, open redirects, throttling, cookie flags and CSP on every
page, bad input on every form, and canaries typed into every field that must
reach no log (at DEBUG) and the database only where they must."""
from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from tests.account_helpers import (PASSWORD, Visitor, alert, create_key, local, log_in, new_customer, notice,
                                   rows, sign_up)
from tests.fakes import FAKES
from tests.gateway import Gateway
from tests.mailbox import Mailbox, mailbox  # noqa: F401 - the fixture
from tests.portal_helpers import CSP, site_gateway

# Pages a logged-in owner sees, and those anybody sees; both languages.
PUBLIC = ["/anmelden", "/en/login", "/registrieren", "/en/signup", "/passwort-vergessen", "/en/forgot-password"]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, mailbox: Mailbox) -> Iterator[Gateway]:
    workdir = tmp_path_factory.mktemp("portal-security")
    with FAKES["llamacpp"]() as fake:
        gateway = site_gateway(workdir, fake, plans=[{"name": "team", "price": "1 €", "seats": 5}],
                               accounts={"smtp": mailbox.smtp, "attempts_per_client": 1000,
                                         "attempts_per_address": 4},
                               logging={"level": "DEBUG", "third_party_level": "DEBUG"})
        with gateway:
            yield gateway


@pytest.fixture(scope="module")
def owner(site: Gateway, mailbox: Mailbox) -> Iterator[tuple[Visitor, int]]:
    person = Visitor(site)
    account_id = new_customer(person, mailbox, "owner@security.test", "Secure GmbH")
    yield person, account_id
    person.close()


def count(site: Gateway, table: str) -> int:
    return rows(site, f"SELECT count(*) FROM {table}")[0][0]


def test_a_form_without_or_with_a_wrong_csrf_token_is_refused_and_changes_nothing(
        site: Gateway, mailbox: Mailbox, owner: tuple[Visitor, int]) -> None:
    person, account_id = owner
    person.get(f"/konto/{account_id}")
    keys = count(site, "api_keys")
    missing = person.post(f"/konto/{account_id}/keys", {"label": "x", "expires": ""}, csrf=False)
    wrong = person.post(f"/konto/{account_id}/keys", [("csrf", "0" * 64), ("label", "x"), ("expires", "")],
                        csrf=False)
    # A token from another visitor's page: valid for their cookie, not for this one.
    stranger = Visitor(site)
    stranger.get("/anmelden")
    foreign = person.post(f"/konto/{account_id}/keys", [("csrf", stranger.csrf or ""), ("label", "x")], csrf=False)
    for response in (missing, wrong, foreign):
        assert response.status_code == 403 and notice(response) == "csrf"
    assert count(site, "api_keys") == keys
    # Nor can a login, a sign-up or a logout be forced from elsewhere.
    users = count(site, "users")
    assert stranger.post("/registrieren", {"email": "forced@security.test", "password": PASSWORD,
                                           "terms": "yes"}, csrf=False).status_code == 403
    assert stranger.post("/anmelden", {"email": "owner@security.test", "password": PASSWORD},
                         csrf=False).status_code == 403
    assert count(site, "users") == users
    assert person.post("/abmelden", {}, csrf=False).status_code == 403
    assert person.get(f"/konto/{account_id}").status_code == 200
    stranger.close()


def test_login_issues_a_new_session_and_logout_ends_it(site: Gateway, mailbox: Mailbox) -> None:
    sign_up(Visitor(site), mailbox, "fixation@security.test")
    attacker_token = "A" * 43
    victim = Visitor(site)
    victim.http.cookies.set("privatai_session", attacker_token, domain="127.0.0.1")
    victim.get("/anmelden")
    form_cookie = victim.http.cookies.get("privatai_form")
    response = log_in(victim, "fixation@security.test")
    assert response.status_code == 303
    issued = victim.http.cookies.get("privatai_session")
    assert issued and issued != attacker_token
    assert victim.http.cookies.get("privatai_form") != form_cookie
    # The attacker's chosen value opens nothing; the issued one is stored only hashed.
    attacker = httpx.Client(base_url=site.url, cookies={"privatai_session": attacker_token})
    assert attacker.get("/konto/sicherheit").status_code == 303
    assert rows(site, "SELECT count(*) FROM sessions WHERE token_sha256 = ?", issued) == [(0,)]
    stolen = httpx.Client(base_url=site.url, cookies={"privatai_session": issued})
    assert stolen.get("/konto/sicherheit").status_code == 200
    victim.get("/konto/sicherheit")
    assert victim.post("/abmelden", {}).status_code == 303
    assert stolen.get("/konto/sicherheit").status_code == 303
    for client in (attacker, stolen):
        client.close()
    victim.close()


@pytest.mark.parametrize("target", ["//evil.example/", "https://evil.example/", "/\\evil.example",
                                    "/%0d%0aLocation:%20https://evil.example", "javascript:alert(1)",
                                    "evil.example"])
def test_no_redirect_to_another_site_after_login(site: Gateway, mailbox: Mailbox, target: str) -> None:
    if not rows(site, "SELECT count(*) FROM users WHERE email = 'redirect@security.test'")[0][0]:
        sign_up(Visitor(site), mailbox, "redirect@security.test")
    person = Visitor(site)
    person.get("/anmelden?next=" + target)
    response = person.post("/anmelden", {"next": target, "email": "redirect@security.test", "password": PASSWORD})
    assert response.status_code == 303 and response.headers["location"] == "/konto"
    person.close()


def test_a_local_next_is_followed_after_login(site: Gateway, mailbox: Mailbox) -> None:
    sign_up(Visitor(site), mailbox, "next@security.test")
    person = Visitor(site)
    assert person.get("/konto/sicherheit").headers["location"] == "/anmelden?next=%2Fkonto%2Fsicherheit"
    person.get("/anmelden?next=/konto/sicherheit")
    response = person.post("/anmelden", {"next": "/konto/sicherheit", "email": "next@security.test",
                                         "password": PASSWORD})
    assert response.headers["location"] == "/konto/sicherheit"
    person.close()


def test_attempts_are_throttled_per_address_without_telling_whether_it_exists(
        site: Gateway, mailbox: Mailbox) -> None:
    sign_up(Visitor(site), mailbox, "target@security.test")
    person = Visitor(site)
    person.get("/anmelden")
    # Four attempts per address: the sign-up was the first of this one.
    known = [person.post("/anmelden", {"email": "target@security.test", "password": "guess number one"})
             for _ in range(3)]
    unknown = [person.post("/anmelden", {"email": "ghost@security.test", "password": "guess number one"})
               for _ in range(4)]
    assert {r.status_code for r in known + unknown} == {401}
    assert {alert(r) for r in known} == {alert(r) for r in unknown}
    # The fifth attempt is refused even with the right password, the same for both addresses.
    blocked = person.post("/anmelden", {"email": "target@security.test", "password": PASSWORD})
    ghost = person.post("/anmelden", {"email": "Ghost@Security.test", "password": PASSWORD})
    for response in (blocked, ghost):
        assert response.status_code == 429 and notice(response) == "throttled"
        assert 0 < int(response.headers["retry-after"]) <= 900
    assert "privatai_session" not in person.http.cookies
    # Another address from the same client goes on.
    assert log_in(person, "owner@security.test").status_code in (303, 401)
    person.close()


def test_attempts_are_throttled_per_client(tmp_path: Path, mailbox: Mailbox) -> None:
    with FAKES["llamacpp"]() as fake:
        gateway = site_gateway(tmp_path, fake, accounts={"smtp": mailbox.smtp, "attempts_per_client": 3})
        with gateway:
            person = Visitor(gateway)
            person.get("/passwort-vergessen")
            answers = [person.post("/passwort-vergessen", {"email": f"n{i}@security.test"}) for i in range(4)]
            assert [r.status_code for r in answers] == [200, 200, 200, 429]
            signup = person.post("/registrieren", {"email": "late@security.test", "password": PASSWORD,
                                                   "terms": "yes"})
            assert signup.status_code == 429 and rows(gateway, "SELECT count(*) FROM users") == [(0,)]
            person.close()


def test_signing_up_twice_says_the_same_and_mails_the_owner(site: Gateway, mailbox: Mailbox) -> None:
    sign_up(Visitor(site), mailbox, "twice@security.test")
    person = Visitor(site)
    person.get("/registrieren")
    again = person.post("/registrieren", {"email": "TWICE@security.test", "password": "another password",
                                          "terms": "yes"})
    assert notice(again) == "check_mail"
    mail = mailbox.wait_for("twice@security.test", 2)[1]
    assert "schon registriert" in mail.get_body(preferencelist=("plain",)).get_content()
    assert rows(site, "SELECT count(*) FROM users WHERE email = 'twice@security.test'") == [(1,)]
    person.close()


def test_every_page_has_the_csp_and_cookies_are_httponly_and_lax(site: Gateway,
                                                                  owner: tuple[Visitor, int]) -> None:
    person, account_id = owner
    private = [f"/konto/{account_id}", f"/en/account/{account_id}", "/konto/sicherheit", "/en/account/security",
               "/konto/daten", "/en/account/data"]
    for path in PUBLIC + private:
        response = (person.get if path in private else httpx.Client(base_url=site.url).get)(path)
        assert response.status_code == 200, path
        assert response.headers["content-security-policy"] == CSP, path
        assert response.headers["cache-control"] == "no-store", path
        assert response.headers["x-content-type-options"] == "nosniff"
        for cookie in response.headers.get_list("set-cookie"):
            assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie, cookie
    # Behind a TLS proxy on this host (X-Forwarded-Proto from a loopback peer): Secure.
    secure = httpx.get(site.url + "/anmelden", headers={"X-Forwarded-Proto": "https"})
    assert "Secure" in secure.headers["set-cookie"] and "HttpOnly" in secure.headers["set-cookie"]
    visitor = Visitor(site)
    visitor.get("/anmelden")
    login = visitor.post("/anmelden", {"email": "owner@security.test", "password": PASSWORD},
                         headers={"X-Forwarded-Proto": "https"})
    assert all("Secure" in c and "HttpOnly" in c for c in login.headers.get_list("set-cookie"))
    visitor.close()


def test_public_url_with_https_makes_cookies_secure(tmp_path: Path, mailbox: Mailbox) -> None:
    with FAKES["llamacpp"]() as fake:
        gateway = site_gateway(tmp_path, fake, portal={"public_url": "https://portal.example"},
                               accounts={"smtp": mailbox.smtp})
        with gateway:
            response = httpx.get(gateway.url + "/registrieren")
            assert "Secure" in response.headers["set-cookie"]
            # This test speaks plain HTTP to the server behind the (imagined) TLS
            # proxy, so it hands the Secure cookie back itself, as the proxy would.
            cookie = response.headers["set-cookie"].split(";")[0]
            csrf = re.search(r'name="csrf" value="([^"]+)"', response.text)
            assert csrf
            posted = httpx.post(gateway.url + "/registrieren", headers={"Cookie": cookie}, data={
                "csrf": csrf.group(1), "email": "tls@security.test", "password": PASSWORD, "terms": "yes"})
            assert notice(posted) == "check_mail"
            # Mailed links name the public origin, never the Host the request came with.
            assert mailbox.link("tls@security.test").startswith("https://portal.example/bestaetigen?token=")


HOSTILE = '<script>alert(1)</script>"\'><b>'
BAD_SIGNUP = [
    ({"email": "", "password": PASSWORD, "terms": "yes"}, "gültige E-Mail"),
    ({"email": "a" * 300 + "@example.de", "password": PASSWORD, "terms": "yes"}, "gültige E-Mail"),
    ({"email": HOSTILE, "password": PASSWORD, "terms": "yes"}, "gültige E-Mail"),
    ({"email": "jürgen@exämple.de", "password": PASSWORD, "terms": "yes"}, "gültige E-Mail"),
    ({"email": "ok@security.test", "password": "", "terms": "yes"}, "10 Zeichen"),
    ({"email": "ok@security.test", "password": "x" * 300, "terms": "yes"}, "256 Zeichen"),
    ({"email": "ok@security.test", "password": PASSWORD, "terms": "yes", "account_name": "a\u0000b"}, "Steuerzeichen"),
    ({"email": "ok@security.test", "password": PASSWORD, "terms": "yes", "account_name": "n" * 65}, "64 Zeichen"),
    ({"email": "ok@security.test", "password": PASSWORD}, "Datenschutzerklärung"),
    ([("email", "ok@security.test"), ("email", "other@security.test"), ("password", PASSWORD)], "Formular"),
]


@pytest.mark.parametrize(("fields", "message"), BAD_SIGNUP)
def test_bad_sign_up_input_gets_a_clear_message_and_changes_nothing(site: Gateway, fields: object,
                                                                    message: str) -> None:
    person = Visitor(site)
    person.get("/registrieren")
    users, accounts = count(site, "users"), count(site, "accounts")
    response = person.post("/registrieren", fields)  # type: ignore[arg-type]
    assert response.status_code == 400 and message in alert(response), alert(response)
    assert HOSTILE not in response.text
    assert (count(site, "users"), count(site, "accounts")) == (users, accounts)
    person.close()


@pytest.mark.parametrize(("path", "fields", "message"), [
    ("/anmelden", {"email": "", "password": ""}, "E-Mail-Adresse und Passwort"),
    ("/anmelden", [("email", "a@b.de"), ("email", "c@d.de"), ("password", "x")], "Formular"),
    ("/passwort-vergessen", {"email": HOSTILE}, "gültige E-Mail"),
    ("/passwort-vergessen", {"email": "x" * 5000}, "Formular"),
    ("/en/forgot-password", {"email": ""}, "valid e-mail address"),
    ("/en/signup", {"email": "ok@security.test", "password": "short", "terms": "yes"}, "at least 10"),
])
def test_bad_login_and_reset_input_gets_a_clear_message(site: Gateway, path: str, fields: object,
                                                        message: str) -> None:
    person = Visitor(site)
    person.get(path)
    users, sessions = count(site, "users"), count(site, "sessions")
    response = person.post(path, fields)  # type: ignore[arg-type]
    assert response.status_code == 400 and message in alert(response), alert(response)
    assert HOSTILE not in response.text
    assert (count(site, "users"), count(site, "sessions")) == (users, sessions)
    person.close()


def test_bad_dashboard_input_gets_a_clear_message_and_changes_nothing(site: Gateway,
                                                                      owner: tuple[Visitor, int]) -> None:
    person, account_id = owner
    person.get(f"/konto/{account_id}")
    keys, invites = count(site, "api_keys"), count(site, "invites")
    for fields, message in [
            ({"label": "x" * 101, "expires": ""}, "100 Zeichen"),
            ({"label": "tab\there", "expires": ""}, "Steuerzeichen"),
            ({"label": "ok", "expires": "morgen"}, "JJJJ-MM-TT"),
            ({"label": "ok", "expires": "2001-01-01"}, "Zukunft"),
            ({"label": "ok", "expires": HOSTILE}, "JJJJ-MM-TT")]:
        response = person.post(f"/konto/{account_id}/keys", fields)
        assert response.status_code == 400 and message in alert(response), (fields, alert(response))
        assert HOSTILE not in response.text
    for fields, message in [({"email": HOSTILE, "role": "member"}, "gültige E-Mail"),
                            ({"email": "", "role": "member"}, "gültige E-Mail"),
                            ({"email": "x@security.test", "role": "owner"}, "Rolle"),
                            ({"email": "owner@security.test", "role": "member"}, "bereits Mitglied")]:
        response = person.post(f"/konto/{account_id}/invite", fields)
        assert response.status_code == 400 and message in alert(response), (fields, alert(response))
    unicode_label = person.post(f"/konto/{account_id}/keys", {"label": "Büro 🔑 <b>", "expires": ""})
    assert unicode_label.status_code == 200 and "Büro 🔑 &lt;b&gt;" in unicode_label.text
    assert count(site, "api_keys") == keys + 1 and count(site, "invites") == invites
    assert person.post(f"/konto/{account_id}/delete", {"confirm_name": HOSTILE}).status_code == 400
    assert rows(site, "SELECT count(*) FROM accounts WHERE id = ?", account_id) == [(1,)]
    for path, fields in [("/konto/sicherheit/password", {"current": "wrong one!", "password": "new password 1"}),
                         ("/konto/sicherheit/password", {"current": PASSWORD, "password": "short"}),
                         ("/konto/sicherheit/totp", {"secret": HOSTILE, "code": "123456"})]:
        response = person.post(path, fields)
        assert response.status_code == 400 and alert(response) and HOSTILE not in response.text
    assert log_in(Visitor(site), "owner@security.test").status_code == 303


def test_canaries_in_every_field_reach_no_log_and_the_database_only_as_an_address(
        site: Gateway, mailbox: Mailbox, owner: tuple[Visitor, int]) -> None:
    canary = "canary" + str(time.time_ns())
    address = f"{canary}@security.test"
    password = f"{canary}-password"
    person = Visitor(site)
    person.get("/registrieren")
    person.post("/registrieren", {"email": address, "password": password, "account_name": f"{canary}-account",
                                  "terms": "yes"})
    person.post("/registrieren", {"email": f"{canary}-bad", "password": password, "terms": canary})
    person.get("/anmelden")
    person.post("/anmelden", {"email": address, "password": f"{canary}-wrong", "next": f"/{canary}"})
    person.post("/passwort-vergessen", {"email": address})
    person.post("/passwort-neu", {"token": canary, "password": password})
    person.get(f"/bestaetigen?token={canary}")
    person.get(f"/einladung?token={canary}")
    confirm = local(mailbox.link(address))
    person.get(confirm)
    person.post("/bestaetigen", {"token": confirm.split("token=")[1]})
    log_in(person, address, password)
    account_id = rows(site, "SELECT m.account_id FROM memberships m JOIN users u ON u.id = m.user_id "
                            "WHERE u.email = ?", address)[0][0]
    person.get(f"/konto/{account_id}")
    person.post(f"/konto/{account_id}/keys", {"label": f"{canary}-label", "expires": canary})
    person.post(f"/konto/{account_id}/invite", {"email": f"{canary}-invitee@security.test", "role": canary})
    person.post(f"/konto/{account_id}/delete", {"confirm_name": canary})
    person.post("/konto/sicherheit/password", {"current": f"{canary}-x", "password": f"{canary}-new"})
    person.post("/konto/sicherheit/totp", {"secret": canary, "code": canary})
    person.post("/konto/daten/delete", {"password": f"{canary}-x"})
    owner_visitor, owner_account = owner
    owner_visitor.get(f"/konto/{owner_account}")
    owner_visitor.post(f"/konto/{owner_account}/invite", {"email": f"{canary}-invited@security.test",
                                                          "role": "member"})
    mailbox.wait_for(f"{canary}-invited@security.test")
    time.sleep(0.5)

    log = site.output()
    assert "route=/registrieren" in log  # the requests were logged, as lines without content
    assert canary not in log
    stored = b"".join(path.read_bytes() for path in Path(site.config["store"]["path"]).parent.glob("privatai.db*"))
    # Only what must be kept: the address, the account's name, the invited address.
    kept = [address.encode(), f"{canary}-account".encode(), f"{canary}-invited@security.test".encode()]
    rest = stored
    for value in kept:
        rest = rest.replace(value, b"")
    assert canary.encode() not in rest
    assert password.encode() not in stored and f"{canary}-new".encode() not in stored
    person.close()
