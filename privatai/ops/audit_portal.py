"""The website's forms in ``privatai audit``: canaries typed into every field
a visitor can reach without an account (sign-up, login, second factor, reset,
confirmation and invitation links).

The values are chosen so that nothing is stored: the sign-up address is
malformed (refused before any write), the login and reset addresses exist
nowhere, the tokens are unknown. Whatever the deployment keeps of them (a
log line, a database row) is a finding. The forms behind a login (keys,
team, erasure) are covered by the test suite's canary test.
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING

import httpx

if TYPE_CHECKING:
    from privatai.ops.audit import Probe, Prober

_CSRF = re.compile(r'name="csrf" value="([0-9a-f]+)"')


def probe_portal(prober: Prober) -> None:
    from privatai.ops.audit import Probe

    c = prober.canaries
    root = prober.root
    session = httpx.Client(timeout=prober.client.timeout)
    try:
        try:
            page = session.get(f"{root}/anmelden")
        except httpx.HTTPError:
            return
        found = _CSRF.search(page.text) if page.status_code == 200 else None
        if found is None:
            return  # no website, or accounts off
        csrf = found.group(1)
        address = f"{c.add('login e-mail (unregistered)')}@audit.invalid"
        forms = [
            ("website: sign-up (malformed address)", "/registrieren", (400,),
             {"email": c.add("sign-up e-mail (malformed)"), "password": c.add("sign-up password"),
              "account_name": c.add("sign-up account name"), "terms": "yes"}),
            ("website: login", "/anmelden", (401,),
             {"email": address, "password": c.add("login password"), "next": "/" + c.add("login next")}),
            ("website: password reset request", "/passwort-vergessen", (200,),
             {"email": f"{c.add('reset e-mail (unregistered)')}@audit.invalid"}),
            ("website: new password", "/passwort-neu", (400,),
             {"token": c.add("reset token"), "password": c.add("new password")}),
            ("website: confirmation", "/bestaetigen", (400,), {"token": c.add("confirmation token")}),
            ("website: invitation", "/einladung", (400,), {"token": c.add("invitation token")}),
            ("website: second factor (no session)", "/anmelden/code", (303,), {"code": c.add("totp code")}),
        ]
        for name, path, expected, fields in forms:
            _post(prober, session, Probe(name, expected), root + path, {"csrf": csrf, **fields})
    finally:
        session.close()


def _post(prober: Prober, session: httpx.Client, probe: Probe, url: str, fields: dict[str, str]) -> None:
    try:
        probe.status = session.post(url, data=fields).status_code
    except httpx.HTTPError as exc:
        probe.note = f"request failed: {type(exc).__name__}"
    prober.probes.append(probe)
