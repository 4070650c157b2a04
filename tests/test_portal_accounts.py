"""Accounts on the website, over HTTP against the real gateway process: sign-up
with the confirmation mail received by a real SMTP server, login, keys that
answer through the OpenAI SDK, usage, the team, DSGVO export and erasure,
password reset, TOTP, the operator's pages and the CLI.

The gateway runs in front of a fake backend (no model needed) with every
logger at DEBUG, so the privacy tests in test_portal_security.py can read its log.
"""
from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path
from typing import Iterator

import openai
import pyotp
import pytest

from tests.account_helpers import (PASSWORD, Visitor, alert, create_key, local, log_in, new_customer, notice,
                                   rows, sign_up)
from tests.fakes import FAKES
from tests.gateway import Gateway, run_cli
from tests.mailbox import Mailbox, mailbox  # noqa: F401 - the fixture
from tests.portal_helpers import MODEL, site_gateway

TEAM_PLAN = {"name": "team", "price": "49 €", "seats": 2}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, mailbox: Mailbox) -> Iterator[Gateway]:
    workdir = tmp_path_factory.mktemp("portal-accounts")
    with FAKES["llamacpp"]() as fake:
        gateway = site_gateway(workdir, fake, plans=[TEAM_PLAN, {"name": "pro", "price": "9 €", "seats": 1}],
                               accounts={"plan": "team", "smtp": mailbox.smtp, "attempts_per_client": 1000},
                               store={"flush_interval": 0.2},
                               logging={"level": "DEBUG", "third_party_level": "DEBUG"})
        with gateway:
            yield gateway


@pytest.fixture
def visitor(site: Gateway) -> Iterator[Visitor]:
    person = Visitor(site)
    yield person
    person.close()


def client(site: Gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=site.base_url, api_key=key, max_retries=0, timeout=30)


def test_a_developer_goes_from_sign_up_to_a_working_key(site: Gateway, mailbox: Mailbox, visitor: Visitor) -> None:
    account_id = new_customer(visitor, mailbox, "dev@example.de", "Dev GmbH")
    page = visitor.get(f"/konto/{account_id}")
    assert 'data-status="active"' in page.text and 'data-role="owner"' in page.text
    assert 'data-plan="team"' in page.text

    key = create_key(visitor, account_id, "laptop")
    # Shown once: the next visit of the page lists the key by its prefix only.
    again = visitor.get(f"/konto/{account_id}")
    assert key not in again.text and key[:12] + "…" in again.text

    answer = client(site, key).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}])
    assert answer.choices[0].message.content

    def shown() -> bool:
        return "<td>laptop</td><td>" + MODEL in visitor.get(f"/konto/{account_id}").text
    deadline = time.monotonic() + 10
    while not shown():
        assert time.monotonic() < deadline, "usage not on the dashboard"
        time.sleep(0.1)
    page = visitor.get(f"/konto/{account_id}")
    assert '<svg class="chart"' in page.text and 'class="bar"' in page.text
    download = visitor.get(f"/konto/{account_id}/usage.csv")
    assert download.headers["content-type"].startswith("text/csv")
    table = list(csv.DictReader(io.StringIO(download.text)))
    assert [(r["key_label"], r["model"], r["requests"]) for r in table] == [("laptop", MODEL, "1")]
    assert int(table[0]["prompt_tokens"]) == answer.usage.prompt_tokens

    # Revoked on the dashboard: the key gets 401 at once.
    key_id = rows(site, "SELECT id FROM api_keys WHERE prefix = ?", key[:12])[0][0]
    visitor.post(f"/konto/{account_id}/keys/{key_id}/revoke", {})
    with pytest.raises(openai.AuthenticationError):
        client(site, key).models.list()


def test_a_team_member_sees_usage_but_cannot_manage(site: Gateway, mailbox: Mailbox, visitor: Visitor) -> None:
    account_id = new_customer(visitor, mailbox, "owner@example.de", "Team AG")
    create_key(visitor, account_id, "server")
    visitor.get(f"/konto/{account_id}")
    invited = visitor.post(f"/konto/{account_id}/invite", {"email": "Member@Example.de", "role": "member"})
    assert invited.status_code == 303
    # The plan has two seats: owner and the invited member. A third is refused.
    third = visitor.post(f"/konto/{account_id}/invite", {"email": "third@example.de", "role": "member"})
    assert third.status_code == 400 and "Plätze" in alert(third)

    member = Visitor(site)
    link = local(mailbox.link("member@example.de"))
    sign_up(member, mailbox, "member@example.de")
    back = log_in(member, "member@example.de")
    member.follow(back)
    shown = member.get(link)
    assert "Team AG" in shown.text
    joined = member.post("/einladung", {"token": link.split("token=")[1]})
    assert joined.headers["location"] == f"/konto/{account_id}?done=joined"
    page = member.get(f"/konto/{account_id}")
    assert 'data-role="member"' in page.text and "server" in page.text
    assert f'action="/konto/{account_id}/keys"' not in page.text

    keys_before = rows(site, "SELECT count(*) FROM api_keys")
    refused = member.post(f"/konto/{account_id}/keys", {"label": "mine", "expires": ""})
    assert refused.status_code == 403 and notice(refused) == "not_allowed"
    key_id = rows(site, "SELECT id FROM api_keys WHERE account_id = ?", account_id)[0][0]
    assert member.post(f"/konto/{account_id}/keys/{key_id}/revoke", {}).status_code == 403
    assert member.post(f"/konto/{account_id}/invite", {"email": "x@example.de", "role": "admin"}).status_code == 403
    assert rows(site, "SELECT count(*) FROM api_keys") == keys_before
    assert rows(site, "SELECT revoked_at FROM api_keys WHERE id = ?", key_id) == [(None,)]

    # Another account, guessed by id: 404 as for one that does not exist.
    other = new_customer(Visitor(site), mailbox, "other@example.de", "Other KG")
    for path in (f"/konto/{other}", f"/konto/{other}/usage.csv", "/konto/999999"):
        assert member.get(path).status_code == 404, path
    assert member.post(f"/konto/{other}/keys", {"label": "x", "expires": ""}).status_code == 404
    member.close()


def test_export_then_delete_the_account_refuses_its_keys(site: Gateway, mailbox: Mailbox, visitor: Visitor) -> None:
    account_id = new_customer(visitor, mailbox, "leaver@example.de", "Leaver UG")
    key = create_key(visitor, account_id, "prod")
    client(site, key).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}])

    export = visitor.get("/konto/daten/export.json")
    assert export.headers["content-disposition"].startswith("attachment")
    data = json.loads(export.text)
    assert data["person"]["email"] == "leaver@example.de"
    assert [(a["name"], a["role"], [k["label"] for k in a["keys"]]) for a in data["accounts"]] == [
        ("Leaver UG", "owner", ["prod"])]
    assert key not in export.text and "password" not in json.dumps(data["person"])

    visitor.get(f"/konto/{account_id}")
    wrong = visitor.post(f"/konto/{account_id}/delete", {"confirm_name": "Leaver"})
    assert wrong.status_code == 400
    assert client(site, key).models.list().data

    gone = visitor.post(f"/konto/{account_id}/delete", {"confirm_name": "Leaver UG"})
    assert gone.status_code == 303
    started = time.monotonic()
    with pytest.raises(openai.AuthenticationError):
        client(site, key).models.list()
    assert time.monotonic() - started < 1
    assert rows(site, "SELECT count(*) FROM accounts WHERE id = ?", account_id) == [(0,)]
    assert rows(site, "SELECT count(*) FROM usage_daily u JOIN api_keys k ON k.id = u.key_id "
                      "WHERE k.account_id = ?", account_id) == [(0,)]
    assert rows(site, "SELECT action, target FROM audit_log ORDER BY id DESC LIMIT 1") == [
        ("delete_account", f"account:{account_id}")]

    # The person stays (they may belong elsewhere) until they delete themselves.
    visitor.get("/konto/daten")
    assert visitor.post("/konto/daten/delete", {"password": "wrong password!"}).status_code == 400
    erased = visitor.post("/konto/daten/delete", {"password": PASSWORD})
    assert erased.status_code == 303
    assert rows(site, "SELECT count(*) FROM users WHERE email = 'leaver@example.de'") == [(0,)]
    assert visitor.get("/konto").status_code == 303  # logged out


def test_password_reset_by_mail(site: Gateway, mailbox: Mailbox, visitor: Visitor) -> None:
    sign_up(visitor, mailbox, "forgetful@example.de")
    other = Visitor(site)
    assert log_in(other, "forgetful@example.de").status_code == 303
    visitor.get("/passwort-vergessen")
    known = visitor.post("/passwort-vergessen", {"email": "forgetful@example.de"})
    unknown = visitor.post("/passwort-vergessen", {"email": "nobody@example.de"})
    assert notice(known) == notice(unknown) == "reset_sent"
    link = local(mailbox.link("forgetful@example.de", 2))
    assert "/passwort-neu?token=" in link
    visitor.get(link)
    short = visitor.post("/passwort-neu", {"token": link.split("token=")[1], "password": "short"})
    assert short.status_code == 400 and "10 Zeichen" in alert(short)
    done = visitor.post("/passwort-neu", {"token": link.split("token=")[1], "password": "a brand new secret"})
    assert done.headers["location"] == "/anmelden?done=password_set"
    # Used once; the old password and the old session are gone.
    assert visitor.post("/passwort-neu", {"token": link.split("token=")[1],
                                          "password": "another new secret"}).status_code == 400
    assert other.get("/konto").status_code == 303
    assert log_in(visitor, "forgetful@example.de").status_code == 401
    assert log_in(visitor, "forgetful@example.de", "a brand new secret").status_code == 303
    time.sleep(0.3)
    assert not mailbox.wait_for("nobody@example.de", 0)
    other.close()


def test_totp_second_factor(site: Gateway, mailbox: Mailbox, visitor: Visitor) -> None:
    account_id = new_customer(visitor, mailbox, "careful@example.de")
    page = visitor.get("/konto/sicherheit")
    secret = page.text.split('<code id="totp-secret">')[1].split("<")[0]
    totp = pyotp.TOTP(secret)
    assert visitor.post("/konto/sicherheit/totp", {"secret": secret, "code": "000000" if totp.now() != "000000"
                                                   else "111111"}).status_code == 400
    enrolled = totp.now()
    assert visitor.post("/konto/sicherheit/totp", {"secret": secret, "code": enrolled}).status_code == 303

    fresh = Visitor(site)
    step = log_in(fresh, "careful@example.de")
    assert step.headers["location"].startswith("/anmelden/code")
    # Password alone opens nothing.
    assert fresh.get(f"/konto/{account_id}").status_code == 303
    fresh.get(step.headers["location"])
    assert fresh.post("/anmelden/code", {"code": "12345x", "next": "/konto"}).status_code == 401
    # The code used at enrolment cannot be replayed.
    assert fresh.post("/anmelden/code", {"code": enrolled, "next": "/konto"}).status_code == 401
    # The next time step's code, which the server accepts as clocks drift
    # (one step either side), instead of waiting up to 30 s for it.
    following = totp.at(time.time() + totp.interval)
    ok = fresh.post("/anmelden/code", {"code": following, "next": f"/konto/{account_id}"})
    assert ok.headers["location"] == f"/konto/{account_id}"
    assert fresh.get(f"/konto/{account_id}").status_code == 200
    replay = Visitor(site)
    replay.get(log_in(replay, "careful@example.de").headers["location"])
    assert replay.post("/anmelden/code", {"code": following, "next": "/konto"}).status_code == 401
    for person in (fresh, replay):
        person.close()


def test_the_operator_approves_suspends_and_deletes(site: Gateway, mailbox: Mailbox, visitor: Visitor) -> None:
    account_id = new_customer(visitor, mailbox, "customer@example.de", "Kunde eG")
    key = create_key(visitor, account_id)
    assert visitor.get("/admin").status_code == 404  # not an operator

    operator = Visitor(site)
    granted = run_cli("admins", "grant", "customer@example.de", "--config", str(site.config_path))
    assert granted.returncode == 0, granted.stderr
    log_in(operator, "customer@example.de")
    page = operator.get("/admin")
    assert page.status_code == 200 and f'data-account-id="{account_id}"' in page.text
    assert "fake" in page.text  # the backend and its health
    suspended = operator.post(f"/admin/accounts/{account_id}/suspend", {})
    assert suspended.status_code == 303
    with pytest.raises(openai.PermissionDeniedError):
        client(site, key).models.list()
    assert operator.post(f"/admin/accounts/{account_id}/approve", {}).status_code == 409
    operator.post(f"/admin/accounts/{account_id}/activate", {})
    assert client(site, key).models.list().data
    operator.post(f"/admin/accounts/{account_id}/delete", {})
    with pytest.raises(openai.AuthenticationError):
        client(site, key).models.list()
    user_id = rows(site, "SELECT id FROM users WHERE email = 'customer@example.de'")[0][0]
    assert rows(site, "SELECT actor, action FROM audit_log WHERE target = ? ORDER BY id DESC LIMIT 3",
                f"account:{account_id}") == [(f"user:{user_id}", "delete_account"), (f"user:{user_id}", "activate"),
                                             (f"user:{user_id}", "suspend")]
    operator.close()


def test_accounts_delete_on_the_command_line(site: Gateway, mailbox: Mailbox, visitor: Visitor) -> None:
    account_id = new_customer(visitor, mailbox, "cli@example.de", "CLI GmbH")
    key = create_key(visitor, account_id)
    config = str(site.config_path)
    refused = run_cli("accounts", "delete", "CLI GmbH", "--config", config)
    assert refused.returncode == 2 and "--yes" in refused.stderr
    deleted = run_cli("accounts", "delete", "CLI GmbH", "--yes", "--config", config)
    assert deleted.returncode == 0, deleted.stderr
    assert rows(site, "SELECT count(*) FROM api_keys WHERE account_id = ?", account_id) == [(0,)]
    assert rows(site, "SELECT actor, action, target FROM audit_log ORDER BY id DESC LIMIT 1") == [
        ("cli", "delete_account", f"account:{account_id}")]
    # Another process: the server learns of it when its auth cache entry expires.
    deadline = time.monotonic() + 5
    while True:
        try:
            client(site, key).models.list()
        except openai.AuthenticationError:
            break
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert visitor.get(f"/konto/{account_id}").status_code == 404


def test_pending_accounts_wait_for_approval(tmp_path: Path, mailbox: Mailbox) -> None:
    with FAKES["llamacpp"]() as fake:
        gateway = site_gateway(tmp_path, fake, accounts={"approval": True, "smtp": mailbox.smtp})
        with gateway:
            owner = Visitor(gateway)
            account_id = new_customer(owner, mailbox, "waiting@example.de")
            page = owner.get(f"/konto/{account_id}")
            assert 'data-status="pending"' in page.text
            refused = owner.post(f"/konto/{account_id}/keys", {"label": "", "expires": ""})
            assert refused.status_code == 400 and rows(gateway, "SELECT count(*) FROM api_keys") == [(0,)]
            assert run_cli("accounts", "activate", rows(gateway, "SELECT name FROM accounts")[0][0],
                           "--config", str(gateway.config_path)).returncode == 0
            assert create_key(owner, account_id).startswith("privat_")
            owner.close()
