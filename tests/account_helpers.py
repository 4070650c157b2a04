"""Shared by the account tests: a visitor with a cookie jar who reads forms
as a browser does, and the walk from sign-up to a logged-in dashboard."""
from __future__ import annotations

import re
import sqlite3
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx

from tests.gateway import Gateway
from tests.mailbox import Mailbox

PASSWORD = "correct horse battery staple"
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')
_NOTICE = re.compile(r'data-notice="(\w+)"')
_ALERT = re.compile(r'role="alert"[^>]*>(.*?)</(?:div|p)>', re.S)


class Visitor:
    """One browser: its own cookies, following no redirect on its own."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.http = httpx.Client(base_url=gateway.url, timeout=60)
        self.csrf: str | None = None

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        response = self.http.get(path, **kwargs)
        found = _CSRF.search(response.text) if response.headers.get("content-type", "").startswith("text/html") else None
        if found:
            self.csrf = found.group(1)
        return response

    def post(self, path: str, data: dict[str, Any] | list[tuple[str, str]], *, csrf: bool = True,
             **kwargs: Any) -> httpx.Response:
        """Post a form as the page that holds it would: with the page's CSRF token."""
        fields = list(data.items()) if isinstance(data, dict) else list(data)
        if csrf:
            fields = [("csrf", self.csrf or ""), *fields]
        headers = {"Content-Type": "application/x-www-form-urlencoded", **kwargs.pop("headers", {})}
        response = self.http.post(path, content=urlencode(fields), headers=headers, **kwargs)
        found = _CSRF.search(response.text)
        if found:
            self.csrf = found.group(1)
        return response

    def follow(self, response: httpx.Response) -> httpx.Response:
        assert response.status_code in (302, 303), (response.status_code, response.text[:300])
        return self.get(response.headers["location"])

    def close(self) -> None:
        self.http.close()


def notice(response: httpx.Response) -> str | None:
    found = _NOTICE.search(response.text)
    return found.group(1) if found else None


def alert(response: httpx.Response) -> str:
    found = _ALERT.search(response.text)
    return re.sub(r"<[^>]+>", "", found.group(1)).strip() if found else ""


def local(link: str) -> str:
    """A mailed link's path and query: mails may name the public origin."""
    parts = urlsplit(link)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def sign_up(visitor: Visitor, mailbox: Mailbox, email: str, *, account: str = "",
            password: str = PASSWORD, lang: str = "de") -> None:
    """Sign up and confirm by the mailed link; the visitor is not logged in yet."""
    signup = "/registrieren" if lang == "de" else "/en/signup"
    visitor.get(signup)
    before = len(mailbox.wait_for(email, 0))
    response = visitor.post(signup, {"email": email, "password": password, "account_name": account,
                                     "terms": "yes"})
    assert notice(response) == "check_mail", alert(response)
    link = local(mailbox.link(email, before + 1))
    visitor.get(link)
    confirmed = visitor.post(link.split("?")[0], {"token": link.split("token=")[1]})
    assert confirmed.status_code == 303, confirmed.text[:500]


def log_in(visitor: Visitor, email: str, password: str = PASSWORD, lang: str = "de") -> httpx.Response:
    path = "/anmelden" if lang == "de" else "/en/login"
    visitor.get(path)
    return visitor.post(path, {"email": email, "password": password})


def new_customer(visitor: Visitor, mailbox: Mailbox, email: str, account: str = "") -> int:
    """Signed up, confirmed and logged in: the id of the account's dashboard."""
    sign_up(visitor, mailbox, email, account=account)
    response = log_in(visitor, email)
    assert response.status_code == 303, alert(response)
    page = visitor.follow(response)
    if page.status_code == 303:
        page = visitor.follow(page)
    found = re.search(r'action="/konto/(\d+)/keys"', page.text)
    assert found, page.text[:2000]
    return int(found.group(1))


def create_key(visitor: Visitor, account_id: int, label: str = "ci") -> str:
    visitor.get(f"/konto/{account_id}")
    response = visitor.post(f"/konto/{account_id}/keys", {"label": label, "expires": ""})
    assert response.status_code == 200, alert(response)
    key = re.search(r'<code id="new-key">(privat_\w+)</code>', response.text)
    assert key, response.text[:2000]
    return key.group(1)


def rows(gateway: Gateway, query: str, *params: Any) -> list[tuple[Any, ...]]:
    """What the database holds (read beside the server: SQLite in WAL mode)."""
    path = Path(gateway.config["store"]["path"])
    with sqlite3.connect(path) as db:
        return db.execute(query, params).fetchall()
