"""The ``accounts:`` section of backends.yaml: sign-up, sessions, throttling and mail.

Kept apart from :mod:`privatai.config` (which only names the field) so the
portal's settings live beside the code that reads them. This module imports
nothing of PrivatAI: ``privatai.config`` imports it.
"""
from __future__ import annotations

from typing import Annotated, Literal

import msgspec

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
