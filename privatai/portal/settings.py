"""The ``portal:`` and ``accounts:`` sections of backends.yaml: the website,
sign-up, sessions, throttling and mail.

Kept apart from :mod:`privatai.config` (which only names the fields) so the
portal's settings live beside the code that reads them. This module imports
nothing of PrivatAI but the error type and the shared value types:
``privatai.config`` imports it.
"""
from __future__ import annotations

import re
from typing import Annotated, Literal

import msgspec

from privatai.config_types import Text
from privatai.errors import ConfigError

ORIGIN = re.compile(r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?|https?://\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")
_EMAIL = re.compile(r"[^@\s<>\"'()]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
Seconds = Annotated[float, msgspec.Meta(gt=0, le=1e9)]
Count = Annotated[int, msgspec.Meta(ge=1, le=1_000_000)]


class SmtpConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Where confirmation, reset and invitation mails are handed over."""

    host: str = "localhost"
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 25
    # The sender, e.g. "PrivatAI <noreply@example.de>".
    sender: str = "PrivatAI <noreply@localhost>"
    # none: plain SMTP (a local relay); starttls: upgrade on port 587; tls: implicit TLS on 465.
    tls: Literal["none", "starttls", "tls"] = "none"
    username: str | None = None
    # The name of the environment variable holding the SMTP password: never in this file.
    password_env: str | None = None
    timeout: Seconds = 10.0


class AccountsConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Self-service accounts on the website (needs ``portal.enabled``)."""

    enabled: bool = True
    # true: a new account waits as "pending" until an operator approves it;
    # false: it is "active" as soon as the e-mail address is confirmed (with
    # billing.mode stripe: "inactive" until its first payment goes through).
    approval: bool = False
    # The plan a new account gets (billing none: nothing is charged); unset:
    # the first of plans: ("pro" when there are none).
    plan: str | None = None
    # How long a login lasts, and how long it may sit unused.
    session_lifetime: Seconds = 7 * 86400.0
    session_idle: Seconds = 86400.0
    # Links in mails: confirmation and reset expire sooner than invitations.
    link_lifetime: Seconds = 86400.0
    invite_lifetime: Seconds = 7 * 86400.0
    # A sign-up never confirmed is erased (with its account) after this many days.
    unconfirmed_days: Annotated[int, msgspec.Meta(ge=1, le=3650)] = 7
    # Rows of the audit log (who did what to which account, when) are kept this long.
    audit_retention_days: Annotated[int, msgspec.Meta(ge=1, le=36500)] = 730
    # Login, sign-up and reset attempts per e-mail address and per client
    # (both known only as keyed hashes in memory) in any window.
    attempts_per_address: Count = 10
    attempts_per_client: Count = 30
    attempt_window: Seconds = 900.0
    smtp: SmtpConfig = msgspec.field(default_factory=SmtpConfig)


class PortalConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    enabled: bool = True
    # The origin the website's API examples use, e.g. https://api.example.de;
    # unset: the origin the visitor's browser used.
    public_url: str | None = None
    # impressum.de.md / datenschutz.de.md (and .en, or .html); relative to this file.
    legal_dir: str = "legal"
    contact_email: str | None = None
    vat_note: Text = msgspec.field(default_factory=lambda: {
        "de": "Alle Preise zzgl. 19 % Umsatzsteuer.", "en": "All prices plus 19% German VAT."})


def check_portal(source: str, portal: PortalConfig, accounts: AccountsConfig) -> None:
    """What msgspec's types cannot say about the two sections."""
    if portal.public_url is not None and not ORIGIN.fullmatch(portal.public_url):
        raise ConfigError(source, "portal.public_url",
                          "must be an origin like https://api.example.de (scheme and host, no path)")
    if portal.contact_email is not None and not _EMAIL.fullmatch(portal.contact_email):
        raise ConfigError(source, "portal.contact_email", "must be an e-mail address")
    if accounts.smtp.password_env is not None and accounts.smtp.username is None:
        raise ConfigError(source, "accounts.smtp.password_env", "needs accounts.smtp.username")
