"""DSGVO self-service on the store: a person's export (Art. 15/20) and their
erasure (Art. 17).

A person who owns an account shared with others must hand it over or delete
it first: erasing them would leave the team without an owner. Accounts they
alone belong to go with them, keys and usage included.
"""
from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any

from privatai.store.account_usage import AccountUsage
from privatai.store.audit_log import AuditLog
from privatai.store.database import Store
from privatai.store.names import AdminError
from privatai.store.people import People, User
from privatai.store.records import Account, utc_now
from privatai.store.teams import Teams


class OwnsSharedAccount(AdminError):
    """The person owns an account with other members."""


async def delete_person(store: Store, people: People, teams: Teams, user: User,
                        before_erasing: Callable[[list[int]], Awaitable[object]] | None = None) -> list[Account]:
    """Erase a person and the accounts only they belong to; the accounts erased.

    ``before_erasing`` gets those accounts' ids first (billing cancels their
    subscriptions there); if it raises, nothing is erased.
    """
    memberships = await teams.accounts_of(user.id)
    alone = []
    for account, role in memberships:
        members = await teams.members(account.id)
        if len(members) == 1:
            alone.append(account)
        elif role == "owner":
            raise OwnsSharedAccount(f"owner of account {account.id}, which has other members")
    if before_erasing is not None:
        await before_erasing([account.id for account in alone])
    for account in alone:
        await store.delete_account(account.name)
    await people.delete_user(user.id)
    return alone


async def export_person(store: Store, people: People, teams: Teams, audit: AuditLog,
                        user: User) -> dict[str, Any]:
    """Everything stored about a person and the accounts they belong to, as JSON."""
    usage = AccountUsage(store._db)
    accounts = []
    targets = [(f"user:{user.id}", user.created)]
    for account, role in await teams.accounts_of(user.id):
        targets.append((f"account:{account.id}", account.created))
        keys = [{"id": key.id, "label": key.label, "prefix": key.prefix, "created": key.created,
                 "last_used": key.last_used, "revoked_at": key.revoked_at, "expires_at": key.expires_at}
                for key in await store.list_keys(account.name)]
        entry: dict[str, Any] = {**asdict(account), "role": role, "keys": keys,
                                 "usage_daily": [asdict(row) for row in await usage.daily(account.id)]}
        if role in ("owner", "admin"):
            entry["members"] = [asdict(member) for member in await teams.members(account.id)]
            entry["open_invitations"] = [asdict(invite) for invite in await teams.open_invites(account.id)]
        accounts.append(entry)
    return {
        "exported_at": utc_now().isoformat() + "Z",
        "person": {"id": user.id, "email": user.email, "created": user.created,
                   "confirmed_at": user.confirmed_at, "second_factor": user.totp_secret is not None,
                   "operator_admin": user.is_admin,
                   "sessions": [{"created": c, "expires": e, "last_seen": s}
                                for c, e, s in await people.sessions_of(user.id)]},
        "accounts": accounts,
        "audit_log": [asdict(entry) for entry in await audit.about(targets)],
        "not_stored": "prompts, completions, client addresses: never stored; passwords only as an "
                      "Argon2id hash, API keys and session tokens only as SHA-256 (not exported)",
    }
